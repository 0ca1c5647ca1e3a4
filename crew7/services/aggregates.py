"""Per-crew run aggregates (``crew_stats``), kept current as runs change.

Every change to a run is applied to its crew's ``crew_stats`` row as a relative
``UPDATE ... SET x = x + :d`` in the flush that writes the run, so it commits or rolls
back with it and concurrent writers never lose an increment (the row lock serialises
them on PostgreSQL; SQLite serialises whole write transactions).
"""

from collections import defaultdict

from sqlalchemy import case, delete, event, func, insert, inspect, select, update

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
_TRACKED = ("status", "duration", "tokens_used", "started_at", "created_at")


def _contribution(status, duration, tokens):
    c = dict.fromkeys(_COUNTERS, 0)
    c["total_runs"] = 1
    c[f"{status}_runs"] = 1
    if duration is not None:
        c["duration_sum"] = float(duration)
        c["duration_count"] = 1
    c["tokens_sum"] = int(tokens or 0)
    return c


def _old_value(state, name):
    hist = state.attrs[name].load_history()
    if hist.deleted:
        return hist.deleted[0]
    if hist.unchanged:
        return hist.unchanged[0]
    return None


class StatsDelta:
    """Aggregate changes collected during one flush."""

    def __init__(self):
        self.deltas = defaultdict(lambda: dict.fromkeys(_COUNTERS, 0))
        self.last_run = {}
        self.recompute = set()

    def add(self, crew_id, contribution, sign=1):
        d = self.deltas[crew_id]
        for k, v in contribution.items():
            d[k] += sign * v

    def run_added(self, run):
        self.add(run.crew_id, _contribution(run.status or "queued", run.duration, run.tokens_used))
        self.touch(run.crew_id, run.started_at or run.created_at)

    def run_changed(self, run):
        state = inspect(run)
        if not any(state.attrs[n].history.has_changes() for n in _TRACKED):
            return
        old = _contribution(
            _old_value(state, "status"),
            _old_value(state, "duration"),
            _old_value(state, "tokens_used"),
        )
        self.add(run.crew_id, old, -1)
        self.add(run.crew_id, _contribution(run.status, run.duration, run.tokens_used))
        self.touch(run.crew_id, run.started_at or run.created_at)

    def run_deleted(self, run):
        # A deleted run may have been the last one: rebuild that crew's row.
        self.recompute.add(run.crew_id)

    def touch(self, crew_id, when):
        if when is not None and (
            self.last_run.get(crew_id) is None or when > self.last_run[crew_id]
        ):
            self.last_run[crew_id] = when

    def apply(self, connection):
        for crew_id, d in self.deltas.items():
            values = {k: getattr(CrewStats, k) + v for k, v in d.items() if v}
            when = self.last_run.get(crew_id)
            if when is not None:
                values["last_run_at"] = case(
                    (CrewStats.last_run_at.is_(None), when),
                    (CrewStats.last_run_at < when, when),
                    else_=CrewStats.last_run_at,
                )
            if values:
                connection.execute(
                    update(CrewStats).where(CrewStats.crew_id == crew_id).values(**values)
                )
        if self.recompute:
            recompute_crew_stats(connection, sorted(self.recompute))


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
