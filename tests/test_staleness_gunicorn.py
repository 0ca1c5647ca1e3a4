"""Staleness under faults with the real gunicorn (gunicorn.conf.py, 2 sync workers): the
fast versions of bench/staleness.py's rows that tests/test_fences.py and
tests/test_changelog.py do not already run in-process.

A poll is stale when it answers the name a rename acknowledged with 200 replaced. Polls go
in concurrent pairs, so both workers answer them (the access log names each one's worker).
"""

import time

import pytest
import redis

from tests.support.app import fresh_users
from tests.support.ci import missing
from tests.support.processes import wait_until
from tests.support.servers import RedisSentinelSet, RedisServer, find_redis_server, running
from tests.support.staleness import (
    Served,
    cache_document,
    crew_key,
    poll,
    renamed_back,
    summary,
)

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

BOUND = 1.0  # seconds after Redis answers again
POLLS, SPAN = 12, 2.0


@pytest.fixture
def own_redis():
    yield from running(RedisServer)


def _served(database_url, redis_url, **settings):
    (user,) = fresh_users(database_url, redis_url, "owner")
    return Served(database_url, redis_url, user, BREAKER_COOLDOWN=1.0, **settings)


def _cached_crew(served, client):
    crew, _ = served.create_crew("Before", agents=1)
    cid = crew["id"]
    cache_document(served, client, cid)
    return cid


def _judge(polls):
    stats = summary(polls)
    assert stats["errors"] == 0, polls
    late = stats["last_stale_s"] is not None and stats["last_stale_s"] > BOUND
    assert not late and not stats["still_stale_at_end"], stats
    return stats


@pytest.mark.parametrize("relay", ["on", "off"])
def test_writer_killed_while_redis_was_frozen(database_url, own_redis, relay):
    """The rename is acknowledged while Redis is frozen, so its writer keeps the
    invalidation to retry; the writer is SIGKILLed (gunicorn starts another) before Redis
    thaws. The other processes' relays deliver it: nothing stale 1 s after Redis answers.
    With no relay (CACHE_CHANGELOG_INTERVAL=0) the old document stays until its TTL."""
    interval = 0.25 if relay == "on" else 0
    client = redis.Redis.from_url(own_redis.url)
    with _served(database_url, own_redis.url, CACHE_CHANGELOG_INTERVAL=interval) as served:
        cid = _cached_crew(served, client)
        own_redis.freeze()
        try:
            served.patch_crew(cid, name="After")
            writer = served.writer_pid("PATCH", f"/crews/{cid}")
            served.kill_worker(writer)
        finally:
            own_redis.resume()
        wait_until(lambda: client.ping(), 5, "Redis answering")
        cleared = time.monotonic()
        polls = poll(served, f"/metadata/crew/{cid}", renamed_back("Before"), cleared, POLLS, SPAN)
    client.close()
    if relay == "off":  # the drill sees the loss when the protection is gone
        assert summary(polls)["still_stale_at_end"], polls
        return
    stats = _judge(polls)
    assert writer not in {int(pid) for pid in stats["workers"] if pid != "?"}


def test_failover_that_lost_the_last_invalidations(tmp_path):
    """The replica is cut off (frozen, its link dropped), the rename reaches the master
    alone, every relay applies it, the master dies and the replica is promoted with the old
    document and an older watermark: nothing stale 1 s after the new master answers."""
    if find_redis_server() is None:
        missing("redis-server")
    sentinels = RedisSentinelSet.start()
    master = redis.Redis.from_url(sentinels.master.url)
    try:
        with _served(
            f"sqlite:///{tmp_path / 'crew7.sqlite3'}",
            sentinels.master.url,
            REDIS_SENTINELS=sentinels.sentinels_setting,
            REDIS_SENTINEL_MASTER=sentinels.master_name,
        ) as served:
            cid = _cached_crew(served, master)
            replica = redis.Redis.from_url(sentinels.replica.url)
            wait_until(lambda: replica.exists(crew_key(cid)), 5, "the document replicated")
            replica.close()
            sentinels.replica.freeze()
            try:
                master.client_kill_filter(_type="replica")
                served.patch_crew(cid, name="After")
                time.sleep(0.75)  # three relay polls: every worker has applied the rename
                sentinels.kill_master()
            finally:
                sentinels.replica.resume()
            sentinels.wait_for_failover(timeout=30)
            cleared = time.monotonic()
            stale = renamed_back("Before")
            polls = poll(served, f"/metadata/crew/{cid}", stale, cleared, POLLS, SPAN)
        _judge(polls)
    finally:
        master.close()
        sentinels.close()
