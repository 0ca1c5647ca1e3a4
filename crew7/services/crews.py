"""Crews, agents and runs: the visibility and ownership rules, and the writes.

Visibility: a private crew, and everything under it, does not exist for anyone but
its owner (404). Ownership: only the owner may change a crew, its agents and its runs
(403 for a public crew someone else owns).
"""

import math

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import contains_eager

from crew7.extensions import db
from crew7.models import FINISHED_STATUSES, Agent, Crew, Run, utcnow
from crew7.services.errors import Forbidden, NotFound


def _visible(crew, user):
    return crew is not None and (crew.is_public or (user is not None and crew.owner_id == user.id))


def get_visible_crew(crew_id, user):
    crew = db.session.get(Crew, crew_id)
    if not _visible(crew, user):
        raise NotFound(f"crew {crew_id} not found")
    return crew


def get_owned_crew(crew_id, user):
    crew = get_visible_crew(crew_id, user)
    if user is None or crew.owner_id != user.id:
        raise Forbidden("only the crew's owner may change it")
    return crew


def _with_crew(model, object_id):
    """An agent or run with its crew, in one query whether or not it exists, so that
    an unknown id and a private crew's object cost the same work."""
    query = (
        select(model)
        .join(model.crew)
        .options(contains_eager(model.crew))
        .where(model.id == object_id)
    )
    return db.session.scalar(query)


def get_visible_agent(agent_id, user):
    agent = _with_crew(Agent, agent_id)
    if agent is None or not _visible(agent.crew, user):
        raise NotFound(f"agent {agent_id} not found")
    return agent


def get_owned_agent(agent_id, user):
    agent = get_visible_agent(agent_id, user)
    if agent.crew.owner_id != user.id:
        raise Forbidden("only the crew's owner may change its agents")
    return agent


def get_owned_run(run_id, user):
    run = _with_crew(Run, run_id)
    if run is None or not _visible(run.crew, user):
        raise NotFound(f"run {run_id} not found")
    if run.crew.owner_id != user.id:
        raise Forbidden("only the crew's owner may change its runs")
    return run


def paginate(query, page, per_page):
    cfg = current_app.config
    per_page = min(per_page or cfg["PAGE_SIZE_DEFAULT"], cfg["PAGE_SIZE_MAX"])
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = list(db.session.scalars(query.limit(per_page).offset((page - 1) * per_page)))
    return {
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": math.ceil(total / per_page) if total else 0,
    }


def list_public_crews(page, per_page):
    return paginate(select(Crew).where(Crew.is_public.is_(True)).order_by(Crew.id), page, per_page)


def list_runs(crew, page, per_page):
    return paginate(
        select(Run).where(Run.crew_id == crew.id).order_by(Run.id.desc()), page, per_page
    )


def create_crew(owner, data):
    crew = Crew(owner=owner, **data)
    db.session.add(crew)
    db.session.commit()
    return crew


def update_object(obj, data):
    changed = False
    for key, value in data.items():
        if getattr(obj, key) != value:
            setattr(obj, key, value)
            changed = True
    if changed:
        db.session.commit()
    return obj


def delete_object(obj):
    db.session.delete(obj)
    db.session.commit()


def add_agent(crew, data):
    agent = Agent(crew=crew, **data)
    db.session.add(agent)
    db.session.commit()
    return agent


def record_run(crew, data):
    run = Run(crew=crew, **data)
    if run.status == "running" and run.started_at is None:
        run.started_at = utcnow()
    _complete_run_fields(run)
    db.session.add(run)
    db.session.commit()
    return run


def update_run(run, data):
    for key, value in data.items():
        setattr(run, key, value)
    if run.status == "running" and run.started_at is None:
        run.started_at = utcnow()
    _complete_run_fields(run)
    db.session.commit()
    return run


def _complete_run_fields(run):
    """A finished run gets a finish time and, when it has a start, a duration."""
    if run.status in FINISHED_STATUSES:
        if run.finished_at is None:
            run.finished_at = utcnow()
        if run.duration is None and run.started_at is not None:
            run.duration = max(0.0, (run.finished_at - run.started_at).total_seconds())
