"""The real app under gunicorn (2 workers, CREW7_BEHIND_PROXY=true) behind deploy/nginx.conf.

Once per database (the module's stack): gunicorn serves the app from the test database
and Redis on a free 127.0.0.1 port, and nginx (the rendered deploy/nginx.conf, in a
temporary folder) proxies to it on another; a user is created, then each test creates
its crews through nginx. The tests check what only the two together show: the client
address and scheme the app trusts, nginx's metadata cache in front of the app's (hits
and revalidations never reach gunicorn), the API left uncached, the body limit, and the
JSON error shape.

Bounded: every request has a 5 s timeout; nginx and gunicorn are stopped by their pids.
Without nginx the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import make_app, reset_schema
from tests.gunicorn_server import GunicornServer
from tests.helpers import commands_between, commandstats
from tests.test_deploy import (
    BODY_LIMIT,
    _free_port,
    _nginx_binary,
    _stop,
    _wait_for_port,
    render_nginx_conf,
)

SPOOFED = "203.0.113.7"


def request(port, method, path, body=None, headers=None):
    """One request on a new connection: (status, lower-cased headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        hdrs = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


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
    nginx = _nginx_binary()
    # Not pytest's tmp_path: nginx's workers may run as another user (see test_deploy.py).
    workdir = Path(tempfile.mkdtemp(prefix="crew7-front-"))
    workdir.chmod(0o755)
    if db_kind == "sqlite":
        database_url = f"sqlite:///{workdir / 'crew7.sqlite3'}"
    else:
        database_url = request.getfixturevalue("postgres_server").url
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    app = make_app(database_url, redis_server.url)
    reset_schema(app)
    from crew7.extensions import db
    from crew7.services.users import create_user

    with app.app_context():
        _, token = create_user("alice")
        db.session.remove()
        db.engine.dispose()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "CREW7_BEHIND_PROXY": "true",
        "CREW7_CACHE_WARM_ON_START": "false",
        "CREW7_CACHE_TRACE": "true",
    }
    gunicorn = proc = None
    try:
        # gunicorn.conf.py's access log (with the forwarded client): GunicornServer mutes it.
        gunicorn = GunicornServer(env, workers=2, extra_args=("--access-logfile", "-"))
        port = _free_port()
        conf = render_nginx_conf(workdir, port, f"127.0.0.1:{gunicorn.port}")
        with (workdir / "nginx.out").open("wb") as out:
            proc = subprocess.Popen(
                [nginx, "-e", "stderr", "-p", str(workdir), "-c", str(conf)]
                + ["-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port(port, proc, [workdir / "nginx.out", workdir / "error.log"])
        yield Front(port, gunicorn, redis_server.url, {"Authorization": f"Bearer {token}"})
    finally:
        if proc is not None:
            _stop(proc)
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


def test_metadata_is_cached_by_nginx_and_the_api_is_not(front):
    crew, agent = front.new_crew("Cached Crew")
    url, key = f"/metadata/crew/{crew['id']}", f"metadata:crew:{crew['id']}"

    redis_client = redis.Redis.from_url(front.redis_url)
    initial = commandstats(redis_client)
    status, headers, first = front.get(url)
    assert status == 200, first
    assert headers["x-cache-status"] == "MISS"
    assert headers["cache-control"].startswith("public, max-age=")
    etag = headers["etag"]
    assert json_body(headers, first)["name"] == "Cached Crew"
    assert front.computations(key) == 1
    assert len(front.access_lines(f'"GET {url} ', expected=1)) == 1

    before = commandstats(redis_client)
    assert before.get("evalsha", 0) > initial.get("evalsha", 0), "the miss reached the app"
    status, headers, second = front.get(url)
    assert (status, headers["x-cache-status"], second) == (200, "HIT", first)
    assert headers["etag"] == etag

    # Revalidation by the client: nginx answers 304 from its copy.
    status, headers, data = front.get(url, headers={"If-None-Match": etag})
    assert (status, headers["x-cache-status"], data) == (304, "HIT", b"")
    assert headers["etag"] == etag
    status, headers, _ = front.get(url, headers={"If-None-Match": '"another"'})
    assert (status, headers["x-cache-status"]) == (200, "HIT")

    # None of that reached the app: no Redis command, no computation, no access line.
    time.sleep(0.3)
    after = commandstats(redis_client)
    redis_client.close()
    assert commands_between(redis_client, before, after) == {}
    assert front.computations(key) == 1
    assert len(front.access_lines(f'"GET {url} ')) == 1

    # A document nginx has not stored: a conditional request is still answered with a 304.
    agent_url = f"/metadata/agent/{agent['id']}"
    status, headers, _ = front.get(agent_url, headers=front.auth)
    assert (status, headers["x-cache-status"]) == (200, "BYPASS"), "authenticated: not stored"
    status, headers, data = front.get(agent_url, headers={"If-None-Match": headers["etag"]})
    assert (status, headers["x-cache-status"], data) == (304, "MISS", b"")

    # The API: never cached, every request reaches the app.
    seen = len(front.access_lines('"GET /crews HTTP'))
    for n in (1, 2, 3):
        status, headers, data = front.get("/crews")
        assert status == 200
        assert "x-cache-status" not in headers
        assert crew["id"] in [c["id"] for c in json_body(headers, data)["items"]]
        assert len(front.access_lines('"GET /crews HTTP', expected=seen + n)) == seen + n


def test_body_limit_and_json_errors_through_nginx(front):
    posts = len(front.access_lines('"POST /crews HTTP'))

    # Over 64 KiB: refused by nginx itself, the app never sees it.
    big = {"name": "x", "description": "y" * BODY_LIMIT}
    status, _, _ = request(front.port, "POST", "/crews", big, front.auth)
    assert status == 413
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
