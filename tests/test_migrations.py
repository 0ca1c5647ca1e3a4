"""The migrations build the schema the models and trigger modules describe, and frozen
revisions stay as they were written: the triggers and functions a database gets from
``flask db upgrade`` are exactly the ones ``create_all`` installs, on both databases, and
the aggregates migration 0004 rebuilds are the ones computed from the runs."""

import uuid
from datetime import datetime

import pytest
from sqlalchemy import text

from tests.support.app import make_app, reset_schema


def _fresh_url(db_kind, tmp_path, request, name):
    if db_kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.sqlite3')}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"{name}_{uuid.uuid4().hex[:8]}")


def _triggers(app):
    """{name: definition} of every trigger and trigger function in the app's database."""
    from crew7.extensions import db

    with app.app_context(), db.engine.connect() as conn:
        if db.engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
            return dict(rows.all())
        triggers = conn.execute(
            text("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal")
        ).all()
        functions = conn.execute(
            text(
                "SELECT proname, prosrc FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            )
        ).all()
        return dict(triggers) | {f"function {n}": src for n, src in functions}


def test_migrated_triggers_are_the_ones_the_modules_install(
    db_kind, tmp_path, request, redis_server
):
    from flask_migrate import upgrade

    migrated = make_app(_fresh_url(db_kind, tmp_path, request, "migrated"), redis_server.url)
    with migrated.app_context():
        upgrade()
    created = make_app(_fresh_url(db_kind, tmp_path, request, "created"), redis_server.url)
    reset_schema(created)
    found, expected = _triggers(migrated), _triggers(created)
    assert len(expected) >= 10
    assert found == expected, (
        "the trigger modules changed after the revision that installs them: add a revision "
        "that installs the new triggers (frozen like 0003 and 0004)"
    )


@pytest.mark.parametrize("runs", [0, 3])
def test_0004_rebuilds_the_aggregates_from_the_runs(db_kind, tmp_path, request, redis_server, runs):
    from flask_migrate import downgrade, upgrade

    from crew7.extensions import db
    from crew7.services.aggregates import aggregate_from_runs

    app = make_app(_fresh_url(db_kind, tmp_path, request, "rebuilt"), redis_server.url)
    with app.app_context():
        upgrade(revision="0003")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, name, token_hash, is_admin, created_at)"
                    " VALUES (1, 'u', 'h', false, '2026-01-01')"
                )
            )
            for crew_id in (1, 2):
                conn.execute(
                    text(
                        "INSERT INTO crews (id, owner_id, name, description, is_public, process,"
                        " created_at, updated_at) VALUES (:id, 1, 'c', '', true, 'sequential',"
                        " '2026-01-01', '2026-01-01')"
                    ),
                    {"id": crew_id},
                )
            for n in range(runs):
                conn.execute(
                    text(
                        "INSERT INTO runs (crew_id, status, duration, tokens_used, created_at)"
                        " VALUES (2, :status, :duration, 10, :created_at)"
                    ),
                    {
                        "status": ("succeeded", "failed", "queued")[n],
                        "duration": n or None,
                        "created_at": datetime(2026, 1, n + 1),
                    },
                )
            conn.execute(text("DELETE FROM crew_stats"))
        upgrade()
        with db.engine.connect() as conn:
            rows = {r.crew_id: r for r in conn.execute(text("SELECT * FROM crew_stats")).mappings()}
            expected = aggregate_from_runs(conn)
        assert set(rows) == {1, 2}
        assert rows[1]["total_runs"] == 0
        for crew_id, values in expected.items():
            for column, value in values.items():
                got = rows[crew_id][column]
                if column == "last_run_at":
                    assert str(got)[:10] == str(value)[:10]
                else:
                    assert got == value, (column, got, value)
        downgrade(revision="0003")
        upgrade()


def _columns(app, table):
    from sqlalchemy import inspect

    from crew7.extensions import db

    with app.app_context():
        inspector = inspect(db.engine)
        columns = {c["name"] for c in inspector.get_columns(table)}
        indexes = {i["name"]: tuple(i["column_names"]) for i in inspector.get_indexes(table)}
        return columns, indexes


def test_0005_adds_the_feeds_columns_and_downgrades_to_0004s_triggers(
    db_kind, tmp_path, request, redis_server
):
    """The feed's columns and index are the models'; entries written before 0005 are not
    shown (their visibility is unknown), later ones are; downgrading restores exactly the
    triggers 0004 left."""
    from flask_migrate import downgrade, upgrade

    from crew7.extensions import db
    from crew7.services.feed import read_feed

    app = make_app(_fresh_url(db_kind, tmp_path, request, "feed"), redis_server.url)
    created = make_app(_fresh_url(db_kind, tmp_path, request, "feedref"), redis_server.url)
    reset_schema(created)
    with app.app_context():
        upgrade(revision="0004")
        before = _triggers(app)
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, name, token_hash, is_admin, created_at)"
                    " VALUES (1, 'u', 'h', false, '2026-01-01')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO crews (id, owner_id, name, description, is_public, process,"
                    " created_at, updated_at) VALUES (1, 1, 'c', '', true, 'sequential',"
                    " '2026-01-01', '2026-01-01')"
                )
            )
        upgrade()
        assert _columns(app, "cache_changes") == _columns(created, "cache_changes")
        assert read_feed(None, 10).events == []
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE crews SET name = 'd' WHERE id = 1"))
        events = read_feed(None, 10).events
        assert [(e["token_type"], e["token_id"]) for e in events] == [("crew", 1)]
        downgrade(revision="0004")
        assert _triggers(app) == before
        assert "xid" not in _columns(app, "cache_changes")[0]
        upgrade()


def test_webhook_tables_migrate_as_the_models_describe(db_kind, tmp_path, request, redis_server):
    """0006 creates the webhook tables the models declare, and drops them again."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import inspect

    from crew7.extensions import db

    app = make_app(_fresh_url(db_kind, tmp_path, request, "webhooks"), redis_server.url)
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert [d for d in diffs if "webhook" in repr(d)] == []
        downgrade(revision="-1")
        assert not {"webhook_subscriptions", "webhook_deliveries"} & set(
            inspect(db.engine).get_table_names()
        )
        upgrade()
