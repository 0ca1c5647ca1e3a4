"""Shared pieces of bench/run.py and bench/drill.py.

Servers: the test suite's RedisServer / PostgresServer (tests/support/servers.py), gunicorn with
the production ``gunicorn.conf.py``, wrk. Every process is started here and stopped by its
own pid; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
# Server logs of the last run (git-ignored).
LOGS = RESULTS / "tmp"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.gunicorn import GunicornServer  # noqa: E402
from tests.support.processes import all_stat_fields, stat_fields  # noqa: E402
from tests.support.servers import PostgresServer, RedisServer  # noqa: E402

__all__ = [
    "BENCH",
    "CpuMeter",
    "ROOT",
    "RESULTS",
    "LOGS",
    "Gunicorn",
    "PostgresServer",
    "RedisServer",
    "Stack",
    "app_env",
    "env_number",
    "results_doc",
    "results_file",
    "stop_on_sigterm",
    "write_results",
    "flask_cli",
    "run_seeding",
    "log",
    "machine_info",
    "machine_ticks",
    "tree_ticks",
    "median",
    "proc_cpu_seconds",
    "utc_stamp",
    "wrk",
    "wrk_script",
]

_DROP_ENV = re.compile(
    r"^(CREW7_|GUNICORN_|DATABASE_URL$|REDIS_URL$|WEB_CONCURRENCY$|PORT$|PROMETHEUS_MULTIPROC_DIR$)"
)
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def env_number(name, default, kind=float):
    """A numeric setting from the environment (BENCH_*, DRILL_*), else ``default``."""
    raw = os.environ.get(name, "").strip()
    return kind(raw) if raw else default


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops the servers it started."""
    signal.signal(signal.SIGTERM, _terminate)


def results_file(prefix: str, stamp: str) -> Path:
    """``bench/results/<prefix><stamp>.json``; creates the folder."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{prefix}{stamp}.json"


def results_doc(prefix: str, started: str, t0: float, **sections) -> tuple[Path, dict]:
    """A run's results file (``results_file(prefix, started)``) and its document: when it
    started and finished, its minutes since ``t0`` (monotonic), the file, then ``sections``."""
    json_file = results_file(prefix, started)
    doc = {
        "started": started,
        "finished": utc_stamp(),
        "minutes": round((time.monotonic() - t0) / 60, 2),
        "json_file": str(json_file.relative_to(ROOT)),
        **sections,
    }
    return json_file, doc


def write_results(json_file: Path, doc: dict, markdown: str, write_markdown) -> None:
    """The run's JSON, and its Markdown report as ``bench/results/<markdown>``."""
    json_file.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    write_markdown(RESULTS / markdown, doc)


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# --------------------------------------------------------------------------
# PostgreSQL + Redis
# --------------------------------------------------------------------------


