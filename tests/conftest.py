"""Fixtures: a real redis-server and a real PostgreSQL, started on 127.0.0.1 for the run.

Tests that use ``app`` run once per database in ``CREW7_TEST_DBS`` (default: sqlite and
postgresql). A missing server binary skips those tests on a laptop and fails under
``CI=true``.
"""

import os

import pytest
import redis
from sqlalchemy import text

from tests.servers import PostgresServer, RedisServer, find_postgres_bin, find_redis_server

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(what):
    message = f"{what} is not installed (make test installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _test_dbs():
    raw = os.environ.get("CREW7_TEST_DBS", "sqlite,postgresql")
    return [d.strip() for d in raw.split(",") if d.strip()]


def pytest_generate_tests(metafunc):
    if "db_kind" in metafunc.fixturenames:
        metafunc.parametrize("db_kind", _test_dbs(), scope="session")


@pytest.fixture(scope="session")
def redis_server():
    if find_redis_server() is None:
        _missing("redis-server")
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    if find_postgres_bin() is None:
        _missing("PostgreSQL")
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def database_url(db_kind, request, tmp_path):
    if db_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'crew7.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    return server.url


def make_app(database_url, redis_url, **overrides):
    from crew7 import create_app

    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CACHE_WARM_ON_START": False,
        "SECRET_KEY": "test",
    }
    config.update(overrides)
    return create_app(config)


def reset_schema(app):
    from crew7.extensions import db

    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.drop_all()
        db.create_all()


@pytest.fixture
def app_factory(database_url, redis_server, redis_client):
    """Build apps on this test's database and Redis; the schema is created fresh once."""
    created = []

    def factory(**overrides):
        app = make_app(database_url, redis_server.url, **overrides)
        if not created:
            reset_schema(app)
        created.append(app)
        return app

    yield factory
    from crew7.extensions import db

    for app in created:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    from crew7.services.users import create_user

    def factory(name, admin=False):
        with app.app_context():
            user, token = create_user(name, admin=admin)
            return {
                "id": user.id,
                "name": name,
                "token": token,
                "headers": {"Authorization": f"Bearer {token}"},
            }

    return factory


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def cache(app):
    return app.extensions["crew7.cache"]


def db_scalar(app, sql, **params):
    from crew7.extensions import db

    with app.app_context():
        return db.session.execute(text(sql), params).scalar()
