"""The front: nginx serving cached metadata documents straight from Redis (crew7/front).

Once per database: a Redis of the module's own, gunicorn (2 workers) on it, the front
(`flask nginx-config`, rendered with the app's environment) reading that Redis, and a
plain proxy (the same config, its Redis a closed port, so every request reaches the
app). The tests compare the front's answer with the app's for the same request and
state, byte for byte; check that a hit is counted (views, metrics) as the app counts
it; that XFetch still refreshes; that every doubt goes to the app (miss, null, Redis
down or frozen, a lost script); and that a write shows on the very next request.

Bounded: every request has a 5 s timeout; Redis is frozen or stopped by its pid and
resumed or restarted; every nginx and gunicorn is stopped by its pid.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from crew7.services.cache.read_through import should_refresh_early
from tests.support.app import database_url_for, fresh_users
from tests.support.gunicorn import GunicornServer, served_env
from tests.support.nginx import nginx_binary, nginx_workdir, running_nginx
from tests.support.raw_http import request
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.nginx, pytest.mark.gunicorn]

FRONT_LUA = Path(__file__).resolve().parents[1] / "crew7" / "front" / "front.lua"
# Differ between any two answers: when and by whom, not what.
VOLATILE = {"date", "connection", "keep-alive"}


@dataclass
class Stack:
    front: int  # the front's port
    proxy: int  # the same nginx.conf with no Redis: every request reaches the app
    gunicorn: GunicornServer
    redis: RedisServer
    client: redis.Redis
    auth: dict

    def get(self, path, headers=None, port=None):
        return request(port or self.front, "GET", path, headers=headers)

    def write(self, method, path, body):
        status, _, data = request(self.front, method, path, body, self.auth)
        assert status in (200, 201), data
        return json.loads(data)

    def new_crew(self, name, public=True):
        crew = self.write("POST", "/crews", {"name": name, "is_public": public})
        agent = self.write(
            "POST",
            f"/crews/{crew['id']}/agents",
            {"name": "Scout", "role": "Researcher", "tools": ["web_search"]},
        )
        # The change log's relay (every 0.25 s) invalidates what the writes touched once
        # more: let it pass, so that a document filled next stays.
        time.sleep(0.8)
        return crew["id"], agent["id"]

    def app_requests(self, needle=""):
        """gunicorn's access-log lines of metadata (and image) GETs containing needle."""
        lines = self.gunicorn.output().splitlines()
        served = ('"GET /metadata/', '"GET /images/')
        return [line for line in lines if needle in line and any(s in line for s in served)]

    def served_by_front(self, path, headers=None):
        """GET path through the front; asserts the app never saw it. A single document's
        request carries a query both ignore, unique, so its log line would name it; a
        batch's (whose query must be ids= alone) is seen by the count of lines, once
        earlier requests' lines are in (gunicorn logs a request after answering it)."""
        if "?" not in path:
            probe = f"{path}?probe={uuid.uuid4().hex}"
            answer = self.get(probe, headers)
            time.sleep(0.1)
            assert not self.app_requests(probe), f"{path} reached the app"
            return answer
        time.sleep(0.3)
        before = len(self.app_requests())
        answer = self.get(path, headers)
        time.sleep(0.1)
        assert len(self.app_requests()) == before, f"{path} reached the app"
        return answer

    def reached_app(self, path, headers=None):
        before = len(self.app_requests())
        answer = self.get(path, headers)
        deadline = time.monotonic() + 3
        while len(self.app_requests()) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.app_requests()) > before, f"{path} did not reach the app"
        return answer

    def views(self, crew_id):
        return float(self.client.zscore("stats:crew_views", str(crew_id)) or 0)

    def settled_views(self, crew_id, expected, wait=3.0):
        """The crew's views once they reach ``expected`` or ``wait`` passes: the front's
        workers flush the views of their hits every 0.5 s."""
        deadline = time.monotonic() + wait
        while (seen := self.views(crew_id)) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return seen