class Stack:
    """A PostgreSQL and a Redis for one bench run, plus a scratch directory."""

    def __init__(self):
        self.tmpdir = tempfile.mkdtemp(prefix="crew7-bench-")
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None

    def start(self) -> Stack:
        self.pg = PostgresServer.start()
        self.redis = RedisServer.start()
        log(
            f"postgres pid {self.pg.pid} port {self.pg.port}; redis pid {self.redis.pid} "
            f"port {self.redis.port}"
        )
        return self

    def close(self) -> None:
        for server in (self.redis, self.pg):
            if server is not None:
                try:
                    server.close()
                except Exception as exc:  # keep closing the others
                    log(f"closing {server!r} failed: {exc}")
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def app_env(stack: Stack, **settings) -> dict:
    """The environment of the app's processes: our servers, nothing inherited of crew7's."""
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    instance = os.path.join(stack.tmpdir, "instance")
    os.makedirs(instance, exist_ok=True)
    env.update(
        {
            "DATABASE_URL": stack.pg.url,
            "REDIS_URL": stack.redis.url,
            "FLASK_APP": "wsgi",
            "CREW7_INSTANCE_PATH": instance,
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, value in settings.items():
        env[f"CREW7_{name}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def run_seeding(env: dict, *args: str, timeout: float = 1800) -> dict:
    """``bench/seeding.py *args`` with the app's ``env``: its JSON summary."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "seeding.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench/seeding.py {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flask_cli(env: dict, *args: str, timeout: float = 1800) -> tuple[float, str, str]:
    """Run ``flask ARGS``; return (wall seconds, stdout, stderr). Raises on failure."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flask", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"flask {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return wall, proc.stdout, proc.stderr


# --------------------------------------------------------------------------
# gunicorn
# --------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot.

    Busy is user + nice + system + steal (time the hypervisor gave to other guests: noisy
    neighbours). irq and softirq are left out of busy: they are not charged to any
    process, and on loopback most of them are the bench's own network traffic.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + steal
    return busy, busy + idle + iowait + irq + softirq


def tree_ticks(root: int) -> int:
    """CPU ticks of ``root`` and its live descendants, with their reaped children."""
    # ppid, utime + stime + cutime + cstime
    stats = {
        pid: (int(fields[1]), sum(int(x) for x in fields[11:15]))
        for pid, fields in all_stat_fields().items()
    }
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


class CpuMeter:
    """How busy the machine was over an interval, and how much of it was not ours.

    Ours: this process and every process it started (servers, wrk, flask commands).
    Shares are fractions of the whole machine (all CPUs).
    """

    def __init__(self):
        self.root = os.getpid()
        self.start()

    def start(self) -> None:
        self._busy, self._total = machine_ticks()
        self._ours = tree_ticks(self.root)

    def read(self) -> dict:
        busy, total = machine_ticks()
        ours = tree_ticks(self.root)
        span = max(total - self._total, 1)
        busy_d = busy - self._busy
        ours_d = min(ours - self._ours, busy_d)
        return {
            "machine_busy": round(busy_d / span, 3),
            "ours": round(ours_d / span, 3),
            "others": round(max(busy_d - ours_d, 0) / span, 3),
        }


class Gunicorn(GunicornServer):
    """The test suite's GunicornServer as the bench runs it: a named log kept in ``logdir``,
    gunicorn.conf.py's access log, only the environment given (see app_env)."""

    def __init__(self, name: str, env: dict, workers: int = 2, logdir: str | None = None):
        super().__init__(
            env,
            workers,
            name=name,
            logfile=os.path.join(logdir or tempfile.gettempdir(), f"gunicorn-{name}.log"),
            inherit_env=False,
            mute_access_log=False,
            ready_timeout=30,
            stop_timeout=30,
        )
        log(
            f"gunicorn {name}: master pid {self.proc.pid}, workers {self.worker_pids()}, "
            f"{self.url}, log {self.logfile}"
        )

    def cpu_snapshot(self) -> dict[int, float]:
        return {pid: proc_cpu_seconds(pid) or 0.0 for pid in self.worker_pids()}


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------

_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def wrk_script(path: str, paths: list[str] | None = None, seed: int = 7, cycle=False) -> str:
    """Write a wrk Lua script: a fixed path, or a random one of ``paths`` per request, or
    (cycle) each of ``paths`` in turn, so every one is requested once per cycle (wrk -t1:
    one thread, one counter)."""
    lines = []
    if paths:
        quoted = ",\n".join(json.dumps(p) for p in paths)
        lines.append(f"local paths = {{\n{quoted}\n}}")
        lines.append(f"math.randomseed({seed})")
        lines.append("local n = #paths")
        lines.append("local i = 0")
        lines.append("request = function()")
        if cycle:
            lines.append("  i = i % n + 1")
            lines.append('  return wrk.format("GET", paths[i])')
        else:
            lines.append('  return wrk.format("GET", paths[math.random(n)])')
        lines.append("end")
    lines.append(_DONE_LUA)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return path


def wrk(
    url: str,
    script: str,
    duration: float,
    connections: int = 16,
    timeout: float = 10,
) -> dict:
    """Run ``wrk -t1`` and return its numbers (latencies in ms)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the bench only loads 127.0.0.1")
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        f"--timeout={timeout:g}s",
        "-s",
        script,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    match = re.search(r"^WRKJSON (\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": round(raw["mean_us"] / 1000, 3),
        "non_2xx_3xx": raw["err_status"],
        "socket_errors": raw["err_connect"]
        + raw["err_read"]
        + raw["err_write"]
        + raw["err_timeout"],
        "bytes": raw["bytes"],
    }


# --------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_info(stack: Stack | None = None) -> dict:
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            mem_total = fh.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("flask", "gunicorn", "redis", "hiredis", "sqlalchemy", "psycopg"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total": mem_total,
        "loadavg": list(os.getloadavg()),
        "wrk": _first_line(["wrk", "--version"]),
        "redis_server": _first_line(["redis-server", "--version"]),
        "packages": packages,
    }
    if stack is not None and stack.pg is not None:
        info["postgres"] = _first_line([os.path.join(stack.pg.bindir, "postgres"), "--version"])
    return info
