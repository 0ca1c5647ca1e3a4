"""The front in ``make bench``: nginx + Lua (crew7/front) reading the bench's Redis, in
front of the bench's cache-on gunicorn, against the direct hit in the same repetition.

Scenarios (wrk -t1, as the others):

- ``hits_cycle``: ``/metadata/crew/<id>`` straight to gunicorn, on a cycle of every public
  crew (10,000 at full scale): each document requested once per cycle, as a marketplace
  crawling a collection does;
- ``front_cycle``: the same cycle through the front;
- ``front_hot``: 10 hot crews through the front (the direct peer is ``hits``).

Every document is cached before a run (checked with MGET) and every run counts the
documents the app computed during it (trace lines; 0: all hits) and the front hits it
counted (the ``front:hits`` hash its workers flush to Redis). CPU per request: gunicorn's
workers, the front's nginx (its master and workers, children of this bench) and Redis.
The closed loop is wrk's (-t1, 16 connections): how busy the machine was during the front's
runs says whether its figures are the machine's limit (front_note).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

from common import CpuMeter, flask_cli, log, proc_cpu_seconds, tree_ticks, wrk

from crew7.services.cache import document_key
from crew7.services.cache.documents import FRONT_HITS_KEY
from tests.support.nginx import nginx_workdir, running_front
from tests.support.processes import free_port
from tests.support.raw_http import request

HOT_CREWS = 10
BATCH = 100
# The production per-client limit (50 r/s) would refuse the load generator.
RATE_LIMIT = ["--rate-limit", "crew7_metadata=100000r/s:100000"]
STALENESS_POLLS = 40
STALENESS_INTERVAL = 0.15  # 40 polls over 6 s, the first right after the write's 200


class Front:
    """The front, started once per bench run; stopped (by pid) by ``close``."""

    def __init__(self, bench, cycle_ids):
        self.bench = bench
        self.cycle_ids = list(cycle_ids)
        self.hot_ids = bench.hit_ids[:HOT_CREWS]
        self.workdir = nginx_workdir("crew7-bench-front-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._front = running_front(
            self.workdir,
            self.port,
            f"127.0.0.1:{bench.hits_srv.port}",
            f"127.0.0.1:{bench.stack.redis.port}",
            env=bench.hits_srv_env,
            extra=RATE_LIMIT,
        )
        try:
            self.proc = self._front.__enter__()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        log(f"front (nginx + Lua): master pid {self.proc.pid}, {self.url}")
        cycle = [f"/metadata/crew/{i}" for i in self.cycle_ids]
        hot = [f"/metadata/crew/{i}" for i in self.hot_ids]
        n = len(self.cycle_ids)
        self.scenarios = {
            "hits_cycle": (
                bench.hits_srv.url,
                bench._script("hits_cycle", cycle, cycle=True),
                self.cycle_ids,
                f"/metadata/crew/<id> straight to gunicorn, a cycle of {n:,} warm crews "
                "(each once per cycle)",
            ),
            "front_cycle": (
                self.url,
                bench._script("front_cycle", cycle, cycle=True),
                self.cycle_ids,
                f"the same cycle of {n:,} warm crews through the front (nginx + Lua, Redis)",
            ),
            "front_hot": (
                self.url,
                bench._script("front_hot", hot),
                self.hot_ids,
                f"{len(hot)} hot crews through the front (direct peer: hits)",
            ),
        }

    def close(self):
        try:
            self._front.__exit__(None, None, None)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- cache state ----------------------------------------------------------------
    def missing(self, ids):
        keys = [document_key("crew", i) for i in ids]
        absent = 0
        for start in range(0, len(keys), 1000):
            absent += sum(v is None for v in self.bench.redis.mget(keys[start : start + 1000]))
        return absent

    def warm(self, ids):
        """Cache every document of ids through the app's batch route, then check."""
        if not self.missing(ids):
            return
        for start in range(0, len(ids), BATCH):
            path = "/metadata/crews?ids=" + ",".join(map(str, ids[start : start + BATCH]))
            status, _, _ = request(self.bench.hits_srv.port, "GET", path, timeout=60)
            if status != 200:
                raise RuntimeError(f"warming the front's crews: HTTP {status}")
        absent = self.missing(ids)
        if absent:
            raise RuntimeError(f"warming the front's crews: {absent}/{len(ids)} not cached")

    def front_hits(self):
        time.sleep(1.0)  # the front's workers flush their counts every few hundred ms
        raw = self.bench.redis.hget(FRONT_HITS_KEY, "crew")
        return int(raw or 0)

    # -- one wrk run ------------------------------------------------------------------
    def _run_once(self, name):
        url, script, ids, _ = self.scenarios[name]
        bench = self.bench
        srv = bench.hits_srv
        self.warm(ids)
        time.sleep(0.3)
        hits0 = self.front_hits()
        tick = os.sysconf("SC_CLK_TCK")
        redis_pid = bench.stack.redis.pid
        app0, nginx0 = srv.cpu_snapshot(), tree_ticks(self.proc.pid)
        redis0 = proc_cpu_seconds(redis_pid) or 0.0
        log0 = srv.log_size()
        meter = CpuMeter()
        result = wrk(url + "/", script, bench.duration, bench.connections)
        app1, nginx1 = srv.cpu_snapshot(), tree_ticks(self.proc.pid)
        redis1 = proc_cpu_seconds(redis_pid) or 0.0
        result["machine_cpu"] = meter.read()
        requests = max(result["requests"], 1)
        app = sum(app1[p] - app0.get(p, 0.0) for p in app1)
        nginx = (nginx1 - nginx0) / tick
        result["app_cpu_us_per_req"] = app / requests * 1e6
        result["nginx_cpu_us_per_req"] = nginx / requests * 1e6
        result["redis_cpu_us_per_req"] = (redis1 - redis0) / requests * 1e6
        # Server CPU: what serves the request besides Redis (gunicorn's, plus nginx's).
        result["cpu_us_per_req"] = (app + (nginx if url == self.url else 0.0)) / requests * 1e6
        result["computations"] = len(re.findall(r"cache compute key=", srv.log_since(log0)))
        result["front_hits"] = self.front_hits() - hits0
        result["not_cached_after"] = self.missing(ids)
        return result

    def run(self, name):
        return self.bench._quietest(name, lambda: self._run_once(name))

    # -- staleness through the front --------------------------------------------------
    def staleness(self):
        """A rename, a privacy flip and back, each written to the app (200), then polled
        through the front (nginx_staleness.staleness_steps): stale polls per step."""
        from nginx_staleness import staleness_steps

        bench = self.bench
        _, out, _ = flask_cli(bench.env, "create-user", f"bench-staleness-{time.time_ns()}")
        auth = {"Authorization": f"Bearer {out.strip().splitlines()[0]}"}
        app = bench.hits_srv.port

        def call(method, path, body=None):
            status, _, data = request(app, method, path, body, auth, timeout=10)
            if status not in (200, 201):
                raise RuntimeError(f"{method} {path}: HTTP {status} {data[:200]!r}")
            return data

        crew = json.loads(call("POST", "/crews", {"name": "Old Name"}))
        path = f"/metadata/crew/{crew['id']}"
        for _ in range(2):
            request(self.port, "GET", path)
        if self.missing([crew["id"]]):
            raise RuntimeError(f"staleness: {path} is not cached before the writes")
        steps = staleness_steps(
            self.port,
            path,
            lambda change: call("PATCH", f"/crews/{crew['id']}", change),
            STALENESS_INTERVAL,
            STALENESS_POLLS,
        )
        for step in steps:
            step["rows"] = [list(r) for r in step["rows"]]
            log(f"  front staleness {step['title']}: {step['stale']}/{step['polls']} stale")
        return {
            "crew_id": crew["id"],
            "interval_s": STALENESS_INTERVAL,
            "steps": steps,
            "stale": sum(s["stale"] for s in steps),
            "polls": sum(s["polls"] for s in steps),
        }


