"""Deployment files: docker-compose.yml, deploy/boot.sh, the Dockerfiles, deploy/nginx.conf
(rendered by `flask nginx-config`) and gunicorn.conf.py, ending with nginx in front of
gunicorn on loopback ports."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft201909Validator
from jsonschema.validators import validator_for

from tests.support.nginx import (
    NGINX_CONF,
    RATE_ZONES,
    nginx_binary,
    nginx_workdir,
    render_nginx_conf,
    start_nginx,
)
from tests.support.processes import (
    free_port,
    start_listening,
    stop_process,
)
from tests.support.raw_http import request

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
BOOT = ROOT / "deploy" / "boot.sh"
BODY_LIMIT = 64 * 1024


# --- docker-compose.yml ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose_validator():
    schema = json.loads((DATA / "compose-spec.json").read_text())
    cls = validator_for(schema, default=Draft201909Validator)
    cls.check_schema(schema)
    return cls(schema)


def _schema_errors(validator, document):
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_specification(compose, compose_validator):
    assert isinstance(compose_validator, Draft201909Validator)
    assert _schema_errors(compose_validator, compose) == []
    assert set(compose["services"]) == {"postgres", "redis", "app", "nginx"}


def test_compose_schema_rejects_invalid_documents(compose, compose_validator):
    bad_condition = copy.deepcopy(compose)
    bad_condition["services"]["app"]["depends_on"]["postgres"]["condition"] = "healthy"
    assert _schema_errors(compose_validator, bad_condition)

    # YAML `true` unquoted is a boolean, which compose does not accept as an env value.
    bad_env = copy.deepcopy(compose)
    bad_env["services"]["app"]["environment"]["CREW7_BEHIND_PROXY"] = True
    assert _schema_errors(compose_validator, bad_env)

    unknown_key = copy.deepcopy(compose)
    unknown_key["services"]["redis"]["healthcheck"]["every"] = "5s"
    assert _schema_errors(compose_validator, unknown_key)


def test_services_start_in_order_of_health(compose):
    services = compose["services"]
    assert services["app"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["nginx"]["depends_on"] == {
        "app": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_every_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check.get("test"), name
    assert "/healthz" in " ".join(compose["services"]["app"]["healthcheck"]["test"])


def test_app_service_settings(compose):
    app = compose["services"]["app"]
    env = app["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["CREW7_BEHIND_PROXY"] == "true"
    assert "WEB_CONCURRENCY" in env
    assert "ports" not in app, "only nginx is published"
    nginx = compose["services"]["nginx"]
    assert "8080:80" in nginx["ports"]
    # The front's image is built from Debian's packages with deploy/nginx.conf in it.
    assert nginx["build"] == {"context": ".", "dockerfile": "deploy/nginx.Dockerfile"}
    for volume in compose["volumes"]:
        assert any(
            str(v).startswith(f"{volume}:")
            for service in compose["services"].values()
            for v in service.get("volumes", [])
        ), f"named volume {volume} is unused"


def gunicorn_settings():
    """The settings gunicorn.conf.py gives gunicorn, read as gunicorn reads them."""
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_redis_is_a_bounded_cache(compose):
    command = compose["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert (options["--save"], options["--appendonly"]) == ("", "no")
    assert options["--maxmemory"] == "256mb"
    assert options["--maxmemory-policy"] == "volatile-lru"


def test_migrations_run_before_gunicorn(compose):
    command = compose["services"]["app"]["command"]
    assert "deploy/boot.sh" in " ".join(command if isinstance(command, list) else [command])
    assert os.access(BOOT, os.X_OK), "deploy/boot.sh must be executable"
    subprocess.run(["sh", "-n", str(BOOT)], check=True, timeout=10)

    lines = [
        line.strip()
        for line in BOOT.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0] == "set -eu", "a failed migration must stop the boot"
    upgrade = lines.index("flask --app wsgi db upgrade")
    (serve,) = [i for i, line in enumerate(lines) if line.startswith("exec gunicorn ")]
    assert upgrade < serve
    assert "-c gunicorn.conf.py wsgi:app" in lines[serve]


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert "pip install -c constraints.txt ." in text
    assert re.search(r"CREW7_INSTANCE_PATH=/app/instance\b", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r'^CMD \["\./deploy/boot\.sh"\]', text, re.MULTILINE)


# --- nginx -------------------------------------------------------------------------------


@pytest.fixture
def nginx_dir():
    path = nginx_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.nginx
def test_nginx_config_is_valid(nginx_dir):
    nginx = nginx_binary()
    conf = render_nginx_conf(nginx_dir, free_port(), "127.0.0.1:9")
    result = subprocess.run(
        [nginx, "-t", "-q", "-e", "stderr", "-p", str(nginx_dir), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _nginx_locations(text):
    return dict(
        re.findall(r"^ {8}location ([^{\n]+?) \{\n(.*?)\n {8}\}$", text, re.DOTALL | re.MULTILINE)
    )


def test_deploy_nginx_conf_is_the_renderers_output():
    """deploy/nginx.conf is generated (make nginx-conf): no copy that can drift."""
    done = subprocess.run(
        [str(ROOT / "deploy" / "render-nginx-conf.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert NGINX_CONF.read_text() == done.stdout, "deploy/nginx.conf is stale: make nginx-conf"


def test_the_front_image_installs_the_front_packages_and_serves_the_rendered_conf():
    dockerfile = (ROOT / "deploy" / "nginx.Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "\nFROM debian:bookworm-slim\n" in dockerfile
    listed = (ROOT / "deploy" / "system-packages.txt").read_text().splitlines()
    front = [
        line.split()[0]
        for line in listed
        if line and not line.startswith("#") and "front" in line.split()[1].split(",")
    ]
    assert set(front) == {"nginx", "libnginx-mod-http-lua", "lua-nginx-redis"}
    for package in front:
        assert re.search(rf"\s{re.escape(package)}\s", dockerfile), package
    assert "COPY deploy/nginx.conf /etc/nginx/crew7.conf" in dockerfile
    assert '"-c", "/etc/nginx/crew7.conf"' in dockerfile
    assert "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;" in NGINX_CONF.read_text()


def test_nginx_config_stores_nothing_and_limits_every_public_route():
    text = NGINX_CONF.read_text()
    directives = [line.split("#")[0].strip() for line in text.splitlines()]
    directives = [d for d in directives if d]
    # No document cache of nginx's own: the documents it serves are Redis's, which the
    # app keeps exact (tests/test_front.py), so it never answers what the app would not.
    assert not [d for d in directives if d.startswith(("proxy_cache", "proxy_store"))]
    # The app's own errors reach the client as the app wrote them.
    assert not [d for d in directives if d.startswith("proxy_intercept_errors")]
    assert "server_tokens off;" in directives

    blocks = _nginx_locations(text)
    assert set(blocks) == {
        "= /_crew7/error",
        "/metadata/",
        "@crew7_app",
        "/stats/",
        "= /metrics",
        "= /healthz",
        "= /nginx-health",
        "/",
    }
    limited = {
        name: re.findall(r"limit_req zone=(\w+) burst=\d+ nodelay;", body)
        for name, body in blocks.items()
    }
    assert limited["/metadata/"] == ["crew7_metadata"]
    assert limited["/stats/"] == ["crew7_stats"]
    assert limited["/"] == ["crew7_api"]
    assert {zone for zones in limited.values() for zone in zones} == set(RATE_ZONES)
    for zone in RATE_ZONES:
        assert re.search(rf"limit_req_zone \$binary_remote_addr zone={zone}:\S+ rate=", text)
    assert "limit_req_status 429;" in directives
    assert "return 404;" in blocks["= /metrics"]
    assert "internal;" in blocks["= /_crew7/error"]
    # Metadata: the front's hit path, else the app (its named location has no limit of
    # its own, so a request handed over is limited once).
    assert "crew7_front.serve()" in blocks["/metadata/"]
    assert blocks["@crew7_app"].strip() == "proxy_pass http://crew7_app;"
    # Only nginx sets the early-refresh header: a client's is replaced.
    assert "proxy_set_header X-Crew7-Refresh $crew7_refresh;" in directives

    # A proxy_set_header or add_header inside a location silently drops the server's.
    for name, body in blocks.items():
        assert "proxy_set_header" not in body, name
        assert "add_header" not in body, name
    assert re.search(r"^\s*client_max_body_size 64k;", text, re.MULTILINE)
    # nginx's request line buffer (the line and its CRLF) is gunicorn's limit plus 2.
    (size,) = re.findall(r"^\s*large_client_header_buffers \d+ (\d+)k;", text, re.MULTILINE)
    assert int(size) * 1024 == gunicorn_settings()["limit_request_line"] + 2
    assert re.search(r"^\s*gzip_types [^;]*application/json", text, re.MULTILINE)


def test_nginx_error_bodies_have_the_apps_shape():
    from crew7.errors import _CODES

    text = NGINX_CONF.read_text()
    block = re.search(r"map \$status \$crew7_error \{\n(.*?)\n    \}", text, re.DOTALL)
    bodies = dict(re.findall(r"^\s*(\w+)\s+'(.*?)\\n';$", block.group(1), re.MULTILINE))
    assert set(bodies) == {"400", "404", "413", "414", "429", "502", "503", "504", "default"}
    for key, raw in bodies.items():
        (error,) = json.loads(raw).values()
        assert set(error) == {"status", "code", "message"}, key
        assert error["status"] == (500 if key == "default" else int(key)), key
        expected = (
            _CODES.get(error["status"])
            or {
                414: "uri_too_long",
                502: "bad_gateway",
                504: "gateway_timeout",
            }[error["status"]]
        )
        assert error["code"] == expected, key


# --- gunicorn.conf.py ----------------------------------------------------------------------


_GUNICORN_ENV = (
    "PORT",
    "GUNICORN_BIND",
    "WEB_CONCURRENCY",
    "GUNICORN_WORKER_CLASS",
    "GUNICORN_THREADS",
    "GUNICORN_GRACEFUL_TIMEOUT",
    "GUNICORN_CMD_ARGS",
    "FORWARDED_ALLOW_IPS",
)


def _gunicorn_env(**values):
    env = {k: v for k, v in os.environ.items() if k not in _GUNICORN_ENV}
    env.update(values)
    return env


def test_gunicorn_config_as_gunicorn_resolves_it(tmp_path):
    (tmp_path / "hello.py").write_text(
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--print-config",
            "-c",
            str(GUNICORN_CONF),
            "--chdir",
            str(tmp_path),
            "hello:app",
        ],
        env=_gunicorn_env(WEB_CONCURRENCY="3", FORWARDED_ALLOW_IPS="10.0.0.2,10.0.0.3"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    settings = {
        name.strip(): value.strip()
        for name, _, value in (line.partition("=") for line in result.stdout.splitlines())
    }
    assert settings["workers"] == "3"
    assert settings["bind"] == "['0.0.0.0:8000']"
    assert settings["accesslog"] == "-"
    assert settings["errorlog"] == "-"
    assert settings["forwarded_allow_ips"] == "['10.0.0.2', '10.0.0.3']"
    assert settings["worker_class"] == "sync"
    assert settings["timeout"] == "30"
    assert settings["keepalive"] == "5"
    assert settings["preload_app"] == "False"
    assert "{x-forwarded-for}i" in settings["access_log_format"]
    assert "%(M)s" in settings["access_log_format"]


def test_gunicorn_config_defaults_and_overrides(monkeypatch):
    for name in _GUNICORN_ENV:
        monkeypatch.delenv(name, raising=False)
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"] == "0.0.0.0:8000"
    assert 3 <= conf["workers"] <= 12
    assert conf["threads"] == 1
    assert conf["forwarded_allow_ips"] == "127.0.0.1"
    assert conf["preload_app"] is False

    monkeypatch.setenv("PORT", "5000")
    assert runpy.run_path(str(GUNICORN_CONF))["bind"] == "0.0.0.0:5000"
    monkeypatch.setenv("GUNICORN_BIND", "127.0.0.1:7000")
    monkeypatch.setenv("GUNICORN_WORKER_CLASS", "gthread")
    monkeypatch.setenv("GUNICORN_THREADS", "4")
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"] == "127.0.0.1:7000"
    assert (conf["worker_class"], conf["threads"]) == ("gthread", 4)

    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(RuntimeError, match="WEB_CONCURRENCY"):
        runpy.run_path(str(GUNICORN_CONF))


# --- nginx in front of gunicorn --------------------------------------------------------------

ECHO_APP = textwrap.dedent(
    """
    import json

    HITS = {}


    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        HITS[path] = HITS.get(path, 0) + 1
        seen = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        body = json.dumps(
            {"path": path, "hits": dict(HITS), "headers": seen, "padding": "x" * 2048}
        ).encode()
        # Cacheable everywhere: only nginx's configuration decides what it stores.
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "public, max-age=60"),
            ],
        )
        return [body]
    """
)


@pytest.fixture
def stack(nginx_dir):
    """nginx (deploy/nginx.conf) -> gunicorn (gunicorn.conf.py) -> an echo app."""
    nginx_binary()
    (nginx_dir / "echo_app.py").write_text(ECHO_APP)
    app_port, proxy_port = free_port(), free_port()
    procs = []
    gunicorn_log = nginx_dir / "gunicorn.log"
    try:
        procs.append(
            start_listening(
                [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
                + ["--chdir", str(nginx_dir), "echo_app:app"],
                app_port,
                gunicorn_log,
                "gunicorn",
                env=_gunicorn_env(GUNICORN_BIND=f"127.0.0.1:{app_port}", WEB_CONCURRENCY="1"),
            )
        )
        conf = render_nginx_conf(nginx_dir, proxy_port, f"127.0.0.1:{app_port}")
        procs.append(start_nginx(nginx_dir, conf, proxy_port))
        yield {"port": proxy_port, "gunicorn_log": gunicorn_log}
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=5)


def _request(port, path, method="GET", headers=None, body=None):
    """One request; a gzip-encoded body comes back decompressed."""
    status, result_headers, data = request(port, method, path, body, headers)
    if result_headers.get("content-encoding") == "gzip":
        data = gzip.decompress(data)
    return status, result_headers, data


def _json(response):
    status, headers, data = response
    assert status == 200, (status, data[:200])
    return headers, json.loads(data)


@pytest.mark.nginx
@pytest.mark.gunicorn
def test_nginx_in_front_of_gunicorn(stack):
    port = stack["port"]

    # Proxy headers reach the app; a client's X-Forwarded-For is kept and nginx appends the peer.
    _, seen = _json(_request(port, "/crews", headers={"X-Forwarded-For": "203.0.113.7"}))
    headers = seen["headers"]
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert headers["host"] == f"127.0.0.1:{port}"

    # gunicorn's access log names the forwarded client and the duration.
    time.sleep(0.2)
    log_lines = [
        line for line in stack["gunicorn_log"].read_text().splitlines() if '"GET /crews ' in line
    ]
    assert log_lines and log_lines[0].startswith("203.0.113.7, 127.0.0.1 127.0.0.1 ")
    assert re.search(r" \d+ms$", log_lines[0])

    # Metadata: nginx stores nothing, even what the app marks public; with no Redis
    # (render_nginx_conf's default) every request reaches the app, and nginx
    # compresses for the client.
    url = "/metadata/crew/1"
    headers, first = _json(_request(port, url))
    assert headers["cache-control"] == "public, max-age=60"
    assert "x-cache-status" not in headers
    assert first["hits"][url] == 1
    assert "accept-encoding" not in first["headers"], "the app sends identity bodies"
    headers, second = _json(_request(port, url, headers={"Accept-Encoding": "gzip"}))
    assert headers["content-encoding"] == "gzip"
    assert second["hits"][url] == 2
    headers, third = _json(_request(port, url, headers={"Authorization": "Bearer t0ken"}))
    assert third["hits"][url] == 3
    assert third["headers"]["authorization"] == "Bearer t0ken"

    for expected in (2, 3):
        headers, api = _json(_request(port, "/crews"))
        assert api["hits"]["/crews"] == expected

    headers, health = _json(_request(port, "/healthz"))
    assert health["path"] == "/healthz"

    # Body limit: 64 KiB passes, one byte more is refused by nginx before the app sees it.
    status, _, _ = _request(port, "/crews", method="POST", body=b"x" * BODY_LIMIT)
    assert status == 200
    status, _, _ = _request(port, "/crews", method="POST", body=b"x" * (BODY_LIMIT + 1))
    assert status == 413
    _, after = _json(_request(port, "/crews"))
    assert after["hits"]["/crews"] == 5, "the oversized request reached the app"
