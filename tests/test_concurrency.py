"""Cache correctness under concurrency, in one process (the gunicorn stress test is apart)."""

import threading
import time

import pytest

from tests.support.app import make_user
from tests.support.helpers import body, seed_crew

pytestmark = pytest.mark.topologies


def make(app_factory, **settings):
    app = app_factory(**settings)
    return app, app.test_client(), make_user(app, "owner")


def test_fill_after_invalidation_is_fenced_out(app_factory, redis_client):
    """The set-after-delete race: a read that saw the old row must not store it later."""
    app, client, user = make(app_factory, CACHE_FILL_DELAY=0.4)
    cache = app.extensions["crew7.cache"]
    crew, _ = seed_crew(client, user, agents=0)
    cid = crew["id"]
    seen = {}

    def slow_reader():
        seen["doc"] = body(app.test_client().get(f"/metadata/crew/{cid}"))

    reader = threading.Thread(target=slow_reader)
    reader.start()
    time.sleep(0.15)  # the reader has read the database and sleeps before its fill
    r = client.patch(f"/crews/{cid}", json={"name": "After"}, headers=user["headers"])
    assert r.status_code == 200
    reader.join(5)
    assert seen["doc"]["name"] == "Research Crew"  # it began before the write: allowed
    assert cache.counters.fills_rejected == 1
    assert redis_client.get(f"metadata:crew:{cid}") is None  # the old document was not stored
    assert body(client.get(f"/metadata/crew/{cid}"))["name"] == "After"


def test_concurrent_cold_requests_compute_once(app_factory):
    app, client, user = make(app_factory, CACHE_FILL_DELAY=0.2)
    cache = app.extensions["crew7.cache"]
    crew, _ = seed_crew(client, user, agents=1)
    results = []

    def get():
        r = app.test_client().get(f"/metadata/crew/{crew['id']}")
        results.append((r.status_code, r.get_data()))

    threads = [threading.Thread(target=get) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 12 and {s for s, _ in results} == {200}
    assert len({b for _, b in results}) == 1
    assert cache.counters.computations == 1
    assert cache.counters.waits >= 1


def test_dead_holder_is_replaced_after_its_lease(app_factory, redis_client):
    app, client, user = make(app_factory, CACHE_LOCK_LEASE=0.5, CACHE_WAIT_MAX=2.0)
    cache = app.extensions["crew7.cache"]
    crew, _ = seed_crew(client, user, agents=0)
    # A holder took the lease and died before filling.
    redis_client.set(f"lock:{{metadata:crew:{crew['id']}}}", "999999:dead", px=500)
    started = time.perf_counter()
    r = client.get(f"/metadata/crew/{crew['id']}")
    took = time.perf_counter() - started
    assert r.status_code == 200 and body(r)["name"] == "Research Crew"
    assert 0.3 < took < 1.5, took
    assert cache.counters.computations == 1 and cache.counters.wait_timeouts == 0
    assert redis_client.exists(f"metadata:crew:{crew['id']}")


@pytest.mark.slow
def test_hot_key_is_refreshed_before_it_expires(app_factory, redis_client):
    """XFetch: over three TTLs of steady traffic only the very first request misses."""
    app, client, user = make(app_factory, METADATA_TTL=2, CACHE_EARLY_REFRESH_WINDOW=1.0)
    cache = app.extensions["crew7.cache"]
    crew, _ = seed_crew(client, user, agents=0)
    url = f"/metadata/crew/{crew['id']}"
    deadline = time.monotonic() + 6.0
    requests = 0
    while time.monotonic() < deadline:
        # buffered: the test client closes the response as a WSGI server does, which
        # runs the refresh scheduled after the response.
        assert client.get(url, buffered=True).status_code == 200
        requests += 1
        time.sleep(0.02)
    assert requests > 100
    assert cache.counters.misses == 1, cache.counters.as_dict()
    assert cache.counters.early_refreshes >= 2
    assert cache.counters.computations == 1 + cache.counters.early_refreshes


def test_early_refresh_never_serves_what_a_write_invalidated(app_factory):
    app, client, user = make(app_factory, METADATA_TTL=2, CACHE_EARLY_REFRESH_WINDOW=5.0)
    crew, _ = seed_crew(client, user, agents=0)
    url = f"/metadata/crew/{crew['id']}"
    for n in range(20):
        client.patch(f"/crews/{crew['id']}", json={"name": f"v{n}"}, headers=user["headers"])
        assert body(client.get(url))["name"] == f"v{n}"
        assert body(client.get(url))["name"] == f"v{n}"


def test_unknown_ids_are_remembered_briefly(app_factory, redis_client):
    app, client, user = make(app_factory, NEGATIVE_TTL=30)
    cache = app.extensions["crew7.cache"]
    for _ in range(50):
        assert client.get("/metadata/crew/424242").status_code == 404
    assert cache.counters.computations == 1
    assert redis_client.get("metadata:crew:424242") == b"null"
    assert 25 <= redis_client.ttl("metadata:crew:424242") <= 30


def test_private_then_public_is_visible_at_once(app_factory):
    app, client, user = make(app_factory)
    crew, _ = seed_crew(client, user, agents=0, is_public=False)
    url = f"/metadata/crew/{crew['id']}"
    assert client.get(url).status_code == 404
    client.patch(f"/crews/{crew['id']}", json={"is_public": True}, headers=user["headers"])
    assert client.get(url).status_code == 200


def test_conditional_requests(app_factory):
    app, client, user = make(app_factory)
    cache = app.extensions["crew7.cache"]
    crew, _ = seed_crew(client, user, agents=0)
    url = f"/metadata/crew/{crew['id']}"
    first = client.get(url)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    cc = first.headers["Cache-Control"]
    assert "max-age=300" in cc and "stale-while-revalidate=" in cc and "stale-if-error=" in cc
    computations = cache.counters.computations
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.get_data() == b"" and r.headers["ETag"] == etag
    r = client.get(url, headers={"If-None-Match": f'"other", {etag}'})
    assert r.status_code == 304
    assert cache.counters.computations == computations
    assert client.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    client.patch(f"/crews/{crew['id']}", json={"name": "Changed"}, headers=user["headers"])
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] != etag
    # Same bytes, same tag: the tag only changes when the document does.
    assert client.get(url).headers["ETag"] == r.headers["ETag"]
