"""The metadata fast path (crew7/metadata/fast_path.py) answers exactly as Flask does.

Each request goes once through the fast path and once straight to Flask, on the same app
and Redis; the responses (status, headers, body) and what they move (cache counters,
views, request metrics, early refreshes) must be the same, and the fast path must have
answered the hits itself.
"""

import pytest
from werkzeug.test import EnvironBuilder

from crew7.services import metrics
from tests.support.app import make_user
from tests.support.helpers import seed_crew
from tests.support.servers import RedisServer


class Paths:
    """The app's WSGI callable split in two: the fast path, and Flask behind it (counted)."""

    def __init__(self, app):
        self.fast = app.wsgi_app
        self.flask = self.fast.flask_app
        self.handed_over = 0

        def counted(environ, start_response):
            self.handed_over += 1
            return self.flask(environ, start_response)

        self.fast.flask_app = counted

    def call(self, wsgi, path, headers=None, method="GET"):
        builder = EnvironBuilder(path=path, method=method, headers=headers or {})
        out = {}

        def start_response(status, headers, exc_info=None):
            out["status"], out["headers"] = status, headers

        result = wsgi(builder.get_environ(), start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return out["status"], [(k, v) for k, v in out["headers"] if k != "Date"], body


def _moved(app, redis_client, crew_id, rule):
    """What a request can move: cache counters, the crew's views, request metrics."""
    cache = app.extensions["crew7.cache"]
    if cache.views is not None:
        cache.views.flush()
    return {
        "counters": cache.counters.as_dict(),
        "views": redis_client.zscore(cache.views_key(), str(crew_id)),
        "requests": {
            status: metrics.http_requests.labels(rule, "GET", status)._value.get()
            for status in ("200", "304", "404")
        },
    }


def _delta(before, after):
    return {
        "counters": {k: after["counters"][k] - before["counters"][k] for k in after["counters"]},
        "views": (after["views"] or 0) - (before["views"] or 0),
        "requests": {k: after["requests"][k] - before["requests"][k] for k in after["requests"]},
    }


def _same_answer(app, redis_client, paths, path, crew_id, rule, headers=None):
    """Both paths' answers and deltas; asserts they are equal."""
    answers, deltas = [], []
    for wsgi in (paths.fast, paths.flask):
        before = _moved(app, redis_client, crew_id, rule)
        answers.append(paths.call(wsgi, path, headers))
        deltas.append(_delta(before, _moved(app, redis_client, crew_id, rule)))
    assert answers[0] == answers[1], path
    assert deltas[0] == deltas[1], path
    return answers[0], deltas[0]


CREW_RULE = "/metadata/crew/<token_id:token_id>"


@pytest.mark.topologies
def test_hits_and_304s_are_answered_before_flask_exactly_as_flask_answers(
    app, client, alice, redis_client
):
    crew, agents = seed_crew(client, alice, agents=2)
    crew_id = crew["id"]
    for path in (f"/metadata/crew/{crew_id}", f"/metadata/agent/{agents[0]['id']}"):
        assert client.get(path).status_code == 200  # cached now
    assert client.get(f"/metadata/crew/{crew_id}/agents").status_code == 200
    paths = Paths(app)
    hex_id = f"{crew_id:064x}"

    answer, moved = _same_answer(
        app, redis_client, paths, f"/metadata/crew/{crew_id}", crew_id, CREW_RULE
    )
    status, headers, body = answer
    assert status == "200 OK" and body.startswith(b"{")
    assert moved["counters"]["hits"] == 1 and moved["views"] == 1
    assert moved["requests"]["200"] == 1
    etag = dict(headers)["ETag"]

    (status, _, _), moved = _same_answer(
        app, redis_client, paths, f"/metadata/crew/{hex_id}", crew_id, CREW_RULE
    )
    assert status == "200 OK" and moved["counters"]["hits"] == 1
    for inm in (etag, f'"other", {etag}', "*"):
        (status, headers, body), moved = _same_answer(
            app,
            redis_client,
            paths,
            f"/metadata/crew/{crew_id}",
            crew_id,
            CREW_RULE,
            {"If-None-Match": inm},
        )
        assert status.startswith("304") and body == b"" and dict(headers)["ETag"] == etag
        assert moved["requests"]["304"] == 1 and moved["views"] == 1
    (status, _, _), _ = _same_answer(
        app,
        redis_client,
        paths,
        f"/metadata/crew/{crew_id}",
        crew_id,
        CREW_RULE,
        {"If-None-Match": '"stale"'},
    )
    assert status == "200 OK"
    (status, _, body), moved = _same_answer(
        app,
        redis_client,
        paths,
        f"/metadata/agent/{agents[0]['id']}",
        crew_id,
        "/metadata/agent/<token_id:token_id>",
    )
    assert status == "200 OK" and b"Agent 0" in body and moved["views"] == 0
    (status, _, body), _ = _same_answer(
        app,
        redis_client,
        paths,
        f"/metadata/crew/{crew_id}/agents",
        crew_id,
        "/metadata/crew/<token_id:token_id>/agents",
    )
    assert status == "200 OK" and body.startswith(b"[")
    assert paths.handed_over == 0  # every one of these was answered before Flask


@pytest.mark.topologies
def test_what_is_not_a_cached_public_document_goes_to_flask(app, client, alice, bob, redis_client):
    crew, _ = seed_crew(client, alice, agents=0)
    hidden, _ = seed_crew(client, bob, agents=0, is_public=False)
    paths = Paths(app)
    unknown = 2_000_000_000
    cases = [
        (f"/metadata/crew/{unknown}", "404"),  # a negative entry (cached by the first call)
        (f"/metadata/crew/{hidden['id']}", "404"),
        (f"/metadata/crew/0{crew['id']}", "404"),  # malformed: not one spelling
        (f"/metadata/crew/{'F' * 64}", "404"),
        ("/metadata/crew/", "404"),
        (f"/metadata/crew/{crew['id']}?x=1", "200"),
        ("/healthz", "200"),
    ]
    for path, status in cases:
        client.get(path)  # what the first request caches is in place for both paths
        handed = paths.handed_over
        (got, _, _), _ = _same_answer(app, redis_client, paths, path, crew["id"], CREW_RULE)
        assert got.startswith(status), path
        assert paths.handed_over == handed + 1, path
    # A miss counts one miss and one computation, through Flask only.
    before = app.extensions["crew7.cache"].counters.as_dict()
    redis_client.delete(app.extensions["crew7.cache"].crew_key(crew["id"]))
    status, _, _ = paths.call(paths.fast, f"/metadata/crew/{crew['id']}")
    after = app.extensions["crew7.cache"].counters.as_dict()
    assert status == "200 OK"
    assert after["misses"] - before["misses"] == 1 and after["hits"] == before["hits"]
    status, _, body = paths.call(paths.fast, f"/metadata/crew/{crew['id']}", method="HEAD")
    assert status == "200 OK" and body == b""


@pytest.mark.topologies
def test_an_early_refresh_runs_after_the_fast_path_response_is_sent(app_factory, redis_client):
    # A window far longer than the TTL: every hit is due for an early refresh (but for a
    # chance of 3e-7 of the draw).
    app = app_factory(CACHE_EARLY_REFRESH_WINDOW=1e9)
    client = app.test_client()
    alice = make_user(app, "alice")
    crew, _ = seed_crew(client, alice, agents=0)
    path = f"/metadata/crew/{crew['id']}"
    assert client.get(path).status_code == 200
    cache = app.extensions["crew7.cache"]
    paths = Paths(app)
    for wsgi in (paths.fast, paths.flask):
        before = cache.counters.as_dict()
        environ = EnvironBuilder(path=path).get_environ()
        result = wsgi(environ, lambda status, headers, exc_info=None: None)
        body = b"".join(result)
        assert body.startswith(b"{")
        assert cache.counters.early_refreshes == before["early_refreshes"]  # not yet
        result.close()
        after = cache.counters.as_dict()
        assert after["early_refreshes"] == before["early_refreshes"] + 1
        assert after["computations"] == before["computations"] + 1
        assert after["hits"] == before["hits"] + 1
    assert paths.handed_over == 0


@pytest.mark.topologies
def test_an_open_breaker_hands_the_hit_to_flask_and_counts_one_failure(app, client, alice):
    crew, _ = seed_crew(client, alice, agents=0)
    path = f"/metadata/crew/{crew['id']}"
    assert client.get(path).status_code == 200
    cache = app.extensions["crew7.cache"]
    paths = Paths(app)
    cache.breaker.failure(RuntimeError("test"))
    for _ in range(cache.breaker.threshold):
        cache.breaker.failure(RuntimeError("test"))
    before = cache.counters.as_dict()
    status, _, body = paths.call(paths.fast, path)
    after = cache.counters.as_dict()
    assert status == "200 OK" and body.startswith(b"{")
    assert paths.handed_over == 1
    assert after["bypasses"] == before["bypasses"] + 1 and after["hits"] == before["hits"]


def test_a_redis_error_is_counted_once_and_answered_from_the_database(app_factory):
    # The fast path leaves the failure to Flask's path, which counts it (and tries once).
    with RedisServer.start() as own_redis:
        app = app_factory(REDIS_URL=own_redis.url, BREAKER_THRESHOLD=3)
        client = app.test_client()
        crew, _ = seed_crew(client, make_user(app, "dora"), agents=0)
        path = f"/metadata/crew/{crew['id']}"
        assert client.get(path).status_code == 200
        cache = app.extensions["crew7.cache"]
        paths = Paths(app)
        own_redis.stop()
        before = cache.counters.as_dict()
        status, _, body = paths.call(paths.fast, path)
        after = cache.counters.as_dict()
    assert status == "200 OK" and body.startswith(b"{")
    assert paths.handed_over == 1
    assert after["redis_errors"] == before["redis_errors"] + 1
    assert cache.breaker.failures == 1
    assert after["bypasses"] == before["bypasses"] + 1 and after["hits"] == before["hits"]


def test_an_untrusted_redis_is_caught_up_by_flask_before_it_is_read(app, client, alice):
    """After a Redis error the fast path reads nothing: Flask's path catches the change log
    up first (``regain_trust``), then the next hit is the fast path's again."""
    crew, _ = seed_crew(client, alice, agents=0)
    path = f"/metadata/crew/{crew['id']}"
    assert client.get(path).status_code == 200
    cache = app.extensions["crew7.cache"]
    paths = Paths(app)
    caught_up = []
    relay_catch_up = cache.catch_up
    cache.catch_up = lambda: caught_up.append(1) or relay_catch_up()
    cache.distrust()
    status, _, _ = paths.call(paths.fast, path)
    assert status == "200 OK" and paths.handed_over == 1 and caught_up == [1]
    assert cache.trusted
    status, _, _ = paths.call(paths.fast, path)
    assert status == "200 OK" and paths.handed_over == 1 and caught_up == [1]


def test_the_fronts_refresh_request_goes_to_flask(app, client, alice, redis_client):
    """A request the front hands over for an early refresh is answered by the views, which
    refresh the document and, for ``counted``, leave the crew's view to the front."""
    crew, _ = seed_crew(client, alice, agents=0)
    path = f"/metadata/crew/{crew['id']}"
    assert client.get(path).status_code == 200
    cache = app.extensions["crew7.cache"]
    paths = Paths(app)
    views = redis_client.zscore(cache.views_key(), str(crew["id"]))
    before = cache.counters.as_dict()
    status, _, body = paths.call(paths.fast, path, headers={"X-Crew7-Refresh": "counted"})
    after = cache.counters.as_dict()
    assert status == "200 OK" and body.startswith(b"{")
    assert paths.handed_over == 1
    assert after["early_refreshes"] == before["early_refreshes"] + 1
    assert redis_client.zscore(cache.views_key(), str(crew["id"])) == views
