"""JSON REST API for crews, agents and runs: parse, call a service, return."""

from flask import request
from flask_smorest import Blueprint, abort

from crew7.auth import current_user, login_required
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

blp = Blueprint("crews", __name__, description="Crews, their agents and their runs")


@blp.before_request
def require_json_body():
    """Writes take a JSON body: absent is a 400, another media type a 415."""
    if request.method in ("POST", "PATCH"):
        if not request.get_data(cache=True):
            abort(400, message="a JSON request body is required")
        if not request.is_json:
            abort(415, message="the request body must be application/json")


_auth = {"security": [{"bearerAuth": []}]}


@blp.get("/crews")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, CrewPageSchema)
def list_crews(args):
    """Public crews, paginated."""
    return service.list_public_crews(args["page"], args["per_page"])


@blp.post("/crews")
@blp.arguments(CrewCreateSchema)
@blp.response(201, CrewSchema)
@blp.doc(**_auth)
@login_required
def create_crew(data):
    """Create a crew owned by the caller."""
    return service.create_crew(current_user(), data)


@blp.get("/crews/<id:crew_id>")
@blp.response(200, CrewSchema)
def get_crew(crew_id):
    """A crew (a private crew only for its owner)."""
    return service.get_visible_crew(crew_id, current_user())


@blp.patch("/crews/<id:crew_id>")
@blp.arguments(CrewUpdateSchema)
@blp.response(200, CrewSchema)
@blp.doc(**_auth)
@login_required
def update_crew(data, crew_id):
    """Change a crew's fields (owner only)."""
    return service.update_object(service.get_owned_crew(crew_id, current_user()), data)


@blp.delete("/crews/<id:crew_id>")
@blp.response(204)
@blp.doc(**_auth)
@login_required
def delete_crew(crew_id):
    """Delete a crew with its agents and runs (owner only)."""
    service.delete_object(service.get_owned_crew(crew_id, current_user()))


@blp.post("/crews/<id:crew_id>/agents")
@blp.arguments(AgentCreateSchema)
@blp.response(201, AgentSchema)
@blp.doc(**_auth)
@login_required
def add_agent(data, crew_id):
    """Add an agent to a crew (owner only)."""
    return service.add_agent(service.get_owned_crew(crew_id, current_user()), data)


@blp.get("/agents/<id:agent_id>")
@blp.response(200, AgentSchema)
def get_agent(agent_id):
    return service.get_visible_agent(agent_id, current_user())


@blp.patch("/agents/<id:agent_id>")
@blp.arguments(AgentUpdateSchema)
@blp.response(200, AgentSchema)
@blp.doc(**_auth)
@login_required
def update_agent(data, agent_id):
    return service.update_object(service.get_owned_agent(agent_id, current_user()), data)


@blp.delete("/agents/<id:agent_id>")
@blp.response(204)
@blp.doc(**_auth)
@login_required
def delete_agent(agent_id):
    service.delete_object(service.get_owned_agent(agent_id, current_user()))


@blp.post("/crews/<id:crew_id>/runs")
@blp.arguments(RunCreateSchema)
@blp.response(201, RunSchema)
@blp.doc(**_auth)
@login_required
def record_run(data, crew_id):
    """Record a run of a crew (owner only)."""
    return service.record_run(service.get_owned_crew(crew_id, current_user()), data)


@blp.patch("/runs/<id:run_id>")
@blp.arguments(RunUpdateSchema)
@blp.response(200, RunSchema)
@blp.doc(**_auth)
@login_required
def update_run(data, run_id):
    """Change a run, e.g. finish it with its status (owner only)."""
    return service.update_run(service.get_owned_run(run_id, current_user()), data)


@blp.get("/crews/<id:crew_id>/runs")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, RunPageSchema)
def list_runs(args, crew_id):
    """A crew's runs, newest first, paginated."""
    crew = service.get_visible_crew(crew_id, current_user())
    return service.list_runs(crew, args["page"], args["per_page"])
