"""Fixtures: a real redis-server and a real PostgreSQL, started on 127.0.0.1 for the run.

Tests that use ``app`` run once per database in ``CREW7_TEST_DBS`` (default: sqlite and
postgresql). A missing server binary skips those tests on a laptop and fails under
``CI=true``.
"""

import os

import pytest
import redis
from sqlalchemy import text

from tests.servers import (
    PostgresServer,
    RedisCluster,
    RedisSentinelSet,
    RedisServer,
    find_postgres_bin,
    find_redis_server,
)

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(what):
    message = f"{what} is not installed (make test installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _test_dbs():
    raw = os.environ.get("CREW7_TEST_DBS", "sqlite,postgresql")
    return [d.strip() for d in raw.split(",") if d.strip()]


def _test_topologies():
    raw = os.environ.get("CREW7_TEST_REDIS", "standalone,sentinel,cluster")
    return [t.strip() for t in raw.split(",") if t.strip()]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "topologies: run against standalone Redis, Sentinel and Cluster"
    )


def pytest_generate_tests(metafunc):
    if "db_kind" in metafunc.fixturenames:
        metafunc.parametrize("db_kind", _test_dbs(), scope="session")
    if "redis_topology" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("topologies") is not None
        topologies = _test_topologies() if marked else ["standalone"]
        metafunc.parametrize("redis_topology", topologies, scope="session")


def pytest_collection_modifyitems(config, items):
    # Sentinel and Cluster runs use SQLite only: the database is not what they test.
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        if (
            params.get("redis_topology", "standalone") != "standalone"
            and params.get("db_kind", "sqlite") != "sqlite"
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


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


@pytest.fixture(scope="session")
def redis_cluster():
    if find_redis_server() is None:
        _missing("redis-server")
    cluster = RedisCluster.start(masters=3, replicas=0)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel():
    if find_redis_server() is None:
        _missing("redis-server")
    sentinels = RedisSentinelSet.start()
    yield sentinels
    sentinels.close()


@pytest.fixture
def redis_settings(redis_topology, request):
    """The app settings that point at this test's Redis topology."""
    if redis_topology == "cluster":
        return {"REDIS_CLUSTER_NODES": request.getfixturevalue("redis_cluster").startup_nodes}
    if redis_topology == "sentinel":
        sentinels = request.getfixturevalue("redis_sentinel")
        return {
            "REDIS_SENTINELS": sentinels.sentinels_setting,
            "REDIS_SENTINEL_MASTER": sentinels.master_name,
        }
    return {"REDIS_URL": request.getfixturevalue("redis_server").url}


@pytest.fixture
def redis_client(redis_topology, request):
    """A client of this test's Redis (its primaries), emptied first."""
    if redis_topology == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        client = cluster.client()
    elif redis_topology == "sentinel":
        client = request.getfixturevalue("redis_sentinel").client()
        client.flushdb()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        client.flushdb()
    yield client
    client.close()


@pytest.fixture
def database_url(db_kind, request, tmp_path):
    if db_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'crew7.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    return server.url


def make_app(database_url, redis_url=None, **overrides):
    from crew7 import create_app

    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url or "redis://127.0.0.1:6379/0",
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
def app_factory(database_url, redis_settings, redis_client):
    """Build apps on this test's database and Redis; the schema is created fresh once."""
    created = []

    def factory(**overrides):
        app = make_app(database_url, **{**redis_settings, **overrides})
        if not created:
            reset_schema(app)
        created.append(app)
        return app

    yield factory
    from crew7.extensions import db

    for app in created:
        views = app.extensions["crew7.cache"].views
        if views is not None:
            # A Cluster buffers views for a second: send them now, not into the next test.
            views.flush()
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
