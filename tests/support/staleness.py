"""Staleness drills against the app under gunicorn: a fill held at the worst moment, polls
spread over both workers, and which worker served each poll.

Shared by ``bench/staleness.py`` (``make drill``) and ``tests/test_staleness_gunicorn.py``.
A poll is stale when it answers what an acknowledged write replaced. Times are seconds
after the fault cleared (``time.monotonic()`` of that moment is passed in).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

from tests.support.gunicorn import GunicornServer, served_env
from tests.support.processes import wait_until
from tests.support.raw_http import request

# gunicorn.conf.py's access log, with the worker's pid first: each poll carries a tag in
# its query string, so the log says which worker served it.
ACCESS_LOG_FORMAT = '%(p)s "%(r)s" %(s)s'
_ACCESS = re.compile(r'^<(\d+)> "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3})', re.M)
_OWN_ENV = re.compile(
    r"^(CREW7_|GUNICORN_|DATABASE_URL$|REDIS_URL$|WEB_CONCURRENCY$|PORT$|PROMETHEUS_MULTIPROC_DIR$)"
)


def fence_key(document_key: str) -> str:
    return f"fence:{{{document_key}}}"


def crew_key(crew_id) -> str:
    return f"metadata:crew:{crew_id}"


class Served:
    """``gunicorn -c gunicorn.conf.py`` (sync, ``workers``) on database_url and Redis, with
    an API client for one user. ``settings``: app settings without CREW7_."""

    def __init__(self, database_url, redis_url, user, workers=2, **settings):
        env = {k: v for k, v in os.environ.items() if not _OWN_ENV.match(k)}
        env.update(served_env(database_url, redis_url, **settings))
        self.user = user
        self._tags = 0
        self._lock = threading.Lock()
        self.server = GunicornServer(
            env,
            workers,
            ("--access-logformat", ACCESS_LOG_FORMAT),
            name="staleness",
            inherit_env=False,
            mute_access_log=False,
            ready_timeout=30,
        )
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- requests -------------------------------------------------------------------------

    def tag(self) -> str:
        with self._lock:
            self._tags += 1
            return f"poll{self._tags}"

    def call(self, method, path, payload=None, timeout=10):
        """(status, JSON body or None) of one request as the user."""
        status, headers, data = request(
            self.port, method, path, payload, self.user["headers"], timeout=timeout
        )
        is_json = headers.get("content-type", "").startswith("application/json")
        return status, json.loads(data) if is_json and data else None

    def get(self, path, tag=None, timeout=10):
        """(status, JSON body or None) of an anonymous GET, tagged for pid_of()."""
        sep = "&" if "?" in path else "?"
        url = f"{path}{sep}t={tag}" if tag else path
        status, headers, data = request(self.port, "GET", url, timeout=timeout)
        is_json = headers.get("content-type", "").startswith("application/json")
        return status, json.loads(data) if is_json and data else None

    def create_crew(self, name, agents=0, runs=()):
        status, crew = self.call("POST", "/crews", {"name": name, "description": "drill"})
        assert status == 201, (status, crew)
        made = []
        for n in range(agents):
            agent = {"name": f"Agent {n}", "role": "Researcher", "llm": "gpt-4o", "tools": []}
            status, body = self.call("POST", f"/crews/{crew['id']}/agents", agent)
            assert status == 201, (status, body)
            made.append(body)
        for run in runs:
            status, body = self.call("POST", f"/crews/{crew['id']}/runs", run)
            assert status == 201, (status, body)
        return crew, made

    def patch_crew(self, crew_id, **fields):
        status, body = self.call("PATCH", f"/crews/{crew_id}", fields)
        assert status == 200, (status, body)
        return body

    # -- workers --------------------------------------------------------------------------

    def access_log(self) -> list[tuple[int, str, str, int]]:
        """(pid, method, path, status) of every request logged so far."""
        return [
            (int(pid), method, path, int(status))
            for pid, method, path, status in _ACCESS.findall(self.server.output())
        ]

    def pids_of(self, polls) -> None:
        """Set each poll's ``pid`` from the access log (written after each response)."""
        wanted = {p["tag"]: p for p in polls if p.get("tag")}
        deadline = time.monotonic() + 3
        while True:
            for pid, _, path, _ in self.access_log():
                tag = path.rpartition("t=")[2]
                if tag in wanted:
                    wanted[tag]["pid"] = pid
            if all("pid" in p for p in wanted.values()) or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def writer_pid(self, method, path) -> int:
        """The pid of the worker that served the last ``method path``."""
        found = []

        def logged():
            found[:] = [pid for pid, m, p, _ in self.access_log() if (m, p) == (method, path)]
            return bool(found)

        wait_until(logged, 5, f"{method} {path} in the access log", interval=0.02)
        return found[-1]

    def kill_worker(self, pid) -> None:
        """SIGKILL one worker by pid and wait until it is gone (gunicorn starts another)."""
        if pid not in self.server.worker_pids():
            raise RuntimeError(f"{pid} is not a worker of this gunicorn")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: pid not in self.server.worker_pids(), 5, f"worker {pid} gone")

    def wait_for_workers(self, timeout=20) -> None:
        wait_until(
            lambda: len(self.server.worker_pids()) >= self.server.workers,
            timeout,
            "every worker up",
        )


