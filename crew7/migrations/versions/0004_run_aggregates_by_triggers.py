"""run aggregates kept by database triggers

``crew_stats`` was maintained by the app's session events, so a run inserted with SQL
(or a crew created with SQL) never reached it. Triggers (``crew7.aggregate_triggers``)
now create a crew's row with the crew and adjust it with every run inserted, changed or
deleted, whoever writes. The rows are rebuilt from the runs once, so they start exact.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 13:40:00
"""

from alembic import op

from crew7 import aggregate_triggers
from crew7.services.aggregates import recompute_crew_stats

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    aggregate_triggers.install(bind)
    recompute_crew_stats(bind)


def downgrade():
    bind = op.get_bind()
    for statement in aggregate_triggers.drop_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)
