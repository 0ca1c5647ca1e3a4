"""nginx with the rendered deploy/nginx.conf on 127.0.0.1, for tests and bench."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.ci import missing
from tests.support.processes import free_port, start_listening, stop_process

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
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


def nginx_binary() -> str:
    """Path of nginx; skips the test without it (fails it when CI=true)."""
    found = find_nginx()
    if found is None:
        missing("nginx")
    return found


def nginx_workdir(prefix="crew7-nginx-") -> Path:
    """A scratch folder nginx's workers can reach.

    Not pytest's tmp_path: its parent is private to the user, and nginx's workers run as
    another user when the tests run as root, yet must reach the cache and temp folders.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def render_nginx_conf(workdir, listen_port, upstream, limits=None, conf_text=None):
    """deploy/nginx.conf with its host-specific values pointed at workdir and loopback.

    limits: {zone: (rate, burst)} replaces a rate limit's production values, e.g.
    {"crew7_api": ("1r/m", 2)}: three requests in a row pass, the fourth is refused.
    conf_text: another version of the file (an older one, to compare).
    """
    text = NGINX_CONF.read_text() if conf_text is None else conf_text
    for old, new in (
        ("server app:8000;", f"server {upstream};"),
        ("listen 80 default_server;", f"listen 127.0.0.1:{listen_port} default_server;"),
        ("/var/run/nginx.pid", str(workdir / "nginx.pid")),
        ("/var/cache/nginx", str(workdir / "cache")),
        ("/dev/stdout", str(workdir / "access.log")),
        ("/dev/stderr", str(workdir / "error.log")),
    ):
        assert old in text, f"{old!r} not found in deploy/nginx.conf"
        text = text.replace(old, new)
    for zone, (rate, burst) in (limits or {}).items():
        text, zones = re.subn(
            rf"(limit_req_zone \S+ zone={zone}:\S+ rate=)\S+;", rf"\g<1>{rate};", text
        )
        text, uses = re.subn(rf"(limit_req zone={zone} burst=)\d+", rf"\g<1>{burst}", text)
        assert (zones, uses) == (1, 1), f"rate limit {zone} not found in deploy/nginx.conf"
    (workdir / "cache").mkdir(exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(text)
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
def running_nginx(upstream, limits=None, edit=None, conf_text=None):
    """nginx with the rendered deploy/nginx.conf in front of upstream: yields its port.

    edit: a function of the rendered text, for a test that needs another timeout.
    conf_text: another version of deploy/nginx.conf (bench/nginx_staleness.py).
    """
    nginx_binary()
    workdir = nginx_workdir("crew7-front-")
    proc = None
    try:
        port = free_port()
        conf = render_nginx_conf(workdir, port, upstream, limits=limits, conf_text=conf_text)
        if edit is not None:
            conf.write_text(edit(conf.read_text()))
        proc = start_nginx(workdir, conf, port)
        yield port
    finally:
        if proc is not None:
            stop_process(proc, timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)
