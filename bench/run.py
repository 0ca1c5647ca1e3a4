"""crew7 benchmark: cache hits against the floor, the reference and the database.

``make bench`` (or ``BENCH_SCALE=small make bench`` for a quick run). Starts its own
PostgreSQL and Redis (tests/support/servers.py), migrates and seeds PostgreSQL, starts two
gunicorns with the production ``gunicorn.conf.py`` (sync workers, WEB_CONCURRENCY=2,
``CREW7_BENCH_ROUTES=true``), one with the cache and one with
``CREW7_METADATA_CACHE_ENABLED=false``, and drives them with ``wrk -t1`` on 127.0.0.1.

Every figure that is compared is a ratio of scenarios measured side by side in the same
repetition (the machine is shared and noisy); each ratio is reported as the median over
the repetitions with its min and max. See bench/README.md.

Environment (all optional):

    BENCH_SCALE          full (default) or small
    BENCH_REPS           repetitions (full 5, small 3; at least 3 is advised)
    BENCH_DURATION       seconds per wrk run (full 6, small 5)
    BENCH_CONNECTIONS    wrk connections (16)
    BENCH_RATE_FRACTION  fixed-rate load as a fraction of the same repetition's closed-loop
                         throughput (0.5)
    BENCH_MAX_MINUTES    stop starting repetitions after this long (full 22, small 10)
    BENCH_NOISY_OTHERS   a run during which processes the bench did not start used more
                         than this share of the machine's CPUs is measured again (0.25) ...
    BENCH_NOISY_RETRIES  ... at most this many times (1); the quietest attempt is kept
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LOGS,
    RESULTS,
    ROOT,
    CpuMeter,
    Gunicorn,
    Stack,
    app_env,
    env_number,
    flask_cli,
    log,
    machine_info,
    median,
    results_doc,
    run_seeding,
    stop_on_sigterm,
    utc_stamp,
    write_results,
    wrk,
    wrk_script,
)
from front_bench import Front, front_note, front_runs  # noqa: E402
from loadgen import run_fixed_rate, summarize_latencies  # noqa: E402

from crew7.services.cache import document_key  # noqa: E402
from tests.support.raw_http import request  # noqa: E402

SCALES = {
    "full": {
        "crews": 1000,
        "runs_per_crew": 1000,
        "history": [10, 1000, 10_000, 100_000],
        "total_crews": 10_000,
        "warm_limits": [10, 1000, 10_000],
        "reps": 5,
        "duration": 6.0,
        "max_minutes": 22.0,
    },
    "small": {
        "crews": 100,
        "runs_per_crew": 100,
        "history": [10, 1000, 10_000],
        "total_crews": 1000,
        "warm_limits": [10, 1000],
        "reps": 3,
        "duration": 5.0,
        "max_minutes": 10.0,
    },
}
BATCH_SIZE = 100
BURST_CONCURRENCY = 200
COLD_ROUNDS = 3  # cold batch against cold singles: rounds per repetition
WARM_TARGET_LIMIT = 10_000  # flask warm-cache --limit N: the judged N (full scale)
WARM_TARGET_SECONDS = 10.0

# name -> (comparison, target, description)
TARGETS = {
    "hit_over_baseline_rps": (">=", 0.65, "cache hit throughput / bare route throughput"),
    "hit_cpu_over_redis_get_cpu": (
        "<=",
        1.0,
        "server CPU per hit / per one-bare-GET request",
    ),
    "cold_batch_over_singles": (
        ">=",
        5.0,
        f"{BATCH_SIZE} cold crews: time of {BATCH_SIZE} sequential single misses / one batch",
    ),
    "hit_cpu_over_memoize_cpu": (
        None,
        None,
        "server CPU per hit / per Flask-Caching @memoize + jsonify request",
    ),
    "hit_over_memoize_rps": (None, None, "cache hit throughput / Flask-Caching @memoize route"),
    "hit_over_miss_rps": (None, None, "cache hit throughput / cache-off (database) throughput"),
    # Single hits are answered before Flask (the fast path); a batch (a query string) goes
    # through Flask: 20x, where 40x was set against hits that went through Flask too.
    "batch_over_single_docs": (
        ">=",
        20.0,
        "documents/s: batch of 100 / single-document hits",
    ),
    "miss_history_cost": (
        "<=",
        1.5,
        "time per miss: largest history / 10 runs (throughput 10 / largest)",
    ),
    "burst_computations": ("==", 1, "computations for 200 concurrent requests on a cold key"),
    "redis_get_over_baseline_rps": (None, None, "one bare Redis GET route / bare route"),
    "hit_over_redis_get_rps": (None, None, "cache hit throughput / one bare Redis GET route"),
    "miss_history_p50_ratio": (None, None, "p50 latency of a miss: largest history / 10 runs"),
    "front_cycle_over_hits_cycle_rps": (
        ">=",
        15.0,
        "throughput through the front (nginx + Lua) / straight to gunicorn, same crew cycle",
    ),
    "front_hot_over_hits_rps": (None, None, "front throughput on 10 hot crews / direct hits"),
    "front_cycle_cpu_over_hits_cycle_cpu": (
        None,
        None,
        "server CPU per request through the front (nginx + app) / direct (gunicorn)",
    ),
}
FRONT_STALE_TARGET = 0  # stale polls through the front after a rename and a privacy flip


# --------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------


def seed(stack, cfg):
    env = app_env(stack)
    wall, _, _ = flask_cli(env, "db", "upgrade")
    log(f"flask db upgrade: {wall:.1f} s")
    wall, out, _ = flask_cli(
        env,
        "seed-demo",
        "--users",
        "3",
        "--crews",
        str(cfg["crews"]),
        "--agents-per-crew",
        "3",
        "--runs-per-crew",
        str(cfg["runs_per_crew"]),
        "--private-every",
        "0",
    )
    demo = json.loads(out.strip().splitlines()[-1])
    log(f"seed-demo: {demo} ({wall:.1f} s)")
    history = run_seeding(
        env, "--owner", "bench-history", "--label", "history", "--runs", *map(str, cfg["history"])
    )
    log(
        f"history crews: {dict(zip(cfg['history'], history['crew_ids'], strict=True))} "
        f"({history['seconds']} s)"
    )
    filler_count = cfg["total_crews"] - cfg["crews"] - len(cfg["history"])
    filler = None
    if filler_count > 0:
        filler = run_seeding(
            env,
            "--owner",
            "bench-filler",
            "--label",
            "filler",
            "--crews",
            str(filler_count),
            "--runs-each",
            "5",
        )
        log(f"filler crews: {filler_count} x 5 runs ({filler['seconds']} s)")
    import psycopg

    with psycopg.connect(stack.pg.dsn) as conn:
        crew_ids = [
            r[0]
            for r in conn.execute(
                "SELECT c.id FROM crews c JOIN users u ON u.id = c.owner_id "
                "WHERE u.name LIKE 'demo-%' AND c.is_public ORDER BY c.id"
            )
        ]
        counts = dict(
            conn.execute(
                "SELECT 'crews', count(*) FROM crews UNION ALL SELECT 'runs', count(*) FROM runs "
                "UNION ALL SELECT 'agents', count(*) FROM agents"
            ).fetchall()
        )
        cycle_ids = [r[0] for r in conn.execute("SELECT id FROM crews WHERE is_public ORDER BY id")]
        stats_ok = conn.execute(
            "SELECT count(*) FROM crews c JOIN crew_stats s ON s.crew_id = c.id "
            "WHERE s.total_runs = (SELECT count(*) FROM runs r WHERE r.crew_id = c.id) "
            "AND c.id = ANY(%s)",
            (history["crew_ids"],),
        ).fetchone()[0]
    if stats_ok != len(history["crew_ids"]):
        raise RuntimeError("crew_stats of the history crews do not match their runs")
    return {
        "demo": demo,
        "main_crew_ids": crew_ids,
        "cycle_crew_ids": cycle_ids,
        "history": dict(zip(cfg["history"], history["crew_ids"], strict=True)),
        "filler_crews": filler_count if filler else 0,
        "totals": counts,
    }


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, stack, cfg, data, duration, connections, rate_fraction, noisy):
        import redis

        self.stack = stack
        self.cfg = cfg
        self.data = data
        self.duration = duration
        self.connections = connections
        self.rate_fraction = rate_fraction
        self.noisy_others, self.noisy_retries = noisy
        self.env = app_env(stack)
        self.redis = redis.Redis.from_url(stack.redis.url)
        self.hit_ids = data["main_crew_ids"]
        self.scripts = os.path.join(stack.tmpdir, "lua")
        os.makedirs(self.scripts, exist_ok=True)
        self.hits_srv_env = app_env(stack, BENCH_ROUTES=True, CACHE_TRACE=True)
        self.hits_srv = Gunicorn("cache-on", self.hits_srv_env, logdir=stack.tmpdir)
        self.front = None
        try:
            self.miss_srv = Gunicorn(
                "cache-off",
                app_env(stack, BENCH_ROUTES=True, METADATA_CACHE_ENABLED=False),
                logdir=stack.tmpdir,
            )
        except BaseException:
            self.hits_srv.stop()
            raise
        rng = random.Random(7)
        batches = []
        for _ in range(50):
            ids = rng.sample(self.hit_ids, min(BATCH_SIZE, len(self.hit_ids)))
            while len(ids) < BATCH_SIZE:
                ids.append(rng.choice(self.hit_ids))
            batches.append("/metadata/crews?ids=" + ",".join(map(str, ids)))
        s = self._script
        self.scenarios = {
            "baseline": (
                self.hits_srv,
                s("baseline", ["/bench/static"]),
                "/bench/static: fixed bytes, no cache, no database",
            ),
            "redis_get": (
                self.hits_srv,
                s("redis_get", [f"/bench/redis-get/{i}" for i in self.hit_ids]),
                f"/bench/redis-get/<id>: one bare Redis GET, {len(self.hit_ids)} crews",
            ),
            "hits": (
                self.hits_srv,
                s("hits", [f"/metadata/crew/{i}" for i in self.hit_ids]),
                f"/metadata/crew/<id>, cache on, all warm, {len(self.hit_ids)} crews",
            ),
            "memoize": (
                self.hits_srv,
                s("memoize", [f"/bench/memoize/{i}" for i in self.hit_ids]),
                f"/bench/memoize/<id>: Flask-Caching @memoize + jsonify, same Redis, all warm, "
                f"{len(self.hit_ids)} crews",
            ),
            "misses": (
                self.miss_srv,
                s("misses", [f"/metadata/crew/{i}" for i in self.hit_ids]),
                f"/metadata/crew/<id>, cache off (database), same {len(self.hit_ids)} crews",
            ),
            "batch": (
                self.hits_srv,
                s("batch", batches),
                f"/metadata/crews?ids=<{BATCH_SIZE} ids>, cache on, all warm",
            ),
        }
        for runs, crew_id in data["history"].items():
            self.scenarios[f"miss_history_{runs}"] = (
                self.miss_srv,
                s(f"miss_history_{runs}", [f"/metadata/crew/{crew_id}"]),
                f"/metadata/crew/{crew_id}, cache off, a crew with {runs:,} runs",
            )

    def _script(self, name, paths, cycle=False):
        return wrk_script(os.path.join(self.scripts, f"{name}.lua"), paths, cycle=cycle)

    def start_front(self):
        """The front (nginx + Lua) before hits_srv, reading the bench's Redis."""
        self.front = Front(self, self.data["cycle_crew_ids"])

    def close(self):
        if self.front is not None:
            try:
                self.front.close()
            except Exception as exc:
                log(f"stopping the front failed: {exc}")
        for srv in (self.hits_srv, self.miss_srv):
            try:
                srv.stop()
                srv.save_log(LOGS / f"bench-gunicorn-{srv.name}.log")
            except Exception as exc:
                log(f"stopping gunicorn {srv.name} failed: {exc}")
        self.redis.close()

    # -- cache state ----------------------------------------------------------------
    def keys_present(self):
        keys = [document_key("crew", i) for i in self.hit_ids]
        present = 0
        for start in range(0, len(keys), 1000):
            present += sum(v is not None for v in self.redis.mget(keys[start : start + 1000]))
        return present

    def warm(self):
        """Fill the hit set's documents through the app (batch route, read-through)."""
        for start in range(0, len(self.hit_ids), BATCH_SIZE):
            ids = ",".join(map(str, self.hit_ids[start : start + BATCH_SIZE]))
            path = f"/metadata/crews?ids={ids}"
            status, _, _ = request(self.hits_srv.port, "GET", path, timeout=60)
            if status != 200:
                raise RuntimeError(f"warming: HTTP {status}")
        present = self.keys_present()
        if present != len(self.hit_ids):
            raise RuntimeError(f"warming: only {present}/{len(self.hit_ids)} documents cached")
        return present

    def warm_memoize(self):
        """Fill the @memoize peer's entries (each built from the database on its miss)."""
        for crew_id in self.hit_ids:
            status, _, _ = request(self.hits_srv.port, "GET", f"/bench/memoize/{crew_id}")
            if status != 200:
                raise RuntimeError(f"warming /bench/memoize/{crew_id}: HTTP {status}")

    def redis_stats(self):
        info = self.redis.info("stats")
        return info.get("keyspace_hits", 0), info.get("keyspace_misses", 0)

    # -- noisy runs ------------------------------------------------------------------------
    def _quietest(self, name, measure):
        """Measure; while other processes took more than ``noisy_others`` of the machine,
        measure again (at most ``noisy_retries`` times) and keep the quietest attempt."""
        attempts = []
        for _ in range(1 + self.noisy_retries):
            res = measure()
            attempts.append(res)
            others = res["machine_cpu"]["others"]
            if others <= self.noisy_others:
                break
            if len(attempts) <= self.noisy_retries:
                log(
                    f"  {name}: other processes used {others:.0%} of the machine "
                    f"(> {self.noisy_others:.0%}): measuring again"
                )
        best = dict(min(attempts, key=lambda r: r["machine_cpu"]["others"]))
        best["attempts"] = [
            {
                "rps": a.get("rps", a.get("achieved_rps")),
                "p99_ms": a["p99_ms"],
                "others": a["machine_cpu"]["others"],
            }
            for a in attempts
        ]
        return best

    def run_wrk(self, name):
        return self._quietest(name, lambda: self._run_wrk_once(name))

    def run_fixed(self, name, rate):
        return self._quietest(f"fixed {name}", lambda: self._run_fixed_once(name, rate))

    # -- one closed-loop wrk run ---------------------------------------------------------
    def _run_wrk_once(self, name):
        srv, script, _ = self.scenarios[name]
        path = "/"  # the Lua script picks the paths
        if name in ("redis_get", "hits", "batch"):
            present = self.keys_present()
            if present != len(self.hit_ids):
                log(f"  {present}/{len(self.hit_ids)} documents cached: warming again")
                self.warm()
        if name == "memoize":
            self.warm_memoize()
        time.sleep(0.3)
        pids_before = srv.worker_pids()
        cpu0 = srv.cpu_snapshot()
        ks0 = self.redis_stats()
        log0 = srv.log_size()
        meter = CpuMeter()
        result = wrk(srv.url + path, script, self.duration, self.connections)
        cpu1 = srv.cpu_snapshot()
        result["machine_cpu"] = meter.read()
        ks1 = self.redis_stats()
        per_worker = {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1}
        cpu = sum(per_worker.values())
        requests = max(result["requests"], 1)
        result["server_cpu_s"] = round(cpu, 3)
        result["cpu_us_per_req"] = cpu / requests * 1e6
        result["worker_cpu_shares"] = [
            round(v / cpu, 3) if cpu else None for v in per_worker.values()
        ]
        result["workers_changed"] = sorted(pids_before) != sorted(cpu1)
        result["redis_keyspace_hits"] = ks1[0] - ks0[0]
        result["redis_keyspace_misses"] = ks1[1] - ks0[1]
        if srv is self.hits_srv:
            text = srv.log_since(log0)
            result["computations"] = len(re.findall(r"cache compute key=", text))
        return result

    # -- one open-loop fixed-rate run ------------------------------------------------
    def _run_fixed_once(self, name, rate):
        srv, _, _ = self.scenarios[name]
        if name == "baseline":
            paths = ["/bench/static"]
        else:
            paths = [f"/metadata/crew/{i}" for i in self.hit_ids]
        rng = random.Random(11)
        picks = [rng.choice(paths) for _ in range(4096)]

        def next_request(i):
            return name, picks[i % len(picks)]

        time.sleep(0.3)
        cpu0 = srv.cpu_snapshot()
        meter = CpuMeter()
        res = run_fixed_rate(srv.port, rate, self.duration, next_request, timeout=5.0)
        cpu1 = srv.cpu_snapshot()
        machine_cpu = meter.read()
        cpu = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1)
        out = summarize_latencies(res.records)
        out.update(
            {
                "rate": round(rate, 1),
                "achieved_rps": round(len(res.records) / self.duration, 1),
                "dropped": res.dropped,
                "max_send_lag_ms": round(res.max_send_lag_s * 1000, 2),
                "client_cpu_share": round(res.client_cpu_s / res.wall_s, 3),
                "client_cpu_us_per_req": round(
                    res.client_cpu_s / max(len(res.records), 1) * 1e6, 1
                ),
                "cpu_us_per_req": round(cpu / max(len(res.records), 1) * 1e6, 1),
                "machine_cpu": machine_cpu,
            }
        )
        return out

    # -- cold-key burst --------------------------------------------------------------
    def burst(self, crew_id):
        flask_cli(self.env, "cache-clear", "--crew", str(crew_id), timeout=120)
        if self.redis.exists(document_key("crew", crew_id)):
            raise RuntimeError(f"crew {crew_id} still cached after cache-clear")
        port = self.hits_srv.port
        path = f"/metadata/crew/{crew_id}"
        barrier = threading.Barrier(BURST_CONCURRENCY)

        def one(_):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            try:
                conn.connect()
                barrier.wait(timeout=30)
                started = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                return resp.status, body, time.perf_counter() - started
            except Exception as exc:
                return 0, type(exc).__name__.encode(), 0.0
            finally:
                conn.close()

        offset = self.hits_srv.log_size()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=BURST_CONCURRENCY) as pool:
            results = list(pool.map(one, range(BURST_CONCURRENCY)))
        wall = time.perf_counter() - started
        time.sleep(0.5)  # let the workers' log lines land
        text = self.hits_srv.log_since(offset)
        key_re = rf"cache compute key=\S*{re.escape(document_key('crew', crew_id))}(?![\d:])"
        statuses = {}
        for status, _, _ in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        lat = sorted(r[2] * 1000 for r in results if r[0])
        return {
            "crew_id": crew_id,
            "requests": BURST_CONCURRENCY,
            "computations": len(re.findall(key_re, text)),
            "unkeyed_computations": len(re.findall(r"cache compute key=None", text)),
            "statuses": statuses,
            "distinct_bodies": len({r[1] for r in results if r[0] == 200}),
            "wall_s": round(wall, 3),
            "p50_ms": round(statistics.median(lat), 1) if lat else None,
            "max_ms": round(lat[-1], 1) if lat else None,
        }

    # -- a batch of cold crews against as many cold single requests -------------------
    def cold_batch(self, crew_ids):
        """``/metadata/crews?ids=<crew_ids>`` against one ``/metadata/crew/<id>`` after the
        other for the same crews, each measurement on cold keys (deleted just before), over
        ``COLD_ROUNDS`` rounds with the order alternated. Client wall time; every crew must
        be computed once per measurement (the trace lines say so) and answered 200."""
        keys = [document_key("crew", i) for i in crew_ids]
        port = self.hits_srv.port
        batch_path = "/metadata/crews?ids=" + ",".join(map(str, crew_ids))
        singles = [f"/metadata/crew/{i}" for i in crew_ids]
        rounds = []
        for k in range(COLD_ROUNDS):
            row = {}
            for kind in ("batch", "singles") if k % 2 == 0 else ("singles", "batch"):
                self.redis.delete(*keys)
                offset = self.hits_srv.log_size()
                started = time.perf_counter()
                if kind == "batch":
                    statuses = [request(port, "GET", batch_path, timeout=60)[0]]
                else:
                    statuses = [request(port, "GET", p, timeout=30)[0] for p in singles]
                row[f"{kind}_s"] = round(time.perf_counter() - started, 4)
                time.sleep(0.3)  # let the workers' trace lines land
                row[f"{kind}_computations"] = len(
                    re.findall(r"cache compute key=", self.hits_srv.log_since(offset))
                )
                if set(statuses) != {200}:
                    raise RuntimeError(f"cold {kind}: HTTP statuses {sorted(set(statuses))}")
            row["ratio"] = row["singles_s"] / row["batch_s"]
            rounds.append(row)
        return {
            "crews": len(crew_ids),
            "rounds": rounds,
            "ratio": median([r["ratio"] for r in rounds]),
            "batch_ms": round(median([r["batch_s"] for r in rounds]) * 1000, 1),
            "singles_ms": round(median([r["singles_s"] for r in rounds]) * 1000, 1),
        }

    # -- flask warm-cache ------------------------------------------------------------
    def warm_cache(self, limit):
        flask_cli(self.env, "cache-clear", "--all", timeout=600)
        wall, out, err = flask_cli(self.env, "warm-cache", "--limit", str(limit), timeout=1200)
        took = re.search(r"took ([0-9.]+) s", err)
        summary = re.search(r"Cache warming complete: (.*)", out)
        crews = None
        if summary:
            # "stored 23 (agent 10, crew 5, ...); present 0; refused 0": crews stored or present
            found = re.findall(r"(?:stored|present) \d+ \(([^)]*)\)", summary.group(1))
            crews = sum(int(n) for part in found for n in re.findall(r"\bcrew (\d+)", part))
        return {
            "limit": limit,
            "crews_warmed": crews,
            "summary": summary.group(1) if summary else out.strip()[-300:],
            "seconds": float(took.group(1)) if took else None,
            "wall_s": round(wall, 3),
        }


