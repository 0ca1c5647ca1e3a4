"""What a client sees through nginx right after a crew changes: the staleness timeline.

Starts its own Redis, the app under gunicorn (as deploy/boot.sh runs it) on SQLite or
PostgreSQL, and the front (`flask nginx-config`, crew7/front: nginx + Lua reading the
documents from that Redis) or, with --conf-rev, an older hand-written deploy/nginx.conf,
all on 127.0.0.1. Through nginx it creates a crew, reads its document twice, then:

1. renames it (PATCH name, acknowledged with 200) and polls the document;
2. makes it private (PATCH is_public false) and polls;
3. makes it public again and polls;

every 0.25 s for 10 s each, printing each poll's status and name, then a summary: how
many polls showed what the app no longer serves, and when the last one did.
``make bench`` runs the same steps through its own front (bench/run.py, staleness_steps).

    .venv/bin/python bench/nginx_staleness.py                  # the front, with Redis
    .venv/bin/python bench/nginx_staleness.py --conf-rev 5fc307c   # an older nginx.conf
    .venv/bin/python bench/nginx_staleness.py --db postgresql --interval 0.25 --duration 10

Bounded (every request has a 5 s timeout); stops what it started, by pid.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.app import fresh_users  # noqa: E402
from tests.support.gunicorn import GunicornServer, boot_gunicorn_options, served_env  # noqa: E402
from tests.support.nginx import find_nginx, running_nginx  # noqa: E402
from tests.support.raw_http import request  # noqa: E402
from tests.support.servers import PostgresServer, RedisServer  # noqa: E402


def _renamed(status, name):
    return (status, name) == (200, "New Name")


def _hidden(status, name):
    return status == 404


# Each step: its title, the PATCH it sends, and what the app serves after it.
STEPS = (
    ("after a rename (Old Name -> New Name)", {"name": "New Name"}, _renamed),
    ("after making it private (expect 404)", {"is_public": False}, _hidden),
    ("after making it public again (expect 200)", {"is_public": True}, _renamed),
)


def poll(port, path, expect, interval, count):
    """Poll path count times, every interval, from now: one row per poll
    (t, status, name, x-cache-status, as the app serves it)."""
    rows, start = [], time.monotonic()
    for n in range(count):
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic() - start
        try:
            status, headers, data = request(port, "GET", path, timeout=5)
        except OSError:  # no answer: not what the app serves
            status, headers, data = 0, {}, b""
        name = None
        if headers.get("content-type", "").startswith("application/json") and status == 200:
            name = json.loads(data).get("name")
        rows.append((t, status, name, headers.get("x-cache-status", "-"), expect(status, name)))
    return rows


def staleness_steps(port, path, write, interval, count):
    """The STEPS on one public crew named Old Name whose document ``path`` is cached:
    each change made by ``write(change)`` (which returns once the app answered 200), then
    ``count`` polls of ``path`` through nginx at ``port`` every ``interval`` s, the first
    right after the write. One dict per step: its title, rows and stale polls."""
    out = []
    for title, change, fresh in STEPS:
        write(change)
        rows = poll(port, path, fresh, interval, count)
        stale = [t for t, *_, ok in rows if not ok]
        out.append({"title": title, "rows": rows, "polls": len(rows), "stale": len(stale)})
    return out


def report(title, rows):
    print(f"\n## {title}")
    print(f"{'t (s)':>6}  status  {'name':<12} nginx-cache  as the app serves it")
    for t, status, name, cache, fresh in rows:
        print(f"{t:6.2f}  {status:>6}  {str(name):<12} {cache:<11}  {'yes' if fresh else 'STALE'}")
    stale = [t for t, *_, fresh in rows if not fresh]
    summary = f"{title}: {len(stale)}/{len(rows)} polls stale"
    if stale:
        summary += f", first at {stale[0]:.2f} s, last at {stale[-1]:.2f} s"
        if not rows[-1][-1]:
            summary += " (still stale when polling ended)"
    print(summary)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf-rev", help="git revision of deploy/nginx.conf (default: the file)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    if find_nginx() is None:
        sys.exit("nginx is not installed (make test installs it)")

    conf_text = None
    if args.conf_rev:
        conf_text = subprocess.run(
            ["git", "show", f"{args.conf_rev}:deploy/nginx.conf"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    workdir = Path(tempfile.mkdtemp(prefix="crew7-staleness-"))
    redis_server = postgres = gunicorn = None
    try:
        redis_server = RedisServer.start()
        if args.db == "postgresql":
            postgres = PostgresServer.start()
            database_url = postgres.url
        else:
            database_url = f"sqlite:///{workdir / 'crew7.sqlite3'}"
        (alice,) = fresh_users(database_url, redis_server.url, "alice")
        auth = alice["headers"]
        env = served_env(database_url, redis_server.url, BEHIND_PROXY=True)
        boot_args = [word for option in boot_gunicorn_options() for word in option]
        gunicorn = GunicornServer(env, workers=2, extra_args=tuple(boot_args))
        upstream = f"127.0.0.1:{gunicorn.port}"
        redis_addr = None if conf_text else f"127.0.0.1:{redis_server.port}"
        with running_nginx(upstream, conf_text=conf_text, redis=redis_addr, env=env) as port:

            def call(method, path, body):
                status, _, data = request(port, method, path, body, auth)
                assert status in (200, 201), (method, path, status, data)
                return json.loads(data)

            crew = call("POST", "/crews", {"name": "Old Name"})
            path = f"/metadata/crew/{crew['id']}"
            for _ in range(2):
                request(port, "GET", path)
            conf = (
                f"deploy/nginx.conf at {args.conf_rev}"
                if args.conf_rev
                else "the front (flask nginx-config) with Redis"
            )
            print(f"# {conf}, {args.db}, GET {path} every {args.interval} s for {args.duration} s")
            count = int(round(args.duration / args.interval))
            steps = staleness_steps(
                port,
                path,
                lambda change: call("PATCH", f"/crews/{crew['id']}", change),
                args.interval,
                count,
            )
            summaries = [report(step["title"], step["rows"]) for step in steps]
            print("\n# summary (" + conf + ")")
            for line in summaries:
                print(line)
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        if postgres is not None:
            postgres.close()
        if redis_server is not None:
            redis_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
