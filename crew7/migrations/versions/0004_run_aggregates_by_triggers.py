"""run aggregates kept by database triggers

``crew_stats`` was maintained by the app's session events, so a run inserted with SQL
(or a crew created with SQL) never reached it. Triggers (``crew7.aggregate_triggers`` as
rendered when this revision was written, frozen in
``frozen/0004_run_aggregates_by_triggers.json``) now create a crew's row with the crew and
adjust it with every run inserted, changed or deleted, whoever writes. The rows are
rebuilt from the runs once, so they start exact.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 13:40:00
"""

import json
from pathlib import Path

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FROZEN = Path(__file__).resolve().parent.parent / "frozen" / "0004_run_aggregates_by_triggers.json"

# crew_stats rebuilt from the runs: a row for every crew, as the triggers keep it.
REBUILD = (
    "DELETE FROM crew_stats",
    """INSERT INTO crew_stats (crew_id, total_runs, queued_runs, running_runs, succeeded_runs,
  failed_runs, duration_sum, duration_count, tokens_sum, last_run_at)
SELECT crews.id, COALESCE(a.total_runs, 0), COALESCE(a.queued_runs, 0),
  COALESCE(a.running_runs, 0), COALESCE(a.succeeded_runs, 0), COALESCE(a.failed_runs, 0),
  COALESCE(a.duration_sum, 0.0), COALESCE(a.duration_count, 0), COALESCE(a.tokens_sum, 0),
  a.last_run_at
FROM crews LEFT JOIN (
  SELECT crew_id, count(*) AS total_runs,
    sum(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS queued_runs,
    sum(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running_runs,
    sum(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) AS succeeded_runs,
    sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed_runs,
    sum(duration) AS duration_sum, count(duration) AS duration_count,
    sum(tokens_used) AS tokens_sum, max(COALESCE(started_at, created_at)) AS last_run_at
  FROM runs GROUP BY crew_id
) AS a ON a.crew_id = crews.id""",
)


def _run(statements):
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def _frozen(action):
    return json.loads(FROZEN.read_text())[action][op.get_bind().dialect.name]


def upgrade():
    _run(_frozen("create"))
    _run(REBUILD)


def downgrade():
    _run(_frozen("drop"))