# --------------------------------------------------------------------------
# One repetition
# --------------------------------------------------------------------------


def repetition(bench, rep, burst_crew):
    out = {"rep": rep, "started": utc_stamp(), "wrk": {}, "fixed_rate": {}}
    bench.warm()
    names = list(bench.scenarios)
    if rep % 2:
        names.reverse()  # ABBA: drifts of a noisy machine do not favour one side
    for name in names:
        res = bench.run_wrk(name)
        out["wrk"][name] = res
        log(
            f"  rep {rep} {name:18s} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:7.2f} ms  "
            f"p99 {res['p99_ms']:7.2f} ms  cpu {res['cpu_us_per_req']:7.0f} us/req  "
            f"others {res['machine_cpu']['others']:.0%}"
            + (f"  non-2xx {res['non_2xx_3xx']}" if res["non_2xx_3xx"] else "")
            + (f"  socket errors {res['socket_errors']}" if res["socket_errors"] else "")
        )
    w = out["wrk"]
    # Below saturation for both: a fraction of the slower one's throughput (the hits').
    rate_fast = bench.rate_fraction * min(w["baseline"]["rps"], w["hits"]["rps"])
    rate_miss = bench.rate_fraction * w["misses"]["rps"]
    fixed = [("baseline", rate_fast), ("hits", rate_fast), ("misses", rate_miss)]
    if rep % 2:
        fixed.reverse()
    for name, rate in fixed:
        res = bench.run_fixed(name, rate)
        out["fixed_rate"][name] = res
        log(
            f"  rep {rep} fixed {name:10s} {rate:7.0f} req/s  p50 {res['p50_ms']} ms  "
            f"p99 {res['p99_ms']} ms  errors {res['errors'] + res['non_2xx_3xx']}  "
            f"client cpu {res['client_cpu_share']:.0%}"
        )
    out["burst"] = bench.burst(burst_crew)
    b = out["burst"]
    log(
        f"  rep {rep} burst crew {burst_crew}: {b['computations']} computation(s), "
        f"statuses {b['statuses']}, {b['distinct_bodies']} distinct bodies, {b['wall_s']} s"
    )
    out["cold_batch"] = c = bench.cold_batch(bench.hit_ids[:BATCH_SIZE])
    log(
        f"  rep {rep} cold batch of {c['crews']}: {c['batch_ms']} ms, singles {c['singles_ms']} "
        f"ms, ratio {c['ratio']:.2f}"
    )
    out["front"] = front_scenarios(bench, rep, out)
    out["ratios"] = ratios(out, bench.data["history"])
    log(
        f"  rep {rep} ratios: "
        + ", ".join(f"{k}={v:.3g}" for k, v in out["ratios"].items() if v is not None)
    )
    return out


