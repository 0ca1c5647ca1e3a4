"""The real app under gunicorn (gunicorn.conf.py) on 127.0.0.1, for tests and bench."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.support.processes import children, free_port, stop_process, tail, wait_until

ROOT = Path(__file__).resolve().parents[2]
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
BOOT = ROOT / "deploy" / "boot.sh"
_ACCESS_LINE = re.compile(r'^\S+ \S+ "[A-Z]+ \S+ HTTP/[0-9.]+" \d{3} ')


def served_env(database_url, redis_url, **settings):
    """The app's environment on database_url and redis_url, its cache not warmed at start.

    settings: more of the app's settings, named without CREW7_ (``CACHE_TRACE=True``).
    """
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CREW7_CACHE_WARM_ON_START": "false",
    }
    for name, value in settings.items():
        env[f"CREW7_{name}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def boot_gunicorn_options():
    """The options deploy/boot.sh gives gunicorn besides -c gunicorn.conf.py, as pairs."""
    (line,) = [
        line.strip() for line in BOOT.read_text().splitlines() if line.strip().startswith("exec ")
    ]
    words = shlex.split(line)[2:]  # after "exec gunicorn"
    options = words[: words.index("-c")]
    return list(zip(options[::2], options[1::2], strict=True))


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on a free port, its output in a log file.

    ``env`` is added to this process's environment (``inherit_env=False``: it is the whole
    environment). The access log is muted (``mute_access_log=False``: gunicorn.conf.py's,
    on the output; ``extra_args`` may also name one). Ready once
    /healthz answers 200 and every worker is up. A log file it created is removed by stop();
    one passed as ``logfile`` is kept.
    """

    def __init__(
        self,
        env,
        workers=2,
        extra_args=(),
        *,
        name="app",
        logfile=None,
        inherit_env=True,
        mute_access_log=True,
        ready_timeout=20.0,
        stop_timeout=10.0,
    ):
        self.name = name
        self.workers = workers
        self.stop_timeout = stop_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_log = logfile is None
        if logfile is None:
            fd, logfile = tempfile.mkstemp(prefix="crew7-gunicorn-", suffix=".log")
            os.close(fd)
        self.logfile = str(logfile)
        full_env = {**os.environ, **env} if inherit_env else dict(env)
        full_env["WEB_CONCURRENCY"] = str(workers)
        full_env.pop("GUNICORN_BIND", None)
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    str(GUNICORN_CONF),
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--workers",
                    str(workers),
                    *(("--access-logfile", "/dev/null") if mute_access_log else ()),
                    *extra_args,
                    "wsgi:app",
                ],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            self._ready,
            ready_timeout,
            f"gunicorn {name} ready on {self.url}",
            interval=0.1,
            proc=self.proc,
            logs=[self.logfile],
            on_failure=self.stop,
        )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return r.status == 200 and len(self.worker_pids()) >= self.workers
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def output(self) -> str:
        with open(self.logfile, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.logfile, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")

    def tail(self, limit: int = 3000) -> str:
        return tail(self.logfile, limit)

    def save_log(self, dest: Path, keep_access_log: bool = False) -> Path:
        """Copy the log (without access-log lines unless asked) to ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(self.logfile, encoding="utf-8", errors="replace") as src,
            open(dest, "w", encoding="utf-8") as out,
        ):
            for line in src:
                if keep_access_log or not _ACCESS_LINE.match(line):
                    out.write(line)
        return dest

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, self.stop_timeout)
        if self._own_log:
            try:
                os.unlink(self.logfile)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
