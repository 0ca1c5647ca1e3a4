"""cache change log: cache_changes and the triggers that write it

Every committed change to crews, agents and runs writes, in its own transaction, an
entry naming the documents it affects (``crew7.changelog_triggers``), whoever makes it;
the relay (``crew7.services.changelog``) turns entries into invalidations until they are
delivered. SQLite: AUTOINCREMENT, so an id (the relay's watermark) is never reused even
after every row was pruned; PostgreSQL: bigserial.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 13:30:00
"""

import sqlalchemy as sa
from alembic import op

from crew7 import changelog_triggers

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
    changelog_triggers.install(op.get_bind())


def downgrade():
    bind = op.get_bind()
    for statement in changelog_triggers.drop_statements(bind.dialect.name):
        bind.exec_driver_sql(statement)
    op.drop_index("ix_cache_changes_created_at", table_name="cache_changes")
    op.drop_table("cache_changes")
