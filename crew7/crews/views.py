"""JSON REST API for crews, agents and runs: parse, call a service, return."""

import flask_smorest

from crew7.auth import current_user, read_access, write_access
from crew7.bodies import JSONBodyParser
from crew7.schemas.api import (
    AgentCreateSchema,
    AgentSchema,
    AgentUpdateSchema,
    CrewCreateSchema,
    CrewPageSchema,
    CrewSchema,
    CrewUpdateSchema,
    PageQuerySchema,
    RunCreateSchema,
    RunPageSchema,
    RunSchema,
    RunUpdateSchema,
)
from crew7.services import crews as service


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JSONBodyParser()


blp = Blueprint("crews", __name__, description="Crews, their agents and their runs")


_auth = {"security": [{"bearerAuth": []}]}


@blp.get("/crews")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, CrewPageSchema)
def list_crews(args):
    """Public crews, paginated."""
    return service.list_public_crews(args["page"], args["per_page"])


@blp.post("/crews")
@write_access()
@blp.arguments(CrewCreateSchema)
@blp.response(201, CrewSchema)
@blp.doc(**_auth)
def create_crew(data):
    """Create a crew owned by the caller."""
    return service.create_crew(current_user(), data)


@blp.get("/crews/<id:crew_id>")
@blp.response(200, CrewSchema)
def get_crew(crew_id):
    """A crew (a private crew only for its owner)."""
    return service.get_visible_crew(crew_id, current_user())


@blp.patch("/crews/<id:crew_id>")
@write_access(service.get_owned_crew)
@blp.arguments(CrewUpdateSchema)
@blp.response(200, CrewSchema)
@blp.doc(**_auth)
def update_crew(data, crew):
    """Change a crew's fields (owner only)."""
    return service.update_object(crew, data)


@blp.delete("/crews/<id:crew_id>")
@write_access(service.get_owned_crew)
@blp.response(204)
@blp.doc(**_auth)
def delete_crew(crew):
    """Delete a crew with its agents and runs (owner only)."""
    service.delete_object(crew)


@blp.post("/crews/<id:crew_id>/agents")
@write_access(service.get_owned_crew)
@blp.arguments(AgentCreateSchema)
@blp.response(201, AgentSchema)
@blp.doc(**_auth)
def add_agent(data, crew):
    """Add an agent to a crew (owner only)."""
    return service.add_agent(crew, data)


@blp.get("/agents/<id:agent_id>")
@blp.response(200, AgentSchema)
def get_agent(agent_id):
    return service.get_visible_agent(agent_id, current_user())


@blp.patch("/agents/<id:agent_id>")
@write_access(service.get_owned_agent)
@blp.arguments(AgentUpdateSchema)
@blp.response(200, AgentSchema)
@blp.doc(**_auth)
def update_agent(data, agent):
    return service.update_object(agent, data)


@blp.delete("/agents/<id:agent_id>")
@write_access(service.get_owned_agent)
@blp.response(204)
@blp.doc(**_auth)
def delete_agent(agent):
    service.delete_object(agent)


@blp.post("/crews/<id:crew_id>/runs")
@write_access(service.get_owned_crew)
@blp.arguments(RunCreateSchema)
@blp.response(201, RunSchema)
@blp.doc(**_auth)
def record_run(data, crew):
    """Record a run of a crew (owner only)."""
    return service.record_run(crew, data)


@blp.patch("/runs/<id:run_id>")
@write_access(service.get_owned_run)
@blp.arguments(RunUpdateSchema)
@blp.response(200, RunSchema)
@blp.doc(**_auth)
def update_run(data, run):
    """Change a run, e.g. finish it with its status (owner only)."""
    return service.update_run(run, data)


@blp.get("/crews/<id:crew_id>/runs")
@read_access(service.get_visible_crew)
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, RunPageSchema)
def list_runs(args, crew):
    """A crew's runs, newest first, paginated."""
    return service.list_runs(crew, args["page"], args["per_page"])
