"""The real app under gunicorn (2 workers, CREW7_BEHIND_PROXY=true) behind the front's
nginx.conf (`flask nginx-config`) as a proxy: its Redis is a closed port, so every request
reaches the app (the hit path from Redis is tests/test_front.py's).

Once per database (the module's stack): gunicorn serves the app from the test database
and Redis on a free 127.0.0.1 port, and nginx (rendered in a temporary folder) proxies
to it on another; a user is created, then each test creates
its crews through nginx. The tests check what only the two together show: the client
address and scheme the app trusts; that nginx never serves what the app would not (a
rename or a privacy change shows on the very next request); per-client rate limits;
nginx's own errors in the app's JSON shape while the app's pass through; no /metrics;
security headers; the body and request-line limits.

Bounded: every request has a 5 s timeout; a test needing other limits or another
upstream starts its own nginx; every nginx and gunicorn is stopped by its pid.
Without nginx the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import time
from dataclasses import dataclass

import pytest
import redis

from tests.support.app import database_url_for, fresh_users, make_app
from tests.support.gunicorn import GunicornServer, boot_gunicorn_options, served_env
from tests.support.nginx import nginx_binary, nginx_workdir, running_nginx
from tests.support.raw_http import request
from tests.test_deploy import BODY_LIMIT

pytestmark = [pytest.mark.nginx, pytest.mark.gunicorn]

SPOOFED = "203.0.113.7"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


def json_body(headers, data):
    assert headers["content-type"].startswith("application/json"), headers
    return json.loads(data)


@dataclass
class Front:
    port: int
    gunicorn: GunicornServer
    redis_url: str
    auth: dict

    def get(self, path, headers=None):
        return request(self.port, "GET", path, headers=headers)

    def patch(self, path, body):
        status, headers, data = request(self.port, "PATCH", path, body, self.auth)
        assert status == 200, data
        return json_body(headers, data)

    def create(self, path, body):
        status, headers, data = request(self.port, "POST", path, body, self.auth)
        assert status == 201, data
        return json_body(headers, data)

    def new_crew(self, name):
        """A crew with one agent, created through nginx."""
        crew = self.create("/crews", {"name": name})
        agent = self.create(
            f"/crews/{crew['id']}/agents",
            {"name": "Scout", "role": "Researcher", "tools": ["web_search"]},
        )
        return crew, agent

    def access_lines(self, needle, expected=None, timeout=3.0):
        """gunicorn's access log lines containing needle; waits for `expected` of them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.gunicorn.output().splitlines() if needle in line]
            if expected is None or len(lines) >= expected or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def computations(self, key):
        return len(re.findall(rf"cache compute key={re.escape(key)} ", self.gunicorn.output()))


