"""SQLAlchemy session events: run aggregates and cache invalidation, registered once.

Every committed change, whoever makes it (API, CLI, scripts), passes through here:

* ``before_flush``: a new crew gets its ``crew_stats`` row; the documents a change
  affects are noted (a deleted crew's agents are looked up before they are gone);
* ``after_flush``: run changes are applied to ``crew_stats`` in the same transaction;
* ``after_commit``: the noted documents are invalidated; ``after_rollback`` forgets them.

What affects which document: a crew's name, description, process or visibility ->
the crew, its agents list and each of its agents; an agent -> itself and its crew's
agents list (and the crew when one is added or removed: the agent count); a run ->
its crew. A crew renamed, made private or public, or deleted -> the stats documents
that name crews (popular crews, leaderboards), and a deleted crew leaves the popularity
set. Other changes (timestamps, users) invalidate nothing; run counts in the stats
documents may lag their TTL.
"""

from flask import current_app, has_app_context
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import event, inspect, select
from sqlalchemy.engine import Engine

from crew7.models import Agent, Crew, CrewStats, Run
from crew7.services.cache import get_cache_service
from crew7.services.run_stats import StatsDelta

CREW_FIELDS = ("name", "description", "process", "is_public")
# What the stats documents show of a crew: its name, and whether it is listed at all.
CREW_STATS_FIELDS = ("name", "is_public")
AGENT_FIELDS = ("name", "role", "goal", "backstory", "llm", "tools")

_KEY = "crew7.invalidate"


def _changed(obj, names):
    state = inspect(obj)
    return any(state.attrs[n].history.has_changes() for n in names)


def _pending(session):
    return session.info.setdefault(
        _KEY,
        {
            "crews": {},
            "agents": set(),
            "crew_docs": set(),
            "agent_lists": set(),
            "stats": False,
            "deleted_crews": set(),
        },
    )


def _note_crew(pending, crew_id, agent_ids):
    pending["crews"].setdefault(crew_id, set()).update(agent_ids)


def before_flush(session, flush_context, instances):
    pending = _pending(session)
    for obj in session.new:
        if isinstance(obj, Crew) and obj.stats is None:
            obj.stats = CrewStats()
    for obj in session.dirty:
        if isinstance(obj, Crew) and _changed(obj, CREW_FIELDS):
            ids = session.scalars(select(Agent.id).where(Agent.crew_id == obj.id))
            _note_crew(pending, obj.id, ids)
            if _changed(obj, CREW_STATS_FIELDS):
                pending["stats"] = True
    for obj in session.deleted:
        if isinstance(obj, Crew):
            ids = session.scalars(select(Agent.id).where(Agent.crew_id == obj.id))
            _note_crew(pending, obj.id, ids)
            pending["stats"] = True
            pending["deleted_crews"].add(obj.id)


def after_flush(session, flush_context):
    pending = _pending(session)
    delta = StatsDelta()
    for obj in session.new:
        if isinstance(obj, Run):
            delta.run_added(obj)
            pending["crew_docs"].add(obj.crew_id)
        elif isinstance(obj, Agent):
            pending["agents"].add(obj.id)
            pending["agent_lists"].add(obj.crew_id)
            pending["crew_docs"].add(obj.crew_id)
        elif isinstance(obj, Crew):
            # Its id may have been remembered as unknown (negative cache).
            _note_crew(pending, obj.id, ())
    for obj in session.dirty:
        if isinstance(obj, Run):
            if _changed(obj, ("status", "duration", "tokens_used", "started_at", "created_at")):
                delta.run_changed(obj)
                pending["crew_docs"].add(obj.crew_id)
        elif isinstance(obj, Agent) and _changed(obj, AGENT_FIELDS):
            pending["agents"].add(obj.id)
            pending["agent_lists"].add(obj.crew_id)
    for obj in session.deleted:
        if isinstance(obj, Run):
            delta.run_deleted(obj)
            pending["crew_docs"].add(obj.crew_id)
        elif isinstance(obj, Agent):
            pending["agents"].add(obj.id)
            pending["agent_lists"].add(obj.crew_id)
            pending["crew_docs"].add(obj.crew_id)
    if delta.deltas or delta.recompute:
        delta.apply(session.connection())
        touched = set(delta.deltas) | delta.recompute
        for obj in list(session.identity_map.values()):
            if isinstance(obj, CrewStats) and obj.crew_id in touched:
                session.expire(obj)


def after_commit(session):
    pending = session.info.pop(_KEY, None)
    if not pending or not has_app_context():
        return
    cache = get_cache_service(current_app)
    keys = []
    for crew_id, agent_ids in pending["crews"].items():
        keys.extend(cache.keys_affected_by_crew(crew_id, agent_ids))
    keys.extend(cache.crew_key(c) for c in pending["crew_docs"])
    keys.extend(cache.crew_agents_key(c) for c in pending["agent_lists"])
    keys.extend(cache.agent_key(a) for a in pending["agents"])
    if pending["stats"]:
        keys.extend(cache.stats_keys())
    if keys:
        cache.invalidate_keys(keys)
    if pending["deleted_crews"]:
        cache.forget_views([str(c) for c in pending["deleted_crews"]])


def _after_soft_rollback(session, previous_transaction):
    # Only the outermost rollback discards what was noted; a savepoint's does not.
    if previous_transaction.parent is None:
        session.info.pop(_KEY, None)


def _sqlite_pragmas(dbapi_connection, connection_record):
    # Foreign keys (cascading deletes), concurrent readers while one writes, and a wait
    # instead of "database is locked" between gunicorn workers.
    module = type(dbapi_connection).__module__
    if "sqlite" not in module:
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_registered = False


def register_session_hooks(app):
    """Listen on Flask-SQLAlchemy's session class; idempotent across app instances."""
    global _registered
    if _registered:
        return
    session_cls = FlaskSession
    event.listen(session_cls, "before_flush", before_flush)
    event.listen(session_cls, "after_flush", after_flush)
    event.listen(session_cls, "after_commit", after_commit)
    event.listen(session_cls, "after_soft_rollback", _after_soft_rollback)
    event.listen(Engine, "connect", _sqlite_pragmas)
    _registered = True
