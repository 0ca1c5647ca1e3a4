"""The triggers that keep ``crew_stats`` (each crew's run aggregates) current, whoever
writes the runs: the app, psql, sqlite3, a bulk insert, a data migration.

A crew inserted gets its zero row; a run inserted, changed or deleted adjusts its crew's
row by a relative ``UPDATE ... SET x = x + d`` in the writing transaction, so concurrent
writers never lose an increment (PostgreSQL's row lock serialises them; SQLite
serialises whole write transactions). ``last_run_at`` only moves forward on insert and
update; a deletion that may have removed the latest run recomputes it from the crew's
runs. A crew being deleted is skipped: its row goes with it, and a long history is not
recomputed run by run. ``flask recompute-stats`` rebuilds every row from the runs.

Used by ``crew7.models`` (``create_all``) and by migration 0004.
"""

from crew7.triggers import TriggerSet

COUNTERS = ("total_runs", "queued_runs", "running_runs", "succeeded_runs", "failed_runs")
TRACKED = ("status", "duration", "tokens_used", "started_at", "created_at", "crew_id")


def _when(row):
    return f"COALESCE({row}.started_at, {row}.created_at)"


def _adjust(row, sign):
    """SET clauses adding (sign '+') or removing (sign '-') one run's contribution."""
    parts = [f"total_runs = total_runs {sign} 1"]
    for status in ("queued", "running", "succeeded", "failed"):
        parts.append(
            f"{status}_runs = {status}_runs {sign}"
            f" (CASE WHEN {row}.status = '{status}' THEN 1 ELSE 0 END)"
        )
    parts += [
        f"duration_sum = duration_sum {sign} COALESCE({row}.duration, 0)",
        f"duration_count = duration_count {sign}"
        f" (CASE WHEN {row}.duration IS NULL THEN 0 ELSE 1 END)",
        f"tokens_sum = tokens_sum {sign} COALESCE({row}.tokens_used, 0)",
    ]
    return parts


def _forward_last_run(row):
    when = _when(row)
    return (
        f"last_run_at = CASE WHEN last_run_at IS NULL OR last_run_at < {when}"
        f" THEN {when} ELSE last_run_at END"
    )


def _recomputed_last_run(row):
    when = _when(row)
    return (
        f"last_run_at = CASE WHEN last_run_at IS NULL OR {when} >= last_run_at THEN"
        f" (SELECT max(COALESCE(r.started_at, r.created_at)) FROM runs r"
        f" WHERE r.crew_id = {row}.crew_id) ELSE last_run_at END"
    )


def _update(row, clauses):
    return (
        f"UPDATE crew_stats SET {', '.join(clauses)} WHERE crew_id = {row}.crew_id"
        f" AND EXISTS (SELECT 1 FROM crews WHERE id = {row}.crew_id);"
    )


def _add(row):
    return _update(row, [*_adjust(row, "+"), _forward_last_run(row)])


def _remove(row):
    return _update(row, [*_adjust(row, "-"), _recomputed_last_run(row)])


_NEW_ROW = (
    "INSERT INTO crew_stats (crew_id, total_runs, queued_runs, running_runs, succeeded_runs,"
    " failed_runs, duration_sum, duration_count, tokens_sum, last_run_at)"
    " VALUES (NEW.id, 0, 0, 0, 0, 0, 0.0, 0, 0, NULL);"
)


def _sqlite_changed(fields):
    return " OR ".join(f"OLD.{f} IS NOT NEW.{f}" for f in fields)


_SQLITE_TRIGGERS = {
    "crew7_crews_stats_row": ("AFTER INSERT ON crews", "", [_NEW_ROW]),
    "crew7_runs_stats_insert": ("AFTER INSERT ON runs", "", [_add("NEW")]),
    "crew7_runs_stats_update": (
        "AFTER UPDATE ON runs",
        _sqlite_changed(TRACKED),
        [_remove("OLD"), _add("NEW")],
    ),
    "crew7_runs_stats_delete": ("AFTER DELETE ON runs", "", [_remove("OLD")]),
}

_PG_FUNCTIONS = {
    "crew7_crew_stats_row": f"""
BEGIN
  {_NEW_ROW}
  RETURN NULL;
END""",
    "crew7_run_aggregates": f"""
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_add("NEW")}
  ELSIF TG_OP = 'UPDATE' THEN
    IF ROW({", ".join("OLD." + f for f in TRACKED)})
       IS DISTINCT FROM ROW({", ".join("NEW." + f for f in TRACKED)}) THEN
      {_remove("OLD")}
      {_add("NEW")}
    END IF;
  ELSE
    {_remove("OLD")}
  END IF;
  RETURN NULL;
END""",
}

_PG_TRIGGERS = {
    "crew7_crews_stats_row": ("crews", "AFTER INSERT", "crew7_crew_stats_row"),
    "crew7_runs_aggregates": ("runs", "AFTER INSERT OR UPDATE OR DELETE", "crew7_run_aggregates"),
}


TRIGGERS = TriggerSet("aggregate", _SQLITE_TRIGGERS, _PG_FUNCTIONS, _PG_TRIGGERS)
create_statements = TRIGGERS.create_statements
drop_statements = TRIGGERS.drop_statements
install = TRIGGERS.install
