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
