"""`make run-front` (scripts/run.sh) stops exactly what it started, however it is stopped:
Ctrl-C at the terminal (SIGINT to the foreground process group) or a TERM to the whole
group (make passes its TERM on to the script, which so gets two).

Each run has its own instance folder, ports and Redis on 127.0.0.1; everything is
stopped by its pid, and the test is bounded in time."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.nginx import nginx_binary
from tests.support.processes import free_port
from tests.support.raw_http import request

pytestmark = [pytest.mark.gunicorn, pytest.mark.nginx]

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120  # seconds: migrations and the demo data on a fresh SQLite file
STOP_TIMEOUT = 45  # gunicorn's graceful timeout, then Redis and the front


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a process we did not start is not ours to reap: read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_make_run_stops_what_it_started(tmp_path, sig):
    nginx_binary()
    ports = {"app": free_port(), "redis": free_port(), "front": free_port()}
    # The script's own defaults, but for the instance folder and the ports.
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("CREW7_") and "_URL" not in k
    }
    env = {
        **inherited,
        "CREW7_INSTANCE_PATH": str(tmp_path),
        "CREW7_BIND": f"127.0.0.1:{ports['app']}",
        "REDIS_PORT": str(ports["redis"]),
        "WEB_CONCURRENCY": "1",
    }
    tmp_path.chmod(0o755)  # nginx's workers (another user under root) read instance/front
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run-front", f"CREW7_FRONT_PORT={ports['front']}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's job is
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if request(ports["front"], "GET", "/metadata/crew/1", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert make.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        text = log.read_text()
        redis_pid = int(re.search(r"started Redis on \S+ \(pid (\d+)", text).group(1))
        front_pid = int(re.search(r"the front on \S+ \(pid (\d+)", text).group(1))
        assert _alive(redis_pid) and _alive(front_pid)

        os.killpg(make.pid, sig)
        make.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + 5
        while (_alive(redis_pid) or _alive(front_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(redis_pid), "Redis outlived make run"
        assert not _alive(front_pid), "the front outlived make run"
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(timeout=10)
        for pid in re.findall(r"\(pid (\d+)", log.read_text()):
            if _alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
