"""ids are never reused: AUTOINCREMENT on SQLite

A crew's and an agent's id is its NFT token id, so it must never come to name another
row. PostgreSQL's sequences never hand out an id twice. SQLite's plain ``INTEGER
PRIMARY KEY`` gives the next row ``max(id) + 1``, which reuses the id of a deleted last
row; ``AUTOINCREMENT`` keeps a high-water mark in ``sqlite_sequence`` instead.

SQLite cannot add AUTOINCREMENT to an existing table, so each table is rebuilt
(create, copy, drop, rename: SQLite's documented procedure). ``env.py`` runs SQLite
migrations with foreign keys off, so dropping the old table cascades nothing; the
foreign keys are checked before the migration ends.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:10:00
"""

import re

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("users", "crews", "agents", "runs")


def _rebuild(table, to_sql):
    bind = op.get_bind()
    create = bind.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}
    ).scalar_one()
    indexes = (
        bind.execute(
            text(
                "SELECT sql FROM sqlite_master"
                " WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
            ),
            {"t": table},
        )
        .scalars()
        .all()
    )
    columns = [row[1] for row in bind.execute(text(f'PRAGMA table_info("{table}")'))]
    new = f"_crew7_new_{table}"
    sql = to_sql(create)
    sql = re.sub(rf"^CREATE TABLE \"?{table}\"?", f'CREATE TABLE "{new}"', sql, count=1)
    cols = ", ".join(f'"{c}"' for c in columns)
    bind.execute(text(sql))
    bind.execute(text(f'INSERT INTO "{new}" ({cols}) SELECT {cols} FROM "{table}"'))
    bind.execute(text(f'DROP TABLE "{table}"'))
    bind.execute(text(f'ALTER TABLE "{new}" RENAME TO "{table}"'))
    for index in indexes:
        bind.execute(text(index))


def _with_autoincrement(sql):
    if "AUTOINCREMENT" in sql.upper():
        return sql
    sql, n = re.subn(
        r"\bid INTEGER NOT NULL,", "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,", sql, count=1
    )
    sql, m = re.subn(r"\s*PRIMARY KEY \(id\),?", "", sql, count=1)
    if n != 1 or m != 1:
        raise RuntimeError(f"unexpected table definition, not migrated: {sql}")
    return re.sub(r",\s*\)\s*$", "\n)", sql)


def _without_autoincrement(sql):
    sql, n = re.subn(
        r"\bid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,", "id INTEGER NOT NULL,", sql, count=1
    )
    if n != 1:
        return sql
    return re.sub(r"\)\s*$", ",\n\tPRIMARY KEY (id)\n)", sql, count=1)


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL sequences never reuse an id
    for table in TABLES:
        _rebuild(table, _with_autoincrement)


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in reversed(TABLES):
        _rebuild(table, _without_autoincrement)