def front_runs(front, rep, out):
    """The three front scenarios of repetition ``rep`` into ``out['wrk']`` (order reversed
    every other repetition); returns the ratios paired with this repetition's runs."""
    names = list(front.scenarios)
    if rep % 2:
        names.reverse()
    for name in names:
        res = front.run(name)
        out["wrk"][name] = res
        log(
            f"  rep {rep} {name:18s} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:7.2f} ms  "
            f"p99 {res['p99_ms']:7.2f} ms  nginx {res['nginx_cpu_us_per_req']:5.0f} + app "
            f"{res['app_cpu_us_per_req']:5.0f} + redis {res['redis_cpu_us_per_req']:4.0f} us/req"
            f"  computed {res['computations']}  front hits {res['front_hits']}"
            f"  non-2xx {res['non_2xx_3xx']}  others {res['machine_cpu']['others']:.0%}"
        )
    w = out["wrk"]

    def div(a, b):
        return a / b if b else None

    return {
        "front_cycle_over_hits_cycle_rps": div(w["front_cycle"]["rps"], w["hits_cycle"]["rps"]),
        "front_hot_over_hits_rps": div(w["front_hot"]["rps"], w["hits"]["rps"]),
        "front_cycle_cpu_over_hits_cycle_cpu": div(
            w["front_cycle"]["cpu_us_per_req"], w["hits_cycle"]["cpu_us_per_req"]
        ),
    }


def front_note(repetitions):
    """What bounds the front's figures, from how busy the machine was during its runs."""
    busy = sorted(
        r["wrk"][n]["machine_cpu"]["machine_busy"]
        for r in repetitions
        for n in ("front_cycle", "front_hot")
    )
    if not busy:
        return None
    low, high = busy[0], busy[-1]
    if low >= 0.9:
        return (
            f"front figures are lower bounds: the machine was {low:.0%}-{high:.0%} busy during "
            "the front's runs (nginx, Redis and wrk share the two cores)"
        )
    return (
        f"the front's figures are those of wrk's closed loop (one thread, 16 connections, "
        f"kept alive), not the machine's limit: it was {low:.0%}-{high:.0%} busy during the "
        "front's runs (nginx, Redis and wrk on the two cores); each request waits for "
        "nginx's round trip to Redis"
    )
