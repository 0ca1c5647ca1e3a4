"""Failover drill: the Sentinel master is killed under load."""

import json
import threading
import time

import pytest

from tests.support.app import make_user
from tests.support.helpers import seed_crew
from tests.support.servers import RedisSentinelSet, running

pytestmark = pytest.mark.slow


@pytest.fixture
def own_sentinels():
    yield from running(RedisSentinelSet)


def test_sentinel_master_killed_under_load(own_sentinels, app_factory, db_kind):
    if db_kind != "sqlite":
        pytest.skip("the drill exercises Redis; one database is enough")
    app = app_factory(
        REDIS_SENTINELS=own_sentinels.sentinels_setting,
        REDIS_SENTINEL_MASTER=own_sentinels.master_name,
        BREAKER_COOLDOWN=0.5,
    )
    client = app.test_client()
    user = make_user(app, "owner")
    crews = [seed_crew(client, user, agents=0, name=f"c{n}")[0]["id"] for n in range(5)]
    cache = app.extensions["crew7.cache"]
    results = []
    stop = time.monotonic() + 12.0
    killed = {}

    def load():
        c = app.test_client()
        n = 0
        while time.monotonic() < stop:
            cid = crews[n % len(crews)]
            started = time.monotonic()
            r = c.get(f"/metadata/crew/{cid}")
            results.append((started, time.monotonic() - started, r.status_code))
            n += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    old_master = own_sentinels.current_master()
    hits_before = cache.counters.hits
    own_sentinels.kill_master()
    killed["at"] = time.monotonic()
    failover = own_sentinels.wait_for_failover(timeout=15)
    new_master = own_sentinels.current_master()
    # Caching resumes on the new master by itself: a document is stored there and hit.
    resumed = None
    probe = own_sentinels.client()
    while time.monotonic() < stop and resumed is None:
        if probe.exists(*[f"metadata:crew:{c}" for c in crews]) and (
            cache.counters.hits > hits_before
        ):
            resumed = time.monotonic() - killed["at"]
        time.sleep(0.05)
    for t in threads:
        t.join(20)
    during = [r for r in results if r[0] >= killed["at"]]
    statuses = {s for _, _, s in results}
    summary = {
        "requests": len(results),
        "during_failover": len(during),
        "non_200": sum(1 for _, _, s in results if s != 200),
        "p99_during_ms": round(sorted(d for _, d, _ in during)[int(len(during) * 0.99)] * 1000, 1),
        "sentinel_failover_s": round(failover, 2),
        "caching_resumed_after_s": None if resumed is None else round(resumed, 2),
        "old_master": old_master[1],
        "new_master": new_master[1],
    }
    print("\nFAILOVER", json.dumps(summary))
    assert new_master != old_master
    assert statuses == {200}, summary
    assert resumed is not None and resumed < 15, summary


def test_failover_that_loses_acknowledged_invalidations(own_sentinels, app_factory, db_kind):
    """The replica is cut off (frozen), a rename is acknowledged by the master alone, the
    master is killed and the stale replica promoted: its copy of the document and of the
    change log's watermark are older than the rename. The relay notices the watermark went
    back and applies the entries again, and no process reads the new master before: no
    stale read later than 1 s after the new master answers (in fact none at all here)."""
    from crew7.services.changelog import get_relay, start_relay

    app = app_factory(
        REDIS_SENTINELS=own_sentinels.sentinels_setting,
        REDIS_SENTINEL_MASTER=own_sentinels.master_name,
        BREAKER_COOLDOWN=0.2,
    )
    client = app.test_client()
    user = make_user(app, "owner")
    crew_id = seed_crew(client, user, agents=1, name="Before")[0]["id"]
    start_relay(app)
    relay = get_relay(app)
    try:
        assert json.loads(client.get(f"/metadata/crew/{crew_id}").get_data())["name"] == "Before"
        relay.poll()
        master = own_sentinels.client()
        assert master.wait(1, 2000) == 1  # the replica has the document and the watermark
        replica = own_sentinels.replica
        # Cut the replica off: frozen, it cannot reconnect, and the master drops its link
        # (what the master writes to a frozen replica's socket would still arrive).
        replica.freeze()
        try:
            master.client_kill_filter(_type="replica")
            r = client.patch(f"/crews/{crew_id}", json={"name": "After"}, headers=user["headers"])
            assert r.status_code == 200
            relay.poll()  # the relay's watermark reaches the master too, not the replica
            assert not master.exists(f"metadata:crew:{crew_id}")
            own_sentinels.kill_master()
        finally:
            replica.resume()
        own_sentinels.wait_for_failover(timeout=20)
        answered = time.monotonic()
        assert own_sentinels.current_master()[1] == replica.port
        reads = []
        while time.monotonic() - answered < 4.0:
            r = client.get(f"/metadata/crew/{crew_id}")
            name = json.loads(r.get_data())["name"] if r.status_code == 200 else r.status_code
            reads.append((time.monotonic() - answered, name))
            time.sleep(0.05)
    finally:
        relay.stop()
    stale = [t for t, name in reads if name != "After"]
    summary = {"reads": len(reads), "stale": len(stale), "last_stale_s": stale and stale[-1]}
    print("\nLOST INVALIDATION FAILOVER", json.dumps(summary))
    # The bound the README states is 1 s; this process saw the old master fail, so it
    # read around the new one until its relay had applied the entries again: none stale.
    assert not stale, summary
    assert reads[-1][1] == "After", summary