# -- polls ------------------------------------------------------------------------------


def poll(served, path, is_stale, cleared, count=28, span=4.0, per_round=2, final=True):
    """One leading GET of path, alone: a miss it takes holds its worker for the fill delay
    (CACHE_FILL_DELAY applies to every miss), which would leave the rounds to the other
    worker. Then ``count`` GETs in rounds of ``per_round`` concurrent ones (a sync worker
    serves one at a time, so a round reaches both), the rounds spread over ``span`` s;
    then one final GET. Each poll: started (s after ``cleared``), status, stale, pid.

    ``is_stale(status, body)`` says whether an answer is one a write replaced.
    """
    polls, threads = [], []
    rounds = max(1, count // per_round)

    def one(record):
        record["started"] = time.monotonic() - cleared
        try:
            status, body = served.get(path, record["tag"])
        except OSError as exc:
            record.update(status=None, stale=False, error=str(exc))
            return
        record.update(status=status, stale=bool(is_stale(status, body)))
        record["seen"] = body.get("name") if isinstance(body, dict) else None

    lead = {"tag": served.tag(), "lead": True}
    one(lead)
    polls.append(lead)
    start = time.monotonic()
    for n in range(rounds):
        delay = start + n * span / rounds - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for _ in range(per_round):
            record = {"tag": served.tag()}
            polls.append(record)
            thread = threading.Thread(target=one, args=(record,), daemon=True)
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join(15)
    if final:
        record = {"tag": served.tag(), "final": True}
        one(record)
        polls.append(record)
    served.pids_of(polls)
    return polls


def summary(polls, cleared_label="the fault cleared"):
    """Counts of a poll list: polls, stale, per worker, last stale start, still stale."""
    stale = [p for p in polls if p.get("stale")]
    workers: dict[str, int] = {}
    for p in polls:
        key = str(p.get("pid", "?"))
        workers[key] = workers.get(key, 0) + 1
    return {
        "polls": len(polls),
        "stale": len(stale),
        "errors": sum(1 for p in polls if p.get("status") is None),
        "workers": workers,
        "last_stale_s": round(max(p["started"] for p in stale), 3) if stale else None,
        "still_stale_at_end": bool(polls and polls[-1].get("stale")),
        "last_poll_s": round(max(p["started"] for p in polls), 3) if polls else None,
        # started, status, stale, worker pid: poll by poll
        "timeline": [
            [round(p.get("started", 0), 3), p.get("status"), p.get("stale"), p.get("pid")]
            for p in polls
        ],
    }


def renamed_back(old_name):
    """is_stale for a rename: a 200 still naming ``old_name``."""

    def is_stale(status, body):
        return status == 200 and isinstance(body, dict) and body.get("name") == old_name

    return is_stale


def held_fill_race(served, redis_client, fault, hold=0.3, settle=0.3, reader_timeout=30):
    """The worst moment of a fill: the crew's fence is gone (as after its expiry or a
    restart); a reader misses, reads the database (old name) and is held before its fill
    (CACHE_FILL_DELAY); the owner renames the crew (200); ``fault(crew_id)`` runs; then the
    reader's fill. Returns (crew id, monotonic time the fault cleared, reader's answer).

    ``settle``: seconds between the rename's response and the fault, for every relay to
    apply the rename's change-log entries (the writer's own relay applies them again just
    after its response, replacing the fence once more): the fault then comes last.
    """
    crew, _ = served.create_crew("Before")
    cid = crew["id"]
    redis_client.delete(fence_key(crew_key(cid)))
    seen = {}

    def reader():
        seen["answer"] = served.get(f"/metadata/crew/{cid}", served.tag(), timeout=reader_timeout)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(hold)  # the reader has read the database and waits to fill
    served.patch_crew(cid, name="After")
    time.sleep(settle)
    fault(cid)
    cleared = time.monotonic()
    thread.join(reader_timeout)
    if thread.is_alive():
        raise RuntimeError("the held reader did not answer")
    return cid, cleared, seen["answer"]


def cache_document(served, client, cid, timeout=5):
    """Request crew ``cid``'s document until Redis holds it: a relay applying the crew's
    creation after the writer did refuses a fill in flight (its fence replaced)."""

    def cached():
        if client.exists(crew_key(cid)):
            return True
        served.get(f"/metadata/crew/{cid}")
        return bool(client.exists(crew_key(cid)))

    wait_until(cached, timeout, "the document cached", interval=0.1)
