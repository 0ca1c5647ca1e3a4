"""Tests for tests/support/servers.py: the real Redis and PostgreSQL test servers."""

import os
import time

import psycopg
import pytest
import redis

from tests.support import servers
from tests.support.ci import require


def _require(found, what):
    return require(found, what, "make test installs it as root with apt-get")


@pytest.fixture
def redis_server():
    _require(servers.find_redis_server(), "redis-server")
    with servers.RedisServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def pg_server():
    _require(servers.find_postgres_bin(), "PostgreSQL server binaries (initdb, postgres)")
    with servers.PostgresServer.start() as server:
        yield server


def _client(server, timeout=0.2):
    return redis.Redis.from_url(server.url, socket_timeout=timeout, socket_connect_timeout=timeout)


# -- Redis ------------------------------------------------------------------


def test_redis_starts_and_answers(redis_server):
    assert redis_server.is_running()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert isinstance(redis_server.pid, int)
    client = _client(redis_server)
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_redis_freeze_times_out_and_resume_recovers(redis_server):
    client = _client(redis_server)
    assert client.ping()
    redis_server.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 5
        assert redis_server.is_running()
    finally:
        redis_server.resume()
    assert client.ping()


def test_redis_restart_is_empty_and_keeps_port(redis_server):
    client = _client(redis_server)
    client.set("k", "v")
    port, pid = redis_server.port, redis_server.pid
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    assert client.get("k") is None
    assert client.dbsize() == 0


def test_redis_stop_while_frozen(redis_server):
    redis_server.freeze()
    started = time.monotonic()
    redis_server.stop()
    assert time.monotonic() - started < 5
    assert not redis_server.is_running()
    with pytest.raises(redis.exceptions.ConnectionError):
        _client(redis_server).ping()


def test_redis_context_manager_cleans_up():
    _require(servers.find_redis_server(), "redis-server")
    with servers.RedisServer.start() as server:
        tmpdir = server.tmpdir
        assert os.path.isdir(tmpdir)
        assert _client(server).ping()
    assert not server.is_running()
    assert not os.path.exists(tmpdir)


def test_redis_on_given_port_and_dir(tmp_path):
    _require(servers.find_redis_server(), "redis-server")
    port = servers.free_port()
    with servers.RedisServer.start(tmpdir=str(tmp_path), port=port) as server:
        assert server.port == port
        assert _client(server).ping()
    assert tmp_path.is_dir()  # a caller's directory is left alone


# -- PostgreSQL -------------------------------------------------------------


def test_postgres_url_and_connect(pg_server):
    assert pg_server.is_running()
    assert pg_server.url == f"postgresql+psycopg://postgres@127.0.0.1:{pg_server.port}/crew7_test"
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "crew7_test"


def test_postgres_url_works_with_sqlalchemy(pg_server):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(pg_server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_postgres_create_database(pg_server):
    url = pg_server.create_database("crew7_extra")
    assert url.endswith(f":{pg_server.port}/crew7_extra")
    with psycopg.connect(pg_server.dsn_for("crew7_extra")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_stop_and_restart_keep_data(pg_server):
    with psycopg.connect(pg_server.dsn) as conn:
        conn.execute("CREATE TABLE survivor (x int)")
        conn.execute("INSERT INTO survivor VALUES (42)")
    pid = pg_server.pid

    pg_server.stop()
    assert not pg_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.dsn, connect_timeout=2)

    pg_server.restart()
    assert pg_server.is_running()
    assert pg_server.pid != pid
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT x FROM survivor").fetchone() == (42,)