def front_scenarios(bench, rep, out):
    """Hits through a front that reads Redis itself (nginx + Lua, bench/front_bench.py),
    against the direct hit in the same repetition: on a cycle of every public crew
    (10,000 at full scale) and on 10 hot crews. Its wrk runs go into ``out['wrk']`` beside
    ``hits``; its ratios are returned, and ``ratios()`` reports them."""
    if bench.front is None:
        bench.start_front()
    return front_runs(bench.front, rep, out)


def ratios(rep, history):
    w = rep["wrk"]
    largest = max(history)
    smallest = min(history)

    def div(a, b):
        return a / b if b else None

    return {
        "hit_over_baseline_rps": div(w["hits"]["rps"], w["baseline"]["rps"]),
        "hit_cpu_over_redis_get_cpu": div(
            w["hits"]["cpu_us_per_req"], w["redis_get"]["cpu_us_per_req"]
        ),
        "hit_over_miss_rps": div(w["hits"]["rps"], w["misses"]["rps"]),
        "batch_over_single_docs": div(w["batch"]["rps"] * BATCH_SIZE, w["hits"]["rps"]),
        "miss_history_cost": div(
            w[f"miss_history_{smallest}"]["rps"], w[f"miss_history_{largest}"]["rps"]
        ),
        "miss_history_p50_ratio": div(
            w[f"miss_history_{largest}"]["p50_ms"], w[f"miss_history_{smallest}"]["p50_ms"]
        ),
        "burst_computations": rep["burst"]["computations"],
        "redis_get_over_baseline_rps": div(w["redis_get"]["rps"], w["baseline"]["rps"]),
        "hit_over_redis_get_rps": div(w["hits"]["rps"], w["redis_get"]["rps"]),
        "cold_batch_over_singles": rep["cold_batch"]["ratio"],
        "hit_cpu_over_memoize_cpu": div(
            w["hits"]["cpu_us_per_req"], w["memoize"]["cpu_us_per_req"]
        ),
        "hit_over_memoize_rps": div(w["hits"]["rps"], w["memoize"]["rps"]),
        **rep.get("front", {}),
    }


