"""nginx with the front's nginx.conf (`flask nginx-config`, crew7/front) on 127.0.0.1, for
tests and bench."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.ci import missing
from tests.support.processes import free_port, start_listening, stop_process

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# Where no Redis listens (the discard port): the front hands every request to the app.
CLOSED_REDIS = "127.0.0.1:9"
RATE_ZONES = ("crew7_metadata", "crew7_stats", "crew7_api")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (
            p
            for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
            if os.access(p, os.X_OK)
        ),
        None,
    )


# What the front's Lua needs besides the module (lua-nginx-redis).
LUA_REDIS = "/usr/share/lua/5.1/nginx/redis.lua"


def nginx_binary() -> str:
    """Path of nginx; skips the test without it or the front's Lua packages (fails it when
    CI=true)."""
    from crew7.front import MODULES, find_module_dir

    found = find_nginx()
    if found is None:
        missing("nginx")
    folder = find_module_dir()
    if not all(os.path.exists(os.path.join(folder, m)) for m in MODULES):
        missing("libnginx-mod-http-lua")
    if not os.path.exists(LUA_REDIS):
        missing("lua-nginx-redis")
    return found


def nginx_workdir(prefix="crew7-nginx-") -> Path:
    """A scratch folder nginx's workers can reach.

    Not pytest's tmp_path: its parent is private to the user, and nginx's workers run as
    another user when the tests run as root, yet must reach the cache and temp folders.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def render_conf_text(workdir, listen_port, upstream, conf_text):
    """An older, hand-written nginx.conf (``git show REV:deploy/nginx.conf``) with its
    host-specific values pointed at workdir and loopback (bench/nginx_staleness.py)."""
    text = conf_text
    for old, new in (
        ("server app:8000;", f"server {upstream};"),
        ("listen 80 default_server;", f"listen 127.0.0.1:{listen_port} default_server;"),
        ("/var/run/nginx.pid", str(workdir / "nginx.pid")),
        ("/var/cache/nginx", str(workdir / "cache")),
        ("/dev/stdout", str(workdir / "access.log")),
        ("/dev/stderr", str(workdir / "error.log")),
    ):
        assert old in text, f"{old!r} not found in the given nginx.conf"
        text = text.replace(old, new)
    (workdir / "cache").mkdir(exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def render_nginx_conf(
    workdir, listen_port, upstream, limits=None, redis=None, env=None, workers=2, extra=()
):
    """The front's nginx.conf as `flask nginx-config` prints it, for nginx on
    127.0.0.1:listen_port in front of upstream, run as ``nginx -p workdir``.

    redis: HOST:PORT of the front's Redis (default: a closed port, so every request
    goes to upstream). env: the app's environment (served_env), so the front renders
    the same settings as the app it fronts. limits: {zone: (rate, burst)} replaces a
    rate limit's production values, e.g. {"crew7_api": ("1r/m", 2)}: three requests in
    a row pass, the fourth is refused. extra: more options of the command.
    """
    args = [
        sys.executable, "-m", "flask", "--app", "wsgi", "nginx-config",
        "--listen", f"127.0.0.1:{listen_port}",
        "--app", upstream,
        "--redis", redis or CLOSED_REDIS,
        "--prefix", str(workdir),
        "--workers", str(workers),
    ]  # fmt: skip
    for zone, (rate, burst) in (limits or {}).items():
        args += ["--rate-limit", f"{zone}={rate}:{burst}"]
    args += list(extra)
    full_env = {**os.environ, "CREW7_CACHE_WARM_ON_START": "false", **(env or {})}
    done = subprocess.run(
        args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    path = workdir / "nginx.conf"
    path.write_text(done.stdout)
    return path


def start_nginx(workdir: Path, conf: Path, port: int) -> subprocess.Popen:
    """nginx -c conf in the foreground; returns once it accepts connections on port."""
    return start_listening(
        [nginx_binary(), "-e", "stderr", "-p", str(workdir), "-c", str(conf)]
        + ["-g", "daemon off;"],
        port,
        workdir / "nginx.out",
        "nginx",
        logs=[workdir / "error.log"],
    )


@contextlib.contextmanager
def running_nginx(upstream, limits=None, edit=None, conf_text=None, redis=None, env=None):
    """nginx with the front's rendered nginx.conf in front of upstream: yields its port.

    edit: a function of the rendered text, for a test that needs another timeout.
    conf_text: an older hand-written nginx.conf instead (bench/nginx_staleness.py).
    redis, env: as render_nginx_conf.
    """
    nginx_binary()
    workdir = nginx_workdir("crew7-front-")
    proc = None
    try:
        port = free_port()
        if conf_text is not None:
            conf = render_conf_text(workdir, port, upstream, conf_text)
        else:
            conf = render_nginx_conf(workdir, port, upstream, limits=limits, redis=redis, env=env)
        if edit is not None:
            conf.write_text(edit(conf.read_text()))
        proc = start_nginx(workdir, conf, port)
        yield port
    finally:
        if proc is not None:
            stop_process(proc, timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_front(workdir, listen_port, app_addr, redis_addr, env=None, extra=()):
    """The front (`flask nginx-config`) on 127.0.0.1:listen_port in workdir, in front of
    gunicorn at app_addr, reading Redis at redis_addr; stopped by its pid on exit. env:
    the app's environment (served_env), so both share their settings. For benchmarks."""
    nginx_binary()
    workdir = Path(workdir)
    workdir.chmod(0o755)
    conf = render_nginx_conf(workdir, listen_port, app_addr, redis=redis_addr, env=env, extra=extra)
    proc = start_nginx(workdir, conf, listen_port)
    try:
        yield proc
    finally:
        stop_process(proc, timeout=5)