@pytest.fixture(scope="module")
def front(db_kind, request, redis_server):
    """nginx -> gunicorn (2 workers) -> the app, on the database of db_kind."""
    nginx_binary()
    workdir = nginx_workdir("crew7-front-db-")
    database_url = database_url_for(db_kind, workdir, request)
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    (alice,) = fresh_users(database_url, redis_server.url, "alice")
    token = alice["token"]
    env = served_env(database_url, redis_server.url, BEHIND_PROXY=True, CACHE_TRACE=True)
    gunicorn = None
    try:
        # As the container runs it (deploy/boot.sh's options), with gunicorn.conf.py's
        # access log (the forwarded client), which GunicornServer otherwise mutes.
        boot_args = [word for option in boot_gunicorn_options() for word in option]
        gunicorn = GunicornServer(env, workers=2, extra_args=(*boot_args, "--access-logfile", "-"))
        with running_nginx(f"127.0.0.1:{gunicorn.port}") as port:
            yield Front(port, gunicorn, redis_server.url, {"Authorization": f"Bearer {token}"})
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _trusted_client(forwarded_for, peer):
    """The REMOTE_ADDR the app's own ProxyFix derives from what gunicorn received."""
    app = make_app("sqlite://", BEHIND_PROXY=True)
    seen = {}

    def probe(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    proxy_fix = copy.copy(app.wsgi_app)
    proxy_fix.app = probe
    environ = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http", "HTTP_HOST": "x"}
    if forwarded_for != "-":
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    list(proxy_fix(environ, lambda *a: None))
    return seen["REMOTE_ADDR"]


def test_the_app_trusts_the_peer_nginx_saw_not_the_clients_header(front):
    status, _, _ = front.get("/crews?trust=spoofed", headers={"X-Forwarded-For": SPOOFED})
    assert status == 200
    status, _, _ = front.get("/crews?trust=plain")
    assert status == 200

    # gunicorn.conf.py's format: X-Forwarded-For as received, then the peer (nginx).
    (spoofed,) = front.access_lines('"GET /crews?trust=spoofed ', expected=1)
    (plain,) = front.access_lines('"GET /crews?trust=plain ', expected=1)
    assert spoofed.startswith(f"{SPOOFED}, 127.0.0.1 127.0.0.1 "), spoofed
    assert plain.startswith("127.0.0.1 127.0.0.1 "), plain

    # nginx appended the address it saw; ProxyFix trusts one hop, so it takes that last
    # entry: the client's own header changes nothing the app relies on.
    for line in (spoofed, plain):
        forwarded_for, peer = re.match(r"(.+?) (\S+) \"GET ", line).groups()
        assert _trusted_client(forwarded_for, peer) == "127.0.0.1", line


def test_no_redirect_names_a_host_the_client_sent(front):
    crew, _ = front.new_crew("Routed Crew")
    # werkzeug would redirect a doubled slash to a URL built from the Host and
    # X-Forwarded-Host the request carried; the app answers without a Location: a 404, or
    # the resource itself where werkzeug reads leading slashes as one.
    for path in (f"/crews//{crew['id']}", f"/metadata//crew/{crew['id']}", "/crews/", "//crews"):
        for headers in (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
            {"Host": "evil.example"},
        ):
            # nginx may normalise the path itself; either way nothing redirects.
            status, got, body = front.get(path, headers=headers)
            assert status in (200, 404) and "location" not in got, (path, status, got)
            json_body(got, body)
            # Straight to gunicorn, as if from a TLS-terminating proxy it trusts.
            status, got, _ = request(front.gunicorn.port, "GET", path, headers=headers)
            assert status in (200, 404) and "location" not in got, (path, status, got)


def test_a_rename_shows_on_the_very_next_request_through_nginx(front):
    crew, agent = front.new_crew("Old Name")
    url = f"/metadata/crew/{crew['id']}"
    for _ in range(2):
        status, headers, data = front.get(url)
        assert status == 200, data
        assert headers["cache-control"].startswith("public, max-age=")
        assert json_body(headers, data)["name"] == "Old Name"
    _, _, agents_before = front.get(f"{url}/agents")

    front.patch(f"/crews/{crew['id']}", {"name": "New Name"})
    status, headers, data = front.get(url)
    assert status == 200, data
    assert json_body(headers, data)["name"] == "New Name"
    status, headers, data = front.get(f"/metadata/crews?ids={crew['id']}")
    assert [doc["name"] for doc in json_body(headers, data)] == ["New Name"]

    # Every request reached the app: nginx answered none of them from a copy.
    assert len(front.access_lines(f'"GET {url} ', expected=3)) == 3
    front.patch(f"/agents/{agent['id']}", {"name": "Renamed Scout"})
    status, headers, data = front.get(f"{url}/agents")
    assert data != agents_before
    assert [doc["name"] for doc in json_body(headers, data)] == ["Renamed Scout"]


def test_a_crew_made_private_is_404_on_the_very_next_request_through_nginx(front):
    crew, agent = front.new_crew("Flipping Crew")
    url = f"/metadata/crew/{crew['id']}"
    for _ in range(2):
        status, _, data = front.get(url)
        assert status == 200, data

    front.patch(f"/crews/{crew['id']}", {"is_public": False})
    status, headers, data = front.get(url)
    assert status == 404, data
    assert json_body(headers, data)["error"] == {
        "status": 404,
        "code": "not_found",
        "message": "no such public token",
    }
    status, _, _ = front.get(f"/metadata/agent/{agent['id']}")
    assert status == 404
    status, headers, data = front.get(f"/metadata/crews?ids={crew['id']}")
    assert json_body(headers, data) == [None]

    front.patch(f"/crews/{crew['id']}", {"is_public": True})
    status, headers, data = front.get(url)
    assert status == 200, data
    assert json_body(headers, data)["name"] == "Flipping Crew"


def test_clients_revalidate_through_nginx_and_the_app_answers(front):
    crew, _ = front.new_crew("Tagged Crew")
    url = f"/metadata/crew/{crew['id']}"
    status, headers, data = front.get(url)
    assert status == 200, data
    etag = headers["etag"]
    status, headers, data = front.get(url, headers={"If-None-Match": etag})
    assert (status, data, headers["etag"]) == (304, b"", etag)
    # Both reached the app: the 304 is the app's, from its current document. (Two
    # workers write the access log, so its lines may come in either order.)
    lines = front.access_lines(f'"GET {url} ', expected=2)
    assert sorted(line.split('" ')[1].split()[0] for line in lines) == ["200", "304"]
    front.patch(f"/crews/{crew['id']}", {"description": "changed"})
    status, headers, _ = front.get(url, headers={"If-None-Match": etag})
    assert status == 200
    assert headers["etag"] != etag


def test_security_headers_on_every_response(front):
    crew, _ = front.new_crew("Headed Crew")
    responses = {
        "metadata": front.get(f"/metadata/crew/{crew['id']}"),
        "api": front.get(f"/crews/{crew['id']}"),
        "openapi": front.get("/openapi.json"),
        "app error": front.get("/crews/999999"),
        "nginx error": front.get("/metrics"),
        "write": request(front.port, "PATCH", f"/crews/{crew['id']}", {"name": "H"}, front.auth),
    }
    expected = {"api": 200, "metadata": 200, "openapi": 200, "write": 200}
    expected.update({"app error": 404, "nginx error": 404})
    for name, (status, headers, _) in responses.items():
        assert status == expected[name], name
        for header, value in SECURITY_HEADERS.items():
            assert headers.get(header) == value, (name, header, headers)
        # The product, never its version.
        assert headers["server"] == "nginx", name
        assert headers["content-type"].startswith("application/json"), name
    status, headers, data = responses["openapi"]
    assert status == 200
    assert json_body(headers, data)["openapi"].startswith("3.")
    # The app sets none of these: nginx is their one source, so each appears once.
    status, headers, _ = request(front.gunicorn.port, "GET", f"/crews/{crew['id']}")
    assert status == 200
    assert not set(SECURITY_HEADERS) & set(headers)


def test_metrics_are_not_served_through_nginx(front):
    # Operators scrape the app itself.
    status, headers, _ = request(front.gunicorn.port, "GET", "/metrics?scrape=direct")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert front.access_lines('"GET /metrics?scrape=direct ', expected=1)
    seen = len(front.access_lines('"GET /metrics'))
    for path in ("/metrics", "/metrics?format=prometheus", "/%6detrics"):
        status, headers, data = front.get(path)
        assert status == 404, (path, data)
        assert json_body(headers, data)["error"] == {
            "status": 404,
            "code": "not_found",
            "message": "not found",
        }
    time.sleep(0.3)
    assert len(front.access_lines('"GET /metrics')) == seen, "/metrics reached the app"


def test_a_batch_of_100_hex_ids_reaches_the_app(front):
    crew, _ = front.new_crew("Batched Crew")
    ids = [f"{crew['id']:064x}"] + [f"{n:064x}" for n in range(10**6, 10**6 + 99)]
    path = "/metadata/crews?ids=" + ",".join(ids)
    assert len(f"GET {path} HTTP/1.1") > 6500
    status, headers, data = front.get(path)
    assert status == 200, data[:300]
    documents = json_body(headers, data)
    assert len(documents) == 100
    assert documents[0]["name"] == "Batched Crew"
    assert documents[1:] == [None] * 99
    # Separators percent-encoded, as some clients send them: about 6.8 KB.
    status, headers, data = front.get(path.replace(",", "%2C"))
    assert status == 200, data[:300]
    assert len(json_body(headers, data)) == 100

    assert len(front.access_lines('"GET /metadata/crews?ids=' + ids[0], expected=2)) == 2

    # nginx and gunicorn agree on the longest request line, 8190 bytes: at the limit the
    # app answers (its JSON 400, 120 ids are too many); one byte more and nginx refuses
    # it, as JSON, where gunicorn would answer in HTML.
    longer = "/metadata/crews?ids=" + ",".join(ids + ids[:20]) + "&pad="
    longer += "x" * (8190 - len(f"GET {longer} HTTP/1.1"))
    assert len(f"GET {longer} HTTP/1.1") == 8190
    status, headers, data = front.get(longer)
    assert status == 400, data[:300]
    assert json_body(headers, data)["error"]["message"] == "at most 100 ids per request"
    status, headers, data = front.get(longer + "x")
    assert status == 414, data[:300]
    assert json_body(headers, data)["error"]["code"] == "uri_too_long"
    assert len(front.access_lines('"GET /metadata/crews?ids=' + ids[0], expected=3)) == 3


def test_rate_limits_answer_json_429_with_retry_after(front):
    crew, _ = front.new_crew("Limited Crew")
    # Each zone: 1 request a minute with a burst of 2, so 3 pass and the 4th is refused.
    tiny = {zone: ("1r/m", 2) for zone in ("crew7_metadata", "crew7_stats", "crew7_api")}
    with running_nginx(f"127.0.0.1:{front.gunicorn.port}", limits=tiny) as port:
        for path in (f"/metadata/crew/{crew['id']}", "/stats/popular-crews", "/crews"):
            statuses = [request(port, "GET", path)[0] for _ in range(3)]
            assert statuses == [200, 200, 200], (path, statuses)
            status, headers, data = request(port, "GET", path)
            assert status == 429, (path, data)
            assert headers["retry-after"] == "1"
            assert json_body(headers, data)["error"] == {
                "status": 429,
                "code": "too_many_requests",
                "message": "too many requests, retry shortly",
            }
            for header, value in SECURITY_HEADERS.items():
                assert headers[header] == value
        # Liveness is never limited.
        for _ in range(5):
            assert request(port, "GET", "/healthz")[0] == 200
    # Production limits: a crawler's burst of metadata requests all pass.
    statuses = {front.get(f"/metadata/crew/{crew['id']}")[0] for _ in range(60)}
    assert statuses == {200}


def test_nginx_errors_are_json_when_the_app_is_down_or_slow(front):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused
        with running_nginx(dead) as port:
            for method, path in (("GET", "/metadata/crew/1"), ("POST", "/crews"), ("GET", "/")):
                status, headers, data = request(port, method, path, {"name": "x"})
                assert status == 502, (path, data)
                error = json_body(headers, data)["error"]
                assert (error["status"], error["code"]) == (502, "bad_gateway"), path
                assert "retry-after" not in headers

    # An upstream that accepts and never answers: 504 after the (shortened) read timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        upstream = f"127.0.0.1:{silent.getsockname()[1]}"

        def short_timeout(text):
            return text.replace("proxy_read_timeout 35s;", "proxy_read_timeout 1s;")

        with running_nginx(upstream, edit=short_timeout) as port:
            status, headers, data = request(port, "GET", "/crews")
            assert status == 504, data
            error = json_body(headers, data)["error"]
            assert (error["status"], error["code"]) == (504, "gateway_timeout")


def test_body_limit_and_json_errors_through_nginx(front):
    posts = len(front.access_lines('"POST /crews HTTP'))

    # Over 64 KiB: refused by nginx itself, the app never sees it.
    big = {"name": "x", "description": "y" * BODY_LIMIT}
    status, headers, data = request(front.port, "POST", "/crews", big, front.auth)
    assert status == 413
    assert json_body(headers, data)["error"] == {
        "status": 413,
        "code": "payload_too_large",
        "message": f"request body larger than {BODY_LIMIT} bytes",
    }
    # Exactly 64 KiB: nginx lets it through, the app answers (the description is too long).
    body = json.dumps({"name": "x", "description": ""}).encode()
    body = body[:-2] + b"y" * (BODY_LIMIT - len(body)) + b'"}'
    assert len(body) == BODY_LIMIT
    status, headers, data = request(
        front.port, "POST", "/crews", body, {**front.auth, "Content-Type": "application/json"}
    )
    assert status == 422, data
    error = json_body(headers, data)["error"]
    assert (error["code"], list(error["fields"])) == ("validation_error", ["description"])
    time.sleep(0.3)
    lines = front.access_lines('"POST /crews HTTP')
    assert len(lines) == posts + 1, "the oversized request reached gunicorn"
    assert '"POST /crews HTTP/1.1" 422 ' in lines[-1]

    # The app's errors keep their JSON shape through nginx.
    for path, message in (
        ("/crews/999999", "crew 999999 not found"),
        ("/metadata/crew/999999", "no such public token"),
        ("/no/such/route", None),
    ):
        status, headers, data = front.get(path)
        assert status == 404, (path, data)
        error = json_body(headers, data)["error"]
        assert (error["status"], error["code"]) == (404, "not_found"), (path, error)
        assert message is None or error["message"] == message, (path, error)
    status, headers, data = request(front.port, "POST", "/crews", {"name": "x"})
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="crew7"'
    assert json_body(headers, data)["error"]["code"] == "unauthorized"
