"""Apps on a test database, their schema, and users with tokens."""

from __future__ import annotations

from sqlalchemy import text

# Apps make_app built whose connections dispose_all() has not closed yet: an app dropped
# with its pool open leaves PostgreSQL connections for the garbage collector, which warns.
_undisposed = []


def make_app(database_url, redis_url=None, **overrides):
    """create_app() with test settings; ``overrides`` win."""
    from crew7 import create_app

    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url or "redis://127.0.0.1:6379/0",
        "CACHE_WARM_ON_START": False,
        "SECRET_KEY": "test",
    }
    config.update(overrides)
    app = create_app(config)
    _undisposed.append(app)
    return app


def reset_schema(app):
    """An empty schema: dropped first on PostgreSQL, whose database outlives the test."""
    from crew7.extensions import db

    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.drop_all()
        db.create_all()


def dispose(app):
    """Close the app's database connections (before its server goes, or the app does)."""
    from crew7.extensions import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def make_user(app, name, admin=False):
    """A user of ``app`` and its API token, as the dict tests pass around."""
    from crew7.services.users import create_user

    with app.app_context():
        user, token = create_user(name, admin=admin)
        return {
            "id": user.id,
            "name": name,
            "token": token,
            "headers": {"Authorization": f"Bearer {token}"},
        }


def fresh_users(database_url, redis_url, *names):
    """An empty schema on database_url with a user per name (make_user's dicts), for a
    server to serve: the app that made them is disposed."""
    app = make_app(database_url, redis_url)
    reset_schema(app)
    users = [make_user(app, name) for name in names]
    dispose(app)
    return users


def database_url_for(db_kind, folder, request):
    """A SQLite file in folder, or the session's PostgreSQL (postgres_server) by db_kind."""
    if db_kind == "sqlite":
        return f"sqlite:///{folder / 'crew7.sqlite3'}"
    return request.getfixturevalue("postgres_server").url


def db_scalar(app, sql, **params):
    """The first column of the first row of ``sql`` on the app's database."""
    from crew7.extensions import db

    with app.app_context():
        return db.session.execute(text(sql), params).scalar()


def dispose_all():
    """dispose() every app make_app built since the last call (conftest: after each test)."""
    while _undisposed:
        dispose(_undisposed.pop())


def outside_engine(database_url):
    """An engine of its own, as psql or sqlite3 would connect (no pool, foreign keys on
    for SQLite as the app has them): changes made outside the app."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    engine = create_engine(database_url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys(dbapi_connection, record):
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine
