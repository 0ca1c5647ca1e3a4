"""cache change log: cache_changes and the triggers that write it

Every committed change to crews, agents and runs writes, in its own transaction, an
entry naming the documents it affects (the triggers ``crew7.changelog_triggers`` rendered
when this revision was written, frozen in ``frozen/0003_cache_change_log.json`` so that
later changes to that module need a revision of their own), whoever makes it;
the relay (``crew7.services.changelog``) turns entries into invalidations until they are
delivered. SQLite: AUTOINCREMENT, so an id (the relay's watermark) is never reused even
after every row was pruned; PostgreSQL: bigserial.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 13:30:00
"""

import json
from pathlib import Path

import sqlalchemy as sa
from alembic import op

FROZEN = Path(__file__).resolve().parent.parent / "frozen" / "0003_cache_change_log.json"


def _run(action):
    bind = op.get_bind()
    for statement in json.loads(FROZEN.read_text())[action][bind.dialect.name]:
        bind.exec_driver_sql(statement)


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "cache_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("ref_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_cache_changes_created_at", "cache_changes", ["created_at"])
    _run("create")


def downgrade():
    _run("drop")
    op.drop_index("ix_cache_changes_created_at", table_name="cache_changes")
    op.drop_table("cache_changes")
