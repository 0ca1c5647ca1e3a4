"""change feed: what the feed needs, recorded by the change log's triggers

``cache_changes`` gets ``visibility`` (whether the document an entry names is public,
private, or stopped being public), ``agents`` (a crew entry's agent ids when written)
and ``xid`` (PostgreSQL: the writing transaction, by which ``crew7.services.feed``
serves entries in commit order). The triggers (``crew7.changelog_triggers`` as rendered
when this revision was written, frozen in ``frozen/0005_change_feed_columns.json``) fill
them; entries written before stay NULL, which the feed does not show. Downgrading
restores 0003's triggers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 17:40:00
"""

import json
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_FROZEN = Path(__file__).resolve().parent.parent / "frozen"
FROZEN = _FROZEN / "0005_change_feed_columns.json"
COLUMNS = (("visibility", sa.Text()), ("agents", sa.Text()), ("xid", sa.BigInteger()))


def _run(path, action):
    bind = op.get_bind()
    for statement in json.loads(path.read_text())[action][bind.dialect.name]:
        bind.exec_driver_sql(statement)


def upgrade():
    for name, type_ in COLUMNS:
        op.add_column("cache_changes", sa.Column(name, type_, nullable=True))
    op.create_index("ix_cache_changes_xid_id", "cache_changes", ["xid", "id"])
    _run(FROZEN, "create")


def downgrade():
    _run(FROZEN, "drop")
    _run(_FROZEN / "0003_cache_change_log.json", "create")
    op.drop_index("ix_cache_changes_xid_id", table_name="cache_changes")
    for name, _ in COLUMNS:
        # Plain ALTER TABLE: SQLite has had DROP COLUMN since 3.35.
        op.get_bind().exec_driver_sql(f"ALTER TABLE cache_changes DROP COLUMN {name}")
