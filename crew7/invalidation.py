"""What each committed change invalidates: the rules, declared per model, in one place.

Every committed change made through a session, whoever makes it (the API, the CLI, a
script), is matched against ``RULES``. A rule names a model, the kinds of change it
covers (``insert``, ``update``, ``delete``), for updates the columns that matter, and
the documents it affects, each a ``Target``: a document type and whose id it takes (the
changed row's own, its crew's, or each agent of the changed crew). After the commit the
affected documents are invalidated; a rollback forgets them.

A new cached document type adds one rule here (and its entry in the cache's registry).
The database's triggers (``crew7.changelog_triggers``) record the same rules in the
change log, which ``crew7.services.changelog`` relays: that covers changes made without
a session (SQL, bulk operations) and invalidations this process could not deliver.
"""

from dataclasses import dataclass

from flask import current_app, has_app_context
from sqlalchemy import event, inspect

from crew7.models import Agent, Crew, Run
from crew7.services.cache import (
    AGENT,
    AGENT_IMAGE,
    CREW,
    CREW_AGENTS,
    CREW_IMAGE,
    STATS,
    get_cache_service,
)

VIEWS = "views"  # the popularity set: a deleted crew leaves it

SELF, ITS_CREW, AGENTS_OF_CREW, ALL = "self", "crew", "agents of the crew", "all"


@dataclass(frozen=True)
class Target:
    """A document a change affects: its type, and whose id it takes."""

    family: str
    of: str  # SELF, ITS_CREW, AGENTS_OF_CREW, or ALL (documents with no id: the stats)


@dataclass(frozen=True)
class Rule:
    model: type
    changes: frozenset
    affects: tuple
    fields: tuple = ()  # updates: only when one of these columns changed

    def matches(self, obj, change, changed_fields):
        if not isinstance(obj, self.model) or change not in self.changes:
            return False
        return change != "update" or bool(changed_fields & set(self.fields))


def _rule(model, changes, affects, fields=()):
    return Rule(model, frozenset(changes.split()), tuple(affects), tuple(fields))


CREW_FIELDS = ("name", "description", "process", "is_public")
AGENT_FIELDS = ("name", "role", "goal", "backstory", "llm", "tools")
RUN_FIELDS = ("status", "duration", "tokens_used", "started_at", "created_at")

RULES = (
    # A new crew's id may have been remembered as unknown (the negative entry).
    _rule(Crew, "insert", [Target(CREW, SELF), Target(CREW_AGENTS, SELF)]),
    _rule(
        Crew,
        "update",
        [Target(CREW, SELF), Target(CREW_AGENTS, SELF), Target(AGENT, AGENTS_OF_CREW)],
        CREW_FIELDS,
    ),
    # The stats documents show a crew's name, and list only public crews.
    _rule(Crew, "update", [Target(STATS, ALL)], ("name", "is_public")),
    _rule(
        Crew,
        "delete",
        [
            Target(CREW, SELF),
            Target(CREW_AGENTS, SELF),
            Target(AGENT, AGENTS_OF_CREW),
            Target(STATS, ALL),
            Target(VIEWS, SELF),
        ],
    ),
    # An agent added or removed changes its crew's agent count.
    _rule(
        Agent,
        "insert delete",
        [Target(AGENT, SELF), Target(CREW_AGENTS, ITS_CREW), Target(CREW, ITS_CREW)],
    ),
    _rule(Agent, "update", [Target(AGENT, SELF), Target(CREW_AGENTS, ITS_CREW)], AGENT_FIELDS),
    # Runs change their crew's aggregates; run counts in the stats documents may lag their
    # TTL (they are not invalidated by every run).
    _rule(Run, "insert delete", [Target(CREW, ITS_CREW)]),
    _rule(Run, "update", [Target(CREW, ITS_CREW)], RUN_FIELDS),
)

# A token image is drawn from its document alone: whatever reaches a crew's or an agent's
# document reaches its image, by the same rules.
IMAGE_OF = {CREW: CREW_IMAGE, AGENT: AGENT_IMAGE}
RULES = tuple(
    Rule(
        r.model,
        r.changes,
        r.affects
        + tuple(Target(IMAGE_OF[t.family], t.of) for t in r.affects if t.family in IMAGE_OF),
        r.fields,
    )
    for r in RULES
)


def affected(obj, change, changed_fields=frozenset(), agents_of_crew=()):
    """The documents a change affects, as ``{(family, id)}`` (id None for ALL)."""
    out = set()
    for rule in RULES:
        if not rule.matches(obj, change, changed_fields):
            continue
        for target in rule.affects:
            if target.of == SELF:
                out.add((target.family, obj.id))
            elif target.of == ITS_CREW:
                out.add((target.family, obj.crew_id))
            elif target.of == AGENTS_OF_CREW:
                out.update((target.family, agent_id) for agent_id in agents_of_crew)
            else:
                out.add((target.family, None))
    return out


def _needs_agents(obj, change, changed_fields):
    return any(
        rule.matches(obj, change, changed_fields)
        and any(t.of == AGENTS_OF_CREW for t in rule.affects)
        for rule in RULES
    )


def _changed_fields(obj):
    state = inspect(obj)
    return frozenset(a.key for a in state.attrs if a.history.has_changes())


# -- session events ---------------------------------------------------------------

_KEY = "crew7.invalidate"


def _pending(session):
    return session.info.setdefault(_KEY, set())


def before_flush(session, flush_context, instances):
    """Changes and deletions, while the rows (and a deleted crew's agents) still exist."""
    from crew7.services.metadata import agent_ids_of_crew

    pending = _pending(session)
    for change, objects in (("update", session.dirty), ("delete", session.deleted)):
        for obj in objects:
            fields = _changed_fields(obj) if change == "update" else frozenset()
            agents = ()
            if _needs_agents(obj, change, fields):
                agents = agent_ids_of_crew(obj.id, session)
            pending |= affected(obj, change, fields, agents)


def after_flush(session, flush_context):
    """Inserts, once their ids are known."""
    pending = _pending(session)
    for obj in session.new:
        pending |= affected(obj, "insert")


def after_commit(session):
    pending = session.info.pop(_KEY, None)
    if not pending or not has_app_context():
        return
    cache = get_cache_service(current_app)
    keys, deleted_crews = [], []
    for family, ident in pending:
        if family == VIEWS:
            deleted_crews.append(str(ident))
        elif family == STATS:
            keys.extend(cache.stats_keys())
        else:
            keys.append(cache.key_of[family](ident))
    if keys:
        cache.invalidate_keys(keys)
    if deleted_crews:
        cache.forget_views(deleted_crews)
    # The fast path above lives in this process only; the change log the database wrote
    # in the same transaction is what survives a Redis that did not answer.
    relay = current_app.extensions.get("crew7.changelog")
    if relay is not None:
        relay.wake()


def _after_soft_rollback(session, previous_transaction):
    # Only the outermost rollback discards what was noted; a savepoint's does not.
    if previous_transaction.parent is None:
        session.info.pop(_KEY, None)


def register(session_class):
    """Listen on the session class; listening twice is a no-op."""
    for name, fn in (
        ("before_flush", before_flush),
        ("after_flush", after_flush),
        ("after_commit", after_commit),
        ("after_soft_rollback", _after_soft_rollback),
    ):
        if not event.contains(session_class, name, fn):
            event.listen(session_class, name, fn)