@pytest.fixture(scope="module")
def stack(db_kind, request):
    nginx_binary()
    workdir = nginx_workdir("crew7-front-test-")
    own_redis = RedisServer.start()
    gunicorn = None
    try:
        database_url = database_url_for(db_kind, workdir, request)
        (alice,) = fresh_users(database_url, own_redis.url, "alice")
        env = served_env(
            database_url,
            own_redis.url,
            BEHIND_PROXY=True,
            CACHE_EARLY_REFRESH_WINDOW=2.0,
            BREAKER_COOLDOWN=0.2,
        )
        gunicorn = GunicornServer(env, workers=2, extra_args=("--access-logfile", "-"))
        upstream = f"127.0.0.1:{gunicorn.port}"
        redis_addr = f"127.0.0.1:{own_redis.port}"
        client = redis.Redis.from_url(own_redis.url)
        with (
            running_nginx(upstream, redis=redis_addr, env=env) as front,
            running_nginx(upstream, env=env) as proxy,
        ):
            yield Stack(
                front,
                proxy,
                gunicorn,
                own_redis,
                client,
                {"Authorization": f"Bearer {alice['token']}"},
            )
        client.close()
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        own_redis.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _comparable(answer):
    status, headers, body = answer
    return status, {k: v for k, v in headers.items() if k not in VOLATILE}, body


def test_a_hit_is_byte_identical_to_the_apps_answer(stack):
    crew, agent = stack.new_crew("Identical Crew")
    other, _ = stack.new_crew("Second Crew")
    private, _ = stack.new_crew("Hidden Crew", public=False)
    hexed = f"{crew:064x}"
    hits = [
        f"/metadata/crew/{crew}",
        f"/metadata/crew/{hexed}",
        f"/metadata/agent/{agent}",
        f"/metadata/crew/{crew}/agents",
        f"/metadata/crews?ids={crew},{other},{crew}",
        f"/metadata/crews?ids={hexed},{other}",
    ]
    for path in hits:
        stack.get(path, port=stack.proxy)  # the app fills Redis
    etag = stack.get(hits[0], port=stack.proxy)[1]["etag"]
    variants = [
        {},
        {"Accept-Encoding": "gzip"},
        {"If-None-Match": etag},
        {"If-None-Match": f'"nope", {etag}'},
        {"If-None-Match": "*"},
        {"If-None-Match": '"nope"'},
    ]
    for path in hits:
        for headers in variants:
            app = stack.get(path, headers, port=stack.proxy)
            front = stack.served_by_front(path, headers)
            assert _comparable(front) == _comparable(app), (path, headers)
            # What the app itself sends (straight to gunicorn), nginx's headers aside.
            direct = request(stack.gunicorn.port, "GET", path, headers=headers)
            assert front[0] == direct[0] and front[2] == direct[2] or "gzip" in str(headers)
    assert stack.get(hits[0], {"If-None-Match": etag})[0] == 304
    assert stack.get(hits[4], {"Accept-Encoding": "gzip"})[1]["content-encoding"] == "gzip"

    # Negative entries and what the front cannot parse: the app answers, the same bytes.
    stack.get(f"/metadata/crew/{private}", port=stack.proxy)
    stack.get("/metadata/crew/999999", port=stack.proxy)
    assert stack.client.get(f"metadata:crew:{private}") == b"null"
    for path in (
        f"/metadata/crew/{private}",
        "/metadata/crew/999999",
        f"/metadata/crews?ids={crew},999999",
        f"/metadata/crews?ids={crew},{private}",
        "/metadata/crew/0123",
        "/metadata/crew/2147483648",
        "/metadata/crew/" + "f" * 64,
        f"/metadata/crew/{0xABC:064X}",
        f"/metadata/crews?ids={crew}%2C{other}",
        "/metadata/crews?ids=",
    ):
        front = stack.reached_app(path)
        assert _comparable(front) == _comparable(stack.get(path, port=stack.proxy)), path
        assert front[0] in (200, 400, 404), (path, front)


