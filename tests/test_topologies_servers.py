"""Tests for the Redis Cluster and Redis Sentinel helpers in tests/support/servers.py.

One cluster (3 masters, 3 replicas) and one Sentinel set per module; the failover tests
leave a working topology behind, so the order of the tests does not matter.
"""

import os
import time

import pytest
import redis
from redis.sentinel import Sentinel

from tests.support import servers
from tests.support.ci import require


def _require(found, what):
    return require(found, what, "make test installs it as root with apt-get")


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _closed_cleanly(topology):
    pids = [pid for pid in topology.pids if pid is not None]
    topology.close()
    assert not os.path.exists(topology.tmpdir)
    assert all(_gone(pid) for pid in pids)


@pytest.fixture(scope="module")
def cluster():
    _require(servers.find_redis_server(), "redis-server")
    _require(servers.find_redis_cli(), "redis-cli")
    topology = servers.RedisCluster.start(masters=3, replicas=1)
    yield topology
    _closed_cleanly(topology)


@pytest.fixture(scope="module")
def sentinel_set():
    _require(servers.find_redis_server(), "redis-server")
    topology = servers.RedisSentinelSet.start(sentinels=3)
    yield topology
    _closed_cleanly(topology)


# -- Redis Cluster ----------------------------------------------------------


def test_cluster_addresses(cluster):
    assert len(cluster.nodes) == 6
    assert all(host == "127.0.0.1" for host, _ in cluster.nodes)
    assert cluster.startup_nodes == ",".join(f"127.0.0.1:{port}" for _, port in cluster.nodes)
    assert cluster.url == f"redis://127.0.0.1:{cluster.nodes[0][1]}/0"
    pids = cluster.pids
    assert len(set(pids)) == 6 and all(isinstance(pid, int) for pid in pids)
    assert len(cluster.master_nodes()) == 3
    assert set(cluster.master_nodes()) <= set(cluster.nodes)


def test_cluster_client_across_slots(cluster):
    client = cluster.client(socket_timeout=2)
    try:
        keys = [f"topology:{i}" for i in range(30)]
        slots = {client.keyslot(key) for key in keys}
        owners = {client.get_node_from_key(key).port for key in keys}
        assert len(slots) > 1 and len(owners) == 3  # the keys live on every master
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [client.get(key) for key in keys[:3]] == [b"0", b"1", b"2"]
        assert client.mget_nonatomic(keys) == [str(i).encode() for i in range(30)]
        with pytest.raises(redis.exceptions.RedisClusterException):
            client.mget(keys)  # CROSSSLOT
        cluster.flushall()
        assert client.mget_nonatomic(keys) == [None] * 30
    finally:
        client.close()


@pytest.mark.slow
def test_cluster_kill_master_fails_over(cluster):
    masters = cluster.master_nodes()
    killed = cluster.kill_master(0)
    assert killed == masters[0]
    assert not cluster.server_for(killed[1]).is_running()
    elapsed = cluster.wait_for_failover(timeout=15)
    assert elapsed < 10
    assert killed not in cluster.master_nodes()
    assert len(cluster.master_nodes()) == 3
    client = cluster.client(socket_timeout=2)
    try:
        keys = [f"after-failover:{i}" for i in range(30)]
        for key in keys:
            client.set(key, "v")
        assert client.mget_nonatomic(keys) == [b"v"] * 30
    finally:
        client.close()


# -- Redis Sentinel ---------------------------------------------------------


def test_sentinel_addresses(sentinel_set):
    assert sentinel_set.master_name == "mymaster"
    assert len(sentinel_set.sentinels) == 3
    assert sentinel_set.sentinels_setting == ",".join(
        f"127.0.0.1:{port}" for _, port in sentinel_set.sentinels
    )
    for handle in (sentinel_set.master, sentinel_set.replica):
        assert isinstance(handle.pid, int) and isinstance(handle.port, int)


def test_sentinel_master_for_set_get(sentinel_set):
    sentinel = Sentinel(sentinel_set.sentinels, socket_timeout=1)
    master = sentinel.master_for("mymaster", socket_timeout=1)
    master.set("through-sentinel", "yes")
    assert master.get("through-sentinel") == b"yes"
    host, port = sentinel.discover_master("mymaster")
    assert (host, port) == sentinel_set.current_master()
    master.close()


@pytest.mark.slow
def test_sentinel_kill_master_fails_over(sentinel_set):
    sentinel = Sentinel(sentinel_set.sentinels, socket_timeout=1)
    old_client = sentinel.master_for("mymaster", socket_timeout=1)
    old_client.set("before", "1")

    before = sentinel_set.current_master()
    killed = sentinel_set.kill_master()
    assert killed.port == before[1] and not killed.is_running()
    elapsed = sentinel_set.wait_for_failover(timeout=15)
    assert elapsed < 10
    after = sentinel_set.current_master()
    assert after != before
    assert sentinel_set.current_master_server().is_running()

    fresh = Sentinel(sentinel_set.sentinels, socket_timeout=1).master_for(
        "mymaster", socket_timeout=1
    )
    fresh.set("after", "2")
    assert fresh.get("after") == b"2"
    fresh.close()

    # A client from before the failover recovers on its own (stale connections fail first).
    deadline = time.monotonic() + 5
    while True:
        try:
            old_client.set("old-client", "3")
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert old_client.get("old-client") == b"3"
    old_client.close()
