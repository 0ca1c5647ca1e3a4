"""Fixtures: a real redis-server and a real PostgreSQL, started on 127.0.0.1 for the run.

Tests that use ``app`` run once per database in ``CREW7_TEST_DBS`` (default: sqlite and
postgresql); tests marked ``topologies`` also run on Sentinel and Cluster, on SQLite only.
Every server fixture starts its server on first use, so ``pytest -m unit`` starts none.
A missing server binary skips on a laptop and fails under ``CI=true``
(tests/support/ci.py). The runners themselves live in tests/support/.
"""

import functools
import os
from pathlib import Path

import pytest

from tests.support import app as support_app

UNIT_DIR = Path(__file__).resolve().parent / "unit"
# Fixtures that start a server; a unit test must not use any of them.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "postgres_server",
        "redis_cluster",
        "redis_sentinel",
        "redis_client",
        "redis_settings",
        "database_url",
        "app_factory",
    }
)


def _setting_list(name, default):
    raw = os.environ.get(name, default)
    return [part.strip() for part in raw.split(",") if part.strip()]


def _test_dbs():
    return _setting_list("CREW7_TEST_DBS", "sqlite,postgresql")


def _test_topologies():
    return _setting_list("CREW7_TEST_REDIS", "standalone,sentinel,cluster")


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    marked = metafunc.definition.get_closest_marker("topologies") is not None
    topologies = _test_topologies() if marked else ["standalone"]
    if "db_kind" in names and "redis_topology" in names:
        # Sentinel and Cluster run on SQLite only: the database is not what they test.
        pairs = [(db, "standalone") for db in _test_dbs() if "standalone" in topologies]
        if "sqlite" in _test_dbs():
            pairs += [("sqlite", t) for t in topologies if t != "standalone"]
        metafunc.parametrize(("db_kind", "redis_topology"), pairs, scope="session")
    elif "db_kind" in names:
        metafunc.parametrize("db_kind", _test_dbs(), scope="session")
    elif "redis_topology" in names:
        metafunc.parametrize("redis_topology", topologies, scope="session")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if UNIT_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.unit)
            used = SERVER_FIXTURES.intersection(item.fixturenames)
            if used:
                raise pytest.UsageError(f"{item.nodeid}: a unit test uses {sorted(used)}")
        params = item.callspec.params if hasattr(item, "callspec") else {}
        if params.get("db_kind") == "postgresql":
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture(autouse=True)
def _dispose_apps():
    """Close the database connections of the apps the test built, before they are dropped."""
    yield
    support_app.dispose_all()


@pytest.fixture(scope="session")
def redis_server():
    from tests.support.servers import RedisServer, running

    yield from running(RedisServer)


@pytest.fixture(scope="session")
def postgres_server():
    from tests.support.servers import PostgresServer, running

    yield from running(PostgresServer)


@pytest.fixture(scope="session")
def redis_cluster():
    from tests.support.servers import RedisCluster, running

    yield from running(RedisCluster, masters=3, replicas=0)


@pytest.fixture(scope="session")
def redis_sentinel():
    from tests.support.servers import RedisSentinelSet, running

    yield from running(RedisSentinelSet)


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
    import redis

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
    return support_app.database_url_for(db_kind, tmp_path, request)


@pytest.fixture
def app_factory(database_url, redis_settings, redis_client):
    """Build apps on this test's database and Redis; the schema is created fresh once."""
    created = []

    def factory(**overrides):
        app = support_app.make_app(database_url, **{**redis_settings, **overrides})
        if not created:
            support_app.reset_schema(app)
        created.append(app)
        return app

    yield factory
    for app in created:
        views = app.extensions["crew7.cache"].views
        if views is not None:
            # A Cluster buffers views for a second: send them now, not into the next test.
            views.flush()
        support_app.dispose(app)


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
    """``make_user(name, admin=False)`` on this test's app (tests/support/app.py's helper)."""
    return functools.partial(support_app.make_user, app)


@pytest.fixture
def alice(app):
    return support_app.make_user(app, "alice")


@pytest.fixture
def bob(app):
    return support_app.make_user(app, "bob")


@pytest.fixture
def cache(app):
    return app.extensions["crew7.cache"]


@pytest.fixture
def outside_sql(database_url):
    """Run SQL as psql or sqlite3 would: its own connection, committed at once, so no
    session event of the app sees it (only the database's triggers and the relay)."""
    from sqlalchemy import text

    engine = support_app.outside_engine(database_url)

    def run(*statements, **params):
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement), params)

    yield run
    engine.dispose()


@pytest.fixture
def relay(app):
    """The relay thread a serving process runs (gunicorn starts it in post_worker_init)."""
    from crew7.services.changelog import get_relay, start_relay

    start_relay(app)
    yield get_relay(app)
    get_relay(app).stop()