def test_an_image_hit_is_byte_identical_to_the_apps_answer(stack):
    crew, agent = stack.new_crew("Pictured <Crew> & Co")
    private, hidden_agent = stack.new_crew("Hidden Picture", public=False)
    hits = [
        f"/images/crew/{crew}.svg",
        f"/images/crew/{crew:064x}.svg",
        f"/images/agent/{agent}.svg",
    ]
    for path in hits:
        stack.get(path, port=stack.proxy)  # the app fills Redis
    assert stack.client.get(f"image:crew:{crew}").startswith(b"<svg")
    etag = stack.get(hits[0], port=stack.proxy)[1]["etag"]
    variants = [{}, {"Accept-Encoding": "gzip"}, {"If-None-Match": etag}, {"If-None-Match": "*"}]
    for path in hits:
        for headers in variants:
            app = stack.get(path, headers, port=stack.proxy)
            front = stack.served_by_front(path, headers)
            assert _comparable(front) == _comparable(app), (path, headers)
            direct = request(stack.gunicorn.port, "GET", path, headers=headers)
            assert front[0] == direct[0] and front[2] == direct[2] or "gzip" in str(headers)
            if front[0] == 200 and "gzip" not in str(headers):
                assert front[1]["content-type"] == direct[1]["content-type"] == "image/svg+xml"
                assert front[1]["content-security-policy"] == direct[1]["content-security-policy"]
    status, headers, _ = stack.get(hits[0])
    assert status == 200 and headers["x-content-type-options"] == "nosniff"
    assert "script-src" not in headers["content-security-policy"]
    assert stack.get(hits[0], {"If-None-Match": etag})[0] == 304
    assert stack.get(hits[0], {"Accept-Encoding": "gzip"})[1]["content-encoding"] == "gzip"
    # Other documents keep the strict policy.
    assert stack.get(f"/metadata/crew/{crew}")[1]["content-security-policy"] == (
        "default-src 'none'; frame-ancestors 'none'"
    )

    # Private, unknown and malformed: the app answers, the same bytes as through the proxy.
    for path in (
        f"/images/crew/{private}.svg",
        f"/images/agent/{hidden_agent}.svg",
        "/images/crew/999999.svg",
        "/images/crew/0123.svg",
        "/images/robot/1.svg",
    ):
        front = stack.reached_app(path)
        assert _comparable(front) == _comparable(stack.get(path, port=stack.proxy)), path
        assert front[0] == 404, (path, front)

    # A write shows on the very next request.
    stack.write("PATCH", f"/crews/{crew}", {"name": "Renamed Picture"})
    for _ in range(3):
        assert b"Renamed Picture" in stack.get(hits[0])[2]
        assert b"Crew: Renamed Picture" in stack.get(hits[2])[2]


def test_views_move_as_for_an_app_hit(stack):
    crew, _ = stack.new_crew("Viewed Crew")
    other, _ = stack.new_crew("Viewed Too")
    path = f"/metadata/crew/{crew}"
    stack.get(path, port=stack.proxy)  # a miss: one view
    assert stack.views(crew) == 1
    stack.get(path, port=stack.proxy)  # an app hit: one more
    assert stack.views(crew) == 2
    stack.served_by_front(path)  # a front hit: one more
    assert stack.settled_views(crew, 3) == 3
    stack.get(f"/metadata/crews?ids={other}", port=stack.proxy)
    before = stack.views(other)
    # A batch counts each crew once, duplicates included, as the app does.
    stack.served_by_front(f"/metadata/crews?ids={crew},{other},{crew}")
    assert stack.settled_views(crew, 4) == 4
    assert stack.settled_views(other, before + 1) == before + 1
    # Agents' documents count no view (three flushes later, still none).
    stack.get(f"{path}/agents", port=stack.proxy)
    stack.served_by_front(f"{path}/agents")
    time.sleep(1.5)
    assert stack.views(crew) == 4


def _metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _lookups(stack):
    _, _, body = request(stack.gunicorn.port, "GET", "/metrics")
    text = body.decode()
    app = sum(
        _metric(text, "crew7_cache_events_total", family="crew", event=event)
        for event in ("hit", "miss", "bypass")
    )
    return app, _metric(text, "crew7_front_hits_total", family="crew")


def test_front_hits_and_app_lookups_reconcile_with_requests(stack):
    crews = [stack.new_crew(f"Counted {i}")[0] for i in range(4)]
    private, _ = stack.new_crew("Counted Private", public=False)
    time.sleep(1.2)  # earlier tests' hits flushed (every 0.5 s)
    app_before, front_before = _lookups(stack)
    paths = [f"/metadata/crew/{c}" for c in crews * 5] + [f"/metadata/crew/{private}"] * 3
    for path in paths:
        assert stack.get(path)[0] in (200, 404)
    deadline = time.monotonic() + 5
    while True:
        app_after, front_after = _lookups(stack)
        counted = (app_after - app_before) + (front_after - front_before)
        if counted == len(paths) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counted == len(paths), (app_after - app_before, front_after - front_before)
    # 4 misses and 3 for the private crew (a miss, then null twice) reached the app.
    assert front_after - front_before == len(paths) - 7


