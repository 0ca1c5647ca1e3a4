"""Per-crew run aggregates (``crew_stats``): rebuilt from the runs here, kept current by
the database.

Every change to a run, whoever makes it (the app, SQL, a bulk insert), is applied to its
crew's row by triggers (``crew7.aggregate_triggers``) as a relative update in the
writing transaction. This module computes the same aggregates from the runs table
(``flask recompute-stats``, seeding, checks) and expires the rows a session holds when
its flush changed runs under them.
"""

from sqlalchemy import case, delete, event, func, insert, select

from crew7.extensions import db
from crew7.models import Crew, CrewStats, Run

_COUNTERS = (
    "total_runs",
    "queued_runs",
    "running_runs",
    "succeeded_runs",
    "failed_runs",
    "duration_sum",
    "duration_count",
    "tokens_sum",
)


def _aggregate_query(crew_ids=None):
    q = select(
        Run.crew_id,
        func.count().label("total_runs"),
        func.sum(case((Run.status == "queued", 1), else_=0)).label("queued_runs"),
        func.sum(case((Run.status == "running", 1), else_=0)).label("running_runs"),
        func.sum(case((Run.status == "succeeded", 1), else_=0)).label("succeeded_runs"),
        func.sum(case((Run.status == "failed", 1), else_=0)).label("failed_runs"),
        func.coalesce(func.sum(Run.duration), 0.0).label("duration_sum"),
        func.count(Run.duration).label("duration_count"),
        func.coalesce(func.sum(Run.tokens_used), 0).label("tokens_sum"),
        func.max(func.coalesce(Run.started_at, Run.created_at)).label("last_run_at"),
    ).group_by(Run.crew_id)
    if crew_ids is not None:
        q = q.where(Run.crew_id.in_(crew_ids))
    return q


def aggregate_from_runs(connection, crew_ids=None):
    """The aggregates computed from the runs table: {crew_id: {column: value}}."""
    rows = connection.execute(_aggregate_query(crew_ids)).mappings()
    out = {}
    for row in rows:
        row = dict(row)
        crew_id = row.pop("crew_id")
        row["duration_sum"] = float(row["duration_sum"] or 0.0)
        out[crew_id] = row
    return out


def recompute_crew_stats(connection, crew_ids=None):
    """Rebuild ``crew_stats`` from the runs table (all crews, or the given ones)."""
    if crew_ids is None:
        ids = list(connection.execute(select(Crew.id)).scalars())
        connection.execute(delete(CrewStats))
    else:
        ids = list(crew_ids)
        if not ids:
            return 0
        connection.execute(delete(CrewStats).where(CrewStats.crew_id.in_(ids)))
    aggregates = aggregate_from_runs(connection, None if crew_ids is None else ids)
    empty = dict.fromkeys(_COUNTERS, 0) | {"duration_sum": 0.0, "last_run_at": None}
    rows = [{"crew_id": i, **empty, **aggregates.get(i, {})} for i in ids]
    for start in range(0, len(rows), 1000):
        connection.execute(insert(CrewStats), rows[start : start + 1000])
    return len(rows)


def recompute_all_stats():
    """``flask recompute-stats``: rebuild every crew's aggregates in one transaction."""
    count = recompute_crew_stats(db.session.connection())
    db.session.commit()
    return count


# -- session events ---------------------------------------------------------------


def after_flush(session, flush_context):
    """The triggers changed crew_stats rows under the session: expire the loaded ones."""
    crews = {
        obj.crew_id
        for group in (session.new, session.dirty, session.deleted)
        for obj in group
        if isinstance(obj, Run)
    }
    if not crews:
        return
    for obj in list(session.identity_map.values()):
        if isinstance(obj, CrewStats) and obj.crew_id in crews:
            session.expire(obj)


def register(session_class):
    """Listen on the session class; listening twice is a no-op."""
    if not event.contains(session_class, "after_flush", after_flush):
        event.listen(session_class, "after_flush", after_flush)