# --------------------------------------------------------------------------
# Summaries and reports
# --------------------------------------------------------------------------


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def verdict(name, stats):
    cmp, target, _ = TARGETS.get(name, (None, None, None))
    if cmp is None or stats is None:
        return None
    if name == "burst_computations":
        # Every repetition must compute exactly once.
        return "PASS" if stats["min"] == target and stats["max"] == target else "FAIL"
    value = stats["median"]
    ok = value >= target if cmp == ">=" else value <= target if cmp == "<=" else value == target
    return "PASS" if ok else "FAIL"


def summarize(reps):
    summary = {"wrk": {}, "fixed_rate": {}, "ratios": {}, "burst": {}}
    for name in reps[0]["wrk"]:
        summary["wrk"][name] = {
            metric: spread([r["wrk"][name][metric] for r in reps])
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")
        }
        summary["wrk"][name]["others_cpu"] = spread(
            [r["wrk"][name]["machine_cpu"]["others"] for r in reps]
        )
    for name in reps[0]["fixed_rate"]:
        summary["fixed_rate"][name] = {
            metric: spread([r["fixed_rate"][name][metric] for r in reps])
            for metric in ("rate", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "client_cpu_share")
        }
        summary["fixed_rate"][name]["others_cpu"] = spread(
            [r["fixed_rate"][name]["machine_cpu"]["others"] for r in reps]
        )
        summary["fixed_rate"][name]["errors_total"] = sum(
            r["fixed_rate"][name]["errors"] + r["fixed_rate"][name]["non_2xx_3xx"] for r in reps
        )
    for name in reps[0]["ratios"]:
        stats = spread([r["ratios"][name] for r in reps])
        cmp, target, what = TARGETS.get(name, (None, None, ""))
        summary["ratios"][name] = {
            **(stats or {}),
            "target": None if cmp is None else f"{cmp} {target}",
            "verdict": verdict(name, stats),
            "what": what,
        }
    summary["burst"] = {
        "computations": [r["burst"]["computations"] for r in reps],
        "non_200": sum(n for r in reps for s, n in r["burst"]["statuses"].items() if s != "200"),
    }
    return summary


def fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_spread(stats, digits=3):
    if not stats:
        return "-"
    low, high = fmt(stats["min"], digits), fmt(stats["max"], digits)
    return f"{fmt(stats['median'], digits)} [{low}-{high}]"


def _all_runs(doc):
    for r in doc["repetitions"]:
        yield from r["wrk"].values()
        yield from r["fixed_rate"].values()


def _runs(doc):
    return sum(1 for _ in _all_runs(doc))


def _retried(doc):
    return sum(1 for x in _all_runs(doc) if len(x.get("attempts", ())) > 1)


def pct(stats):
    if not stats:
        return "-"
    return f"{stats['median']:.0%} [{stats['min']:.0%}-{stats['max']:.0%}]"


def write_markdown(path, doc):
    s = doc["summary"]
    cfg = doc["config"]
    m = doc["machine"]
    lines = [
        f"# crew7 bench: {doc['started']} UTC, scale `{cfg['scale']}`",
        "",
        f"{cfg['reps_done']} repetitions; medians [min-max] over repetitions. Every ratio is "
        "computed within one repetition (scenarios run back to back, order reversed every "
        "other repetition), then summarised. Raw data: "
        f"`{os.path.basename(doc['json_file'])}`.",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs, load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg'])} (shared: other work runs beside it); "
        f"Python {m['python']}, {m['redis_server'] or 'redis ?'}, {m.get('postgres') or ''}, "
        f"{m['wrk']}.",
        f"Servers: gunicorn `gunicorn.conf.py` (sync, WEB_CONCURRENCY=2, access log on as in "
        f"production), PostgreSQL and Redis on 127.0.0.1. Load: `wrk -t1 -c{cfg['connections']} "
        f"-d{cfg['duration']:g}s`.",
        "`other load`: the share of the machine's CPUs used by processes this bench did not "
        "start, during the run (medians [min-max]); the higher it is, the noisier the "
        "absolute figures, which is why only paired ratios are compared. A run during which "
        f"it exceeded {cfg['noisy_others']:.0%} was measured again (at most "
        f"{cfg['noisy_retries']} time(s)) and the quieter attempt kept: "
        f"{_retried(doc)} of {_runs(doc)} runs were.",
        f"Data: {fmt(doc['data']['totals'].get('crews'))} crews, "
        f"{fmt(doc['data']['totals'].get('runs'))} runs; hit set {cfg['hit_set']} crews with "
        f"{cfg['runs_per_crew']:,} runs each.",
        "",
        "## Targets",
        "",
        "Medians of paired ratios (one per repetition); `flask warm-cache` is a wall time.",
        "",
        *target_lines(doc),
        "",
        "## Ratios against targets",
        "",
        "| ratio | what | median [min-max] | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, r in s["ratios"].items():
        if name == "miss_history_cost":
            label = f"miss_history_cost ({cfg['history_largest']:,} / {cfg['history_smallest']})"
        else:
            label = name
        lines.append(
            f"| {label} | {r['what']} | {fmt_spread(r)} | {r['target'] or '-'} | "
            f"{r['verdict'] or '-'} |"
        )
    pairs = {
        "hit_over_baseline_rps": ("hits", "baseline"),
        "hit_cpu_over_redis_get_cpu": ("hits", "redis_get"),
        "hit_cpu_over_memoize_cpu": ("hits", "memoize"),
        "batch_over_single_docs": ("batch", "hits"),
        "front_cycle_over_hits_cycle_rps": ("front_cycle", "hits_cycle"),
        "miss_history_cost": (
            f"miss_history_{cfg['history_smallest']}",
            f"miss_history_{cfg['history_largest']}",
        ),
    }
    lines += [
        "",
        "Per repetition (other load during the two runs of the pair, in parentheses: a pair "
        "measured under very different load is less comparable):",
        "",
        "| rep | " + " | ".join(pairs) + " |",
        "|---|" + "---|" * len(pairs),
    ]
    for r in doc["repetitions"]:
        cells = []
        for name, (a, b) in pairs.items():
            oa = r["wrk"][a]["machine_cpu"]["others"]
            ob = r["wrk"][b]["machine_cpu"]["others"]
            cells.append(f"{fmt(r['ratios'][name])} ({oa:.0%} / {ob:.0%})")
        lines.append(f"| {r['rep']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Closed loop (wrk)",
        "",
        "| scenario | what | req/s | p50 ms | p99 ms | server CPU µs/req | other load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stats in s["wrk"].items():
        lines.append(
            f"| {name} | {doc['scenarios'][name]} | {fmt_spread(stats['rps'])} | "
            f"{fmt_spread(stats['p50_ms'])} | {fmt_spread(stats['p99_ms'])} | "
            f"{fmt_spread(stats['cpu_us_per_req'])} | {pct(stats['others_cpu'])} |"
        )
    errors = [
        f"{r['rep']}:{n}:{w['non_2xx_3xx']}+{w['socket_errors']}"
        for r in doc["repetitions"]
        for n, w in r["wrk"].items()
        if w["non_2xx_3xx"] or w["socket_errors"]
    ]
    lines.append("")
    lines.append(
        "Non-2xx or socket errors in wrk runs: "
        + (", ".join(errors) if errors else "none")
        + ". Computations on the cache-on server during `hits`/`redis_get`/`batch` runs: "
        + ", ".join(
            f"{n} {sum(r['wrk'][n].get('computations', 0) for r in doc['repetitions'])}"
            for n in ("hits", "redis_get", "batch", "hits_cycle", "front_cycle", "front_hot")
            if n in s["wrk"]
        )
        + " (0 means every request was a hit)."
    )
    lines += front_markdown(doc)
    lines += [
        "",
        f"## Fixed rate, open loop ({cfg['rate_fraction']:g} x closed-loop throughput of the "
        "same repetition)",
        "",
        "Latency from each request's scheduled send time (coordinated omission counted). "
        "`baseline` and `hits` run at the same rate, a fraction of the lower of their two "
        "closed-loop throughputs (the hits'), so both are below saturation; `misses` at the "
        "same fraction of the cache-off throughput. The Python generator shares the two "
        "cores with the servers (its CPU share is in the last column).",
        "",
        "| scenario | rate req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | client CPU | "
        "other load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, stats in s["fixed_rate"].items():
        lines.append(
            f"| {name} | {fmt_spread(stats['rate'])} | {fmt_spread(stats['p50_ms'])} | "
            f"{fmt_spread(stats['p90_ms'])} | {fmt_spread(stats['p99_ms'])} | "
            f"{fmt_spread(stats['p99.9_ms'])} | {stats['errors_total']} | "
            f"{fmt(stats['client_cpu_share']['median'] * 100, 2)}% | "
            f"{pct(stats['others_cpu'])} |"
        )
    lines += [
        "",
        "## Miss cost against history length (cache off, one crew per run)",
        "",
        "| runs in history | crew | req/s | p50 ms | p99 ms | CPU µs/req |",
        "|---|---|---|---|---|---|",
    ]
    for runs, crew_id in doc["data"]["history"].items():
        stats = s["wrk"][f"miss_history_{runs}"]
        lines.append(
            f"| {int(runs):,} | {crew_id} | {fmt_spread(stats['rps'])} | "
            f"{fmt_spread(stats['p50_ms'])} | {fmt_spread(stats['p99_ms'])} | "
            f"{fmt_spread(stats['cpu_us_per_req'])} |"
        )
    lines += [
        "",
        f"## Cold-key burst ({BURST_CONCURRENCY} concurrent requests, one cold crew)",
        "",
        "| rep | crew | computations | statuses | distinct bodies | wall s | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["repetitions"]:
        b = r["burst"]
        lines.append(
            f"| {r['rep']} | {b['crew_id']} | {b['computations']}"
            + (f" (+{b['unkeyed_computations']} unkeyed)" if b["unkeyed_computations"] else "")
            + f" | {b['statuses']} | {b['distinct_bodies']} | {b['wall_s']} | {b['max_ms']} |"
        )
    lines += [
        "",
        f"## A batch of {BATCH_SIZE} cold crews against {BATCH_SIZE} single misses",
        "",
        f"The same {BATCH_SIZE} crews, their documents deleted from Redis before each "
        f"measurement: one `/metadata/crews?ids=<{BATCH_SIZE} ids>` against "
        f"{BATCH_SIZE} sequential `/metadata/crew/<id>` (client wall time, one connection "
        f"per request), {COLD_ROUNDS} rounds per repetition in alternating order; the "
        "ratio is singles / batch, the median over the rounds. `computations` counts the "
        "documents built (trace lines): every crew once per measurement means every "
        "measurement was cold.",
        "",
        "| rep | batch ms | singles ms | singles / batch | computations batch / singles |",
        "|---|---|---|---|---|",
    ]
    for r in doc["repetitions"]:
        c = r["cold_batch"]
        comps = ", ".join(
            f"{x['batch_computations']}/{x['singles_computations']}" for x in c["rounds"]
        )
        lines.append(
            f"| {r['rep']} | {c['batch_ms']} | {c['singles_ms']} | {fmt(c['ratio'])} | {comps} |"
        )
    lines += [
        "",
        "## `flask warm-cache --limit N` (after `flask cache-clear --all`)",
        "",
        "| limit | crews warmed | seconds (command's own timer) | ms per crew | wall s with "
        "start-up |",
        "|---|---|---|---|---|",
    ]
    for limit, runs in doc["warm_cache"].items():
        secs = spread([x["seconds"] for x in runs])
        crews = runs[0]["crews_warmed"]
        per = secs["median"] * 1000 / crews if secs and crews else None
        lines.append(
            f"| {int(limit):,} | {fmt(crews)} | {fmt_spread(secs)} | {fmt(per)} | "
            f"{fmt_spread(spread([x['wall_s'] for x in runs]))} |"
        )
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def front_markdown(doc):
    """The front's section: CPU per request by process, hits it counted, staleness."""
    s = doc["summary"]["wrk"]
    names = [n for n in ("hits", "hits_cycle", "front_cycle", "front_hot") if n in s]
    if "front_cycle" not in s:
        return []
    reps = doc["repetitions"]

    def per(name, metric):
        return fmt_spread(spread([r["wrk"][name].get(metric) for r in reps]))

    def busy(name):
        return pct(spread([r["wrk"][name]["machine_cpu"]["machine_busy"] for r in reps]))

    lines = [
        "",
        "## The front (nginx + Lua reading Redis) against the direct hit",
        "",
        "The front rendered by `flask nginx-config` (2 nginx workers, the per-client rate "
        "limit raised for the load generator) in front of the cache-on gunicorn, reading the "
        "same Redis. CPU per request of each process group, medians [min-max]; "
        "`machine busy`: the share of the two cores in use during the run (a front below "
        "100% is held by wrk's closed loop of 16 connections, not by the CPUs).",
        "",
        "| scenario | req/s | p99 ms | nginx µs/req | gunicorn µs/req | Redis µs/req | "
        "front hits counted / requests | computed | machine busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        counted = sum(r["wrk"][name].get("front_hits", 0) for r in reps)
        total = sum(r["wrk"][name]["requests"] for r in reps)
        computed = sum(r["wrk"][name].get("computations", 0) for r in reps)
        nginx = per(name, "nginx_cpu_us_per_req") if name.startswith("front") else "-"
        app = per(name, "app_cpu_us_per_req" if name != "hits" else "cpu_us_per_req")
        lines.append(
            f"| {name} | {fmt_spread(s[name]['rps'])} | {fmt_spread(s[name]['p99_ms'])} | "
            f"{nginx} | {app} | "
            f"{per(name, 'redis_cpu_us_per_req') if name != 'hits' else '-'} | "
            f"{fmt(counted)} / {fmt(total)} | {fmt(computed)} | {busy(name)} |"
        )
    st = doc.get("front_staleness")
    if st:
        lines += [
            "",
            f"Staleness through the front (crew {st['crew_id']}): each change written to the "
            f"app (200), then {st['steps'][0]['polls']} polls through the front every "
            f"{st['interval_s']:g} s, the first right after the write.",
            "",
            "| after | polls | stale | first poll (s after the write): status |",
            "|---|---|---|---|",
        ]
        for step in st["steps"]:
            t, status = step["rows"][0][0], step["rows"][0][1]
            lines.append(
                f"| {step['title']} | {step['polls']} | {step['stale']} | {t:.3f}: {status} |"
            )
    return lines


def warm_cache_verdict(warm):
    """The judged ``flask warm-cache`` run: the largest limit timed (10,000 at full
    scale), its median seconds, and PASS/FAIL against WARM_TARGET_SECONDS."""
    if not warm:
        return None
    limit = max(warm, key=int)
    seconds = [x["seconds"] for x in warm[limit] if x["seconds"] is not None]
    if not seconds:
        return {"limit": int(limit), "seconds": None, "verdict": "FAIL"}
    value = median(seconds)
    return {
        "limit": int(limit),
        "crews_warmed": warm[limit][0]["crews_warmed"],
        "seconds": value,
        "verdict": "PASS" if value < WARM_TARGET_SECONDS else "FAIL",
    }


def target_lines(doc):
    """One ``PASS``/``FAIL`` line per target the job is judged on."""
    s = doc["summary"]["ratios"]
    lines = []
    for name, label in (
        ("hit_cpu_over_redis_get_cpu", "hit CPU per request / plain-GET route's"),
        (
            "front_cycle_over_hits_cycle_rps",
            "throughput through the front / straight to gunicorn, same crew cycle",
        ),
        ("cold_batch_over_singles", f"{BATCH_SIZE} cold single misses / one cold batch"),
        ("burst_computations", f"computations for {BURST_CONCURRENCY} concurrent cold requests"),
    ):
        r = s.get(name)
        if r and r.get("verdict"):
            lines.append(f"- **{r['verdict']}** {label}: {fmt_spread(r)} (target {r['target']})")
    st = doc.get("front_staleness")
    if st:
        verdict = "PASS" if st["stale"] <= FRONT_STALE_TARGET else "FAIL"
        lines.append(
            f"- **{verdict}** stale reads through the front after a rename, a privacy flip "
            f"and back: {st['stale']} of {st['polls']} polls (target {FRONT_STALE_TARGET})"
        )
    w = doc.get("warm_cache_target")
    if w:
        note = "" if w["limit"] >= WARM_TARGET_LIMIT else " (this scale's largest limit)"
        lines.append(
            f"- **{w['verdict']}** `flask warm-cache --limit {w['limit']:,}`{note}: "
            f"{fmt(w['seconds'])} s, {fmt(w.get('crews_warmed'))} crews "
            f"(target < {WARM_TARGET_SECONDS:g} s)"
        )
    return lines


def write_png(path, doc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = doc["summary"]
    names = list(s["wrk"])
    meds = [s["wrk"][n]["rps"]["median"] for n in names]
    lows = [m - s["wrk"][n]["rps"]["min"] for n, m in zip(names, meds, strict=True)]
    highs = [s["wrk"][n]["rps"]["max"] - m for n, m in zip(names, meds, strict=True)]
    judged = [n for n, r in s["ratios"].items() if r.get("target")]
    fig = plt.figure(figsize=(14, 8.5))
    grid = fig.add_gridspec(2, len(judged))
    ax = fig.add_subplot(grid[0, :])
    palette = {"baseline": "#888888", "redis_get": "#4c72b0", "hits": "#55a868"}
    palette.update({"memoize": "#8172b2", "misses": "#c44e52", "hits_cycle": "#55a868"})
    palette.update({"front_cycle": "#2a9d8f", "front_hot": "#2a9d8f"})
    colors = [palette.get(n, "#dd8452") for n in names]
    ax.bar(names, meds, yerr=[lows, highs], capsize=4, color=colors)
    # The front serves tens of times the direct hit's throughput, the database a tenth.
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (median, min-max; log scale)")
    ax.set_title(
        f"crew7 bench {doc['started']} UTC, scale {doc['config']['scale']}, "
        f"{doc['config']['reps_done']} repetitions (wrk -t1 -c{doc['config']['connections']})"
    )
    ax.tick_params(axis="x", labelrotation=20)
    for n, m in zip(names, meds, strict=True):
        ax.annotate(
            f"{m:,.0f}",
            (n, m),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            fontweight="bold",
        )
    for k, name in enumerate(judged):
        r = s["ratios"][name]
        axr = fig.add_subplot(grid[1, k])
        values = [rep["ratios"][name] for rep in doc["repetitions"]]
        axr.scatter(range(len(values)), values, color="#4c72b0", zorder=3, label="repetitions")
        axr.axhline(r["median"], color="#4c72b0", linestyle="-", linewidth=1, label="median")
        target = float(r["target"].split()[1])
        axr.axhline(target, color="#c44e52", linestyle="--", linewidth=1.2, label="target")
        axr.set_title(f"{name}\n{r['target']}: {r['verdict']}", fontsize=8)
        axr.set_xticks([])
        axr.set_xlim(-0.5, len(values) - 0.5)
        lo = min(values + [target])
        hi = max(values + [target])
        pad = (hi - lo) * 0.25 or max(abs(hi) * 0.1, 0.5)
        axr.set_ylim(lo - pad, hi + pad)
        if k == 0:
            axr.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main():
    scale = os.environ.get("BENCH_SCALE", "full").strip() or "full"
    if scale not in SCALES:
        sys.exit(f"BENCH_SCALE must be one of {', '.join(SCALES)}, not {scale!r}")
    cfg = dict(SCALES[scale])
    reps = env_number("BENCH_REPS", cfg["reps"], int)
    duration = env_number("BENCH_DURATION", cfg["duration"])
    connections = env_number("BENCH_CONNECTIONS", 16, int)
    rate_fraction = env_number("BENCH_RATE_FRACTION", 0.5)
    max_minutes = env_number("BENCH_MAX_MINUTES", cfg["max_minutes"])
    noisy_others = env_number("BENCH_NOISY_OTHERS", 0.25)
    noisy_retries = env_number("BENCH_NOISY_RETRIES", 1, int)
    stop_on_sigterm()
    started_at = utc_stamp()
    t_start = time.monotonic()
    notes = []
    log(f"crew7 bench, scale {scale}: {reps} repetitions of {duration:g} s runs")
    stack = Stack()
    bench = None
    try:
        stack.start()
        machine = machine_info(stack)
        data = seed(stack, cfg)
        noisy = (noisy_others, noisy_retries)
        bench = Bench(stack, cfg, data, duration, connections, rate_fraction, noisy)
        log(f"warmed {bench.warm()} documents")
        repetitions = []
        main_ids = data["main_crew_ids"]
        for rep in range(reps):
            elapsed = (time.monotonic() - t_start) / 60
            if rep >= 3 and elapsed > max_minutes:
                notes.append(
                    f"stopped after {rep} repetitions: {elapsed:.1f} min > "
                    f"BENCH_MAX_MINUTES={max_minutes:g}"
                )
                log(notes[-1])
                break
            log(f"repetition {rep + 1}/{reps}")
            repetitions.append(repetition(bench, rep, main_ids[-1 - rep]))
        log("staleness through the front")
        front_staleness = bench.front.staleness()
        cycle_n = len(data["cycle_crew_ids"])
        notes.append(front_note(repetitions))
        if cycle_n < 10_000:
            notes.append(
                f"scale {scale}: the crew cycle (hits_cycle, front_cycle) is every public crew "
                f"there is, {cycle_n:,}, not 10,000"
            )
        warm = {}
        for limit in cfg["warm_limits"]:
            times = 1 if limit >= 10_000 else 3
            warm[str(limit)] = []
            for _ in range(times):
                res = bench.warm_cache(limit)
                warm[str(limit)].append(res)
                log(
                    f"warm-cache --limit {limit}: {res['crews_warmed']} crews in "
                    f"{res['seconds']} s (wall {res['wall_s']} s)"
                )
            if warm[str(limit)][0]["crews_warmed"] not in (None, limit):
                notes.append(
                    f"warm-cache --limit {limit} warmed {warm[str(limit)][0]['crews_warmed']} "
                    "crews: fewer public crews exist"
                )
        if scale == "small":
            notes.append(
                "small scale: the largest history is "
                f"{max(cfg['history']):,} runs, so miss_history_cost is "
                f"miss({max(cfg['history']):,})/miss(10), not miss(100,000)/miss(10); "
                "warm-cache is timed up to 1,000 crews"
            )
        summary = summarize(repetitions)
        machine["loadavg_end"] = list(os.getloadavg())
        json_file, doc = results_doc(
            "",
            started_at,
            t_start,
            config={
                "scale": scale,
                "reps": reps,
                "reps_done": len(repetitions),
                "duration": duration,
                "connections": connections,
                "rate_fraction": rate_fraction,
                "noisy_others": noisy_others,
                "noisy_retries": noisy_retries,
                "hit_set": len(main_ids),
                "runs_per_crew": cfg["runs_per_crew"],
                "history_largest": max(cfg["history"]),
                "history_smallest": min(cfg["history"]),
                "workers": 2,
                "worker_class": "sync",
                "burst_concurrency": BURST_CONCURRENCY,
                "batch_size": BATCH_SIZE,
            },
            machine=machine,
            data={
                **{k: v for k, v in data.items() if not k.endswith("crew_ids")},
                "cycle_crews": cycle_n,
            },
            scenarios={
                **{name: sc[2] for name, sc in bench.scenarios.items()},
                **{name: sc[3] for name, sc in bench.front.scenarios.items()},
            },
            targets={k: {"cmp": v[0], "target": v[1], "what": v[2]} for k, v in TARGETS.items()},
            repetitions=repetitions,
            warm_cache=warm,
            warm_cache_target=warm_cache_verdict(warm),
            front_staleness=front_staleness,
            summary=summary,
            notes=notes,
        )
        write_results(json_file, doc, "latest.md", write_markdown)
        write_png(RESULTS / "latest.png", doc)
        log(
            f"wrote {json_file.relative_to(ROOT)}, bench/results/latest.md, "
            "bench/results/latest.png"
        )
        for line in target_lines(doc):
            log(line.replace("**", ""))
        log(f"done in {doc['minutes']} min")
    finally:
        if bench is not None:
            bench.close()
        stack.close()


if __name__ == "__main__":
    main()