def test_the_lua_and_python_xfetch_rules_agree(stack):
    text = FRONT_LUA.read_text()
    source = re.search(r"local function should_refresh_early.*?\nend\n", text, re.S).group(0)
    script = (
        source
        + "return should_refresh_early(tonumber(ARGV[1]), "
        + ("tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])) and 1 or 0")
    )
    for pttl in (-2, -1, 0, 1, 50, 400, 999, 1000, 2500, 60000):
        for delta, beta, window in ((0.01, 1.0, 1.0), (0.5, 3.0, 1.0), (0.0, 0.0, 0.0)):
            for u in (0.0, 0.1, 0.5, 0.9, 0.999):
                lua = stack.client.eval(script, 0, pttl, delta, beta, window, u)
                python = should_refresh_early(pttl, delta, beta, window, u)
                assert bool(lua) == python, (pttl, delta, beta, window, u)


def test_a_key_near_expiry_is_refreshed_through_the_front(stack):
    crew, _ = stack.new_crew("Expiring Crew")
    path = f"/metadata/crew/{crew}"
    key = f"metadata:crew:{crew}"
    stack.get(path)
    assert stack.client.pttl(key) > 100_000
    views = stack.views(crew)
    # 1.5 s left with a 2 s window: each request refreshes with probability 1 - e^-(4/3).
    stack.client.pexpire(key, 1500)
    made = 0
    while made < 20:
        status, _, _ = stack.get(path)
        made += 1
        assert status == 200
        if stack.client.pttl(key) > 100_000:
            break
        time.sleep(0.02)
    assert stack.client.pttl(key) > 100_000, "not refreshed"
    assert stack.app_requests(f"GET {path} "), "the app saw none"
    # Each request counted one view, the one handed to the app with the refresh included.
    assert stack.settled_views(crew, views + made) == views + made


def test_a_clients_refresh_header_is_not_passed_on(stack):
    crew, _ = stack.new_crew("Header Crew")
    path = f"/metadata/crew/{crew}"
    # A miss reaches the app with nginx's value of the header (none): the view counts.
    # Had the client's "counted" got through, the app would count none.
    stack.reached_app(path, {"X-Crew7-Refresh": "counted"})
    assert stack.views(crew) == 1
    stack.client.delete(f"metadata:crew:{crew}")
    stack.reached_app(path, {"X-Crew7-Refresh": "counted"})
    assert stack.views(crew) == 2


def test_a_write_shows_on_the_very_next_request(stack):
    crew, agent = stack.new_crew("Old Name")
    path = f"/metadata/crew/{crew}"
    stack.get(path)
    assert json.loads(stack.served_by_front(path)[2])["name"] == "Old Name"
    stack.write("PATCH", f"/crews/{crew}", {"name": "New Name"})
    for _ in range(5):  # filled again, then the relay's invalidation, then filled again
        assert json.loads(stack.get(path)[2])["name"] == "New Name"

    stack.get(f"/metadata/agent/{agent}")
    stack.served_by_front(f"/metadata/agent/{agent}")
    stack.write("PATCH", f"/crews/{crew}", {"is_public": False})
    for url in (path, f"/metadata/agent/{agent}"):
        status, _, body = stack.get(url)
        assert status == 404, body
    status, _, body = stack.get(f"/metadata/crews?ids={crew}")
    assert json.loads(body) == [None]


def test_a_redis_that_lost_its_scripts_is_still_served_and_counted(stack):
    # The hit path runs no script, and the flush sends its script's source (EVAL): a
    # SCRIPT FLUSH (a restart, a failover) changes nothing for the front.
    crew, _ = stack.new_crew("Scriptless Crew")
    path = f"/metadata/crew/{crew}"
    stack.get(path)
    stack.served_by_front(path)
    assert stack.settled_views(crew, 2) == 2
    stack.client.script_flush()
    status, _, body = stack.served_by_front(path)
    assert status == 200 and json.loads(body)["name"] == "Scriptless Crew"
    assert stack.settled_views(crew, 3) == 3


def test_redis_frozen_then_down_the_app_answers_in_bounded_time(stack):
    crew, _ = stack.new_crew("Weathered Crew")
    path = f"/metadata/crew/{crew}"
    stack.get(path)
    stack.served_by_front(path)
    stack.redis.freeze()
    try:
        started = time.monotonic()
        status, _, body = stack.get(path)
        elapsed = time.monotonic() - started
    finally:
        stack.redis.resume()
    assert status == 200 and json.loads(body)["name"] == "Weathered Crew"
    # The front's 100 ms, then the app's own Redis timeout (250 ms) and the database.
    assert elapsed < 1.5, elapsed

    stack.redis.stop()
    try:
        started = time.monotonic()
        for _ in range(3):
            status, _, body = stack.get(path)
            assert status == 200 and json.loads(body)["name"] == "Weathered Crew"
        assert time.monotonic() - started < 3.0
    finally:
        stack.redis.restart()
