"""Run aggregates (``crew_stats``) kept current by session events.

A new crew gets its ``crew_stats`` row in the flush that inserts it; every run inserted,
changed or deleted is applied to its crew's row in the same flush (``StatsDelta``), so
the aggregates commit or roll back with the runs.
"""

from sqlalchemy import event

from crew7.models import Crew, CrewStats, Run
from crew7.services.run_stats import StatsDelta


def before_flush(session, flush_context, instances):
    for obj in session.new:
        if isinstance(obj, Crew) and obj.stats is None:
            obj.stats = CrewStats()


def after_flush(session, flush_context):
    delta = StatsDelta()
    for obj in session.new:
        if isinstance(obj, Run):
            delta.run_added(obj)
    for obj in session.dirty:
        if isinstance(obj, Run):
            delta.run_changed(obj)
    for obj in session.deleted:
        if isinstance(obj, Run):
            delta.run_deleted(obj)
    if not (delta.deltas or delta.recompute):
        return
    delta.apply(session.connection())
    touched = set(delta.deltas) | delta.recompute
    for obj in list(session.identity_map.values()):
        if isinstance(obj, CrewStats) and obj.crew_id in touched:
            session.expire(obj)


def register(session_class):
    """Listen on the session class; listening twice is a no-op."""
    for name, fn in (("before_flush", before_flush), ("after_flush", after_flush)):
        if not event.contains(session_class, name, fn):
            event.listen(session_class, name, fn)
