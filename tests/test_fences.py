"""Fences that cannot be lost: whatever removes a fence at the worst moment of a fill
(FLUSHALL, a restart that comes back empty, eviction, expiry), the fill is refused and
no document older than an acknowledged write is ever served.

The worst moment: the crew's fence is gone already (it expired, or Redis restarted since
the crew was last invalidated), so a reader finds no fence; it reads the database (old
name) and sleeps before its fill (CACHE_FILL_DELAY); the owner renames the crew (200,
invalidation applied); then the fault removes the new fence; then the reader's fill runs.
"""

import threading
import time

import pytest
import redis

from tests.support.app import make_app, make_user, reset_schema
from tests.support.ci import missing
from tests.support.helpers import body, seed_crew
from tests.support.servers import RedisServer, find_redis_server

pytestmark = pytest.mark.slow


def _race(app, client, user, url, fault, fill_delay_wait=0.3, attempts=3):
    """Run the race with ``fault()`` injected after the rename; return what readers see.

    The reader must have read the database before the write for the race to happen; on a
    busy machine it may not have within ``fill_delay_wait``, and then it reads the new
    name (allowed, but nothing was tested): the race is run again, on a new crew."""
    for _ in range(attempts):
        reader_saw, names = _race_once(app, client, user, url, fault, fill_delay_wait)
        if reader_saw == "Before":
            return names
        assert reader_saw == "After", reader_saw
    pytest.fail(f"the reader never read the database before the write ({attempts} attempts)")


def _race_once(app, client, user, url, fault, fill_delay_wait):
    crew, _ = seed_crew(client, user, agents=0, name="Before")
    cid = crew["id"]
    with redis.Redis.from_url(url) as r:
        # No invalidation since the fence went (its 24 h expiry, or a restart).
        r.delete(f"fence:{{metadata:crew:{cid}}}")
    seen = {}

    def slow_reader():
        seen["doc"] = body(app.test_client().get(f"/metadata/crew/{cid}"))

    reader = threading.Thread(target=slow_reader)
    reader.start()
    time.sleep(fill_delay_wait)  # the reader has read the database and waits to fill
    r = client.patch(f"/crews/{cid}", json={"name": "After"}, headers=user["headers"])
    assert r.status_code == 200
    fault(cid)
    reader.join(30)
    assert not reader.is_alive()
    names = []
    for _ in range(5):
        r = client.get(f"/metadata/crew/{cid}")
        names.append(body(r)["name"] if r.status_code == 200 else r.status_code)
        time.sleep(0.05)
    return seen["doc"]["name"], names


def _user(app):
    return make_user(app, "owner")


@pytest.fixture
def own_redis():
    """A Redis of this test's own, so it can be restarted or starved of memory."""
    if find_redis_server() is None:
        missing("redis-server")
    servers = []

    def start(*args):
        server = RedisServer.start(extra_args=list(args))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _lose_fence(r, cid, fault):
    fence = f"fence:{{metadata:crew:{cid}}}"
    if fault == "flushall":
        r.flushall()
    elif fault == "fence_deleted":  # what eviction does to it
        assert r.delete(fence) == 1
    else:
        r.pexpire(fence, 1)
        time.sleep(0.05)
        assert not r.exists(fence)


def _app(database_url, url, **settings):
    app = make_app(database_url, url, **settings)
    reset_schema(app)
    return app


@pytest.mark.parametrize("fault", ["flushall", "fence_deleted", "fence_expired"])
def test_a_lost_fence_refuses_the_fill(database_url, own_redis, fault):
    server = own_redis()
    app = _app(database_url, server.url, CACHE_FILL_DELAY=0.8)
    r = redis.Redis.from_url(server.url)

    def inject(cid):
        _lose_fence(r, cid, fault)

    names = _race(app, app.test_client(), _user(app), server.url, inject)
    assert names == ["After"] * 5
    assert app.extensions["crew7.cache"].counters.fills_rejected >= 1
    r.close()


@pytest.mark.parametrize("fault", ["flushall", "fence_deleted", "fence_expired"])
def test_a_lost_fence_refuses_the_fill_on_sentinel(database_url, redis_sentinel, fault):
    """The same on a Sentinel master: the app reaches it through the Sentinels."""
    host, port = redis_sentinel.current_master()
    url = f"redis://{host}:{port}/0"
    app = _app(
        database_url,
        None,
        REDIS_SENTINELS=redis_sentinel.sentinels_setting,
        REDIS_SENTINEL_MASTER=redis_sentinel.master_name,
        CACHE_FILL_DELAY=0.8,
    )
    r = redis.Redis.from_url(url)

    def inject(cid):
        _lose_fence(r, cid, fault)

    names = _race(app, app.test_client(), _user(app), url, inject)
    assert names == ["After"] * 5
    assert app.extensions["crew7.cache"].counters.fills_rejected >= 1
    r.close()


def test_a_restart_that_comes_back_empty_refuses_the_fill(database_url, own_redis):
    server = own_redis()
    app = _app(database_url, server.url, CACHE_FILL_DELAY=1.5, BREAKER_COOLDOWN=0.1)

    def inject(cid):
        server.restart()

    names = _race(app, app.test_client(), _user(app), server.url, inject)
    assert names == ["After"] * 5


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_eviction_of_the_fence_refuses_the_fill(database_url, own_redis, policy):
    server = own_redis("--maxmemory", "3mb", "--maxmemory-policy", policy)
    app = _app(database_url, server.url, CACHE_FILL_DELAY=4.0)
    r = redis.Redis.from_url(server.url)
    evicted = {}

    def inject(cid):
        fence = f"fence:{{metadata:crew:{cid}}}"
        assert r.exists(fence)
        time.sleep(1.1)  # Redis's LRU clock ticks in seconds: let the fence be the oldest
        junk = b"x" * 1024
        for batch in range(60):
            pipe = r.pipeline(transaction=False)
            for n in range(500):
                pipe.set(f"junk:{batch}:{n}", junk, ex=3600)
            pipe.execute()
            if not r.exists(fence):
                evicted["after_keys"] = (batch + 1) * 500
                break
        assert evicted, "the fence was never evicted"
        assert r.info("stats")["evicted_keys"] > 0

    names = _race(app, app.test_client(), _user(app), server.url, inject)
    assert names == ["After"] * 5
    r.close()
