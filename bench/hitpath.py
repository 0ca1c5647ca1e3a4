"""Added cost of the cache-hit path over one bare Redis GET, in process, side by side.

Starts its own redis-server on 127.0.0.1, stores one 1.6 KB document, then times in
alternation (paired per repetition, 7 repetitions, medians) the client-side CPU of:
  get       one redis-py GET of the document (the floor for a design with one round trip);
  hit       CacheService.read_through on a hit (EVALSHA: GET + PTTL + ZINCRBY, counters);
  script    the same script called through redis-py's Script wrapper, as the hit path did
            before it called EVALSHA directly;
and whole requests through the app's WSGI callable (no HTTP server), server-side CPU:
  get view  /bench/redis-get/1 through Flask: one bare GET in a plain view;
  fast hit  /metadata/crew/1 answered by the fast path (crew7/metadata/fast_path.py);
  flask hit /metadata/crew/1 through Flask's view (the fast path's fallback).
Usage: .venv/bin/python bench/hitpath.py
"""

import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from werkzeug.test import EnvironBuilder  # noqa: E402

from tests.support.app import make_app  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402

N = 4000
REPS = 7


def cpu_per_call(fn, n=N):
    started = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - started) / n * 1e6


def wsgi_call(wsgi, environ):
    result = wsgi(dict(environ), lambda status, headers, exc_info=None: None)
    b"".join(result)
    if hasattr(result, "close"):
        result.close()


def paired(pairs):
    """``{name: [µs per call per repetition]}``, the order reversed every other one."""
    rows = {name: [] for name, _ in pairs}
    for rep in range(REPS):
        for name, fn in pairs if rep % 2 == 0 else reversed(pairs):
            rows[name].append(cpu_per_call(fn))
    return rows


def main():
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="crew7-hitpath-"))
    with RedisServer.start() as server, tempfile.TemporaryDirectory() as tmp:
        app = make_app(f"sqlite:///{tmp}/h.db", server.url, BENCH_ROUTES=True)
        cache = app.extensions["crew7.cache"]
        key = cache.crew_key(1)
        document = b'{"name":"x","description":"' + b"y" * 1550 + b'","attributes":[]}'
        cache.claim(key, document, 3600)
        keys = [key, cache.views_key()]
        read_script = cache.scripts.wrapper("read")
        with app.test_request_context("/metadata/crew/1"):
            rows = []
            for rep in range(REPS):
                pair = [
                    ("get", lambda: cache.get_unguarded(key)),
                    ("hit", lambda: cache.read_through("crew", key, lambda: None, "1")),
                    (
                        "script",
                        lambda: read_script(keys=keys, args=["1", cache.popularity_size]),
                    ),
                ]
                if rep % 2:
                    pair.reverse()
                row = dict((name, cpu_per_call(fn)) for name, fn in pair)
                rows.append(row)
        get = statistics.median(r["get"] for r in rows)
        hit = statistics.median(r["hit"] for r in rows)
        script = statistics.median(r["script"] for r in rows)
        ratio = statistics.median(r["hit"] / r["get"] for r in rows)
        print(f"bare GET        {get:7.1f} us CPU per call (median of {REPS})")
        print(f"read_through    {hit:7.1f} us CPU per call")
        print(f"Script wrapper  {script:7.1f} us CPU per call (the script alone, no bookkeeping)")
        print(
            f"hit / GET       {ratio:7.3f}  (paired per repetition, median; "
            f"min {min(r['hit'] / r['get'] for r in rows):.3f}, "
            f"max {max(r['hit'] / r['get'] for r in rows):.3f})"
        )
        hit_env = EnvironBuilder(path="/metadata/crew/1").get_environ()
        get_env = EnvironBuilder(path="/bench/redis-get/1").get_environ()
        requests = paired(
            [
                ("get view", lambda: wsgi_call(app.wsgi_app, get_env)),
                ("fast hit", lambda: wsgi_call(app.wsgi_app, hit_env)),
                ("flask hit", lambda: wsgi_call(app.wsgi_app.flask_app, hit_env)),
            ]
        )
        for name, values in requests.items():
            print(f"{name:15s} {statistics.median(values):7.1f} us CPU per request (WSGI)")
        for name in ("fast hit", "flask hit"):
            pairs = [a / b for a, b in zip(requests[name], requests["get view"], strict=True)]
            print(f"{name} / get view {statistics.median(pairs):6.3f}  (paired, median)")


if __name__ == "__main__":
    main()
