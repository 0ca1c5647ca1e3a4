"""Processes of the test servers: free ports, one wait-until loop, one way to stop.

Standard library only, so bench/ and tests/ import it alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server could not be found, started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a log file ("" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def logs_of(paths: Iterable) -> str:
    return "\n".join(tail(path) for path in paths)


def stat_fields(pid) -> list[str] | None:
    """/proc/<pid>/stat's fields from the third (state) on; None when the process is gone.

    So field n of proc(5) is at index n - 3: the parent pid at 1, utime and stime at 11, 12.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def all_stat_fields() -> dict[int, list[str]]:
    """stat_fields() of every live process, by pid."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(entry)) is not None:
            out[int(entry)] = fields
    return out


def children(ppid: int) -> list[int]:
    """Pids of the live children of ``ppid``, from /proc."""
    return sorted(pid for pid, fields in all_stat_fields().items() if int(fields[1]) == ppid)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Send ``sig`` to ``proc`` (by its pid), wait, then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def start_listening(cmd, port: int, log, what: str, *, logs: Iterable = (), **popen):
    """``cmd`` started with its output in the file ``log``; returns its Popen once something
    accepts connections on ``port``. Otherwise (8 s, or it exits) it is stopped and
    ServerError names ``what``, with the tail of ``log`` and of ``logs``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen
        )
    wait_until(
        lambda: port_accepts(port),
        8.0,
        f"{what} listening on port {port}",
        proc=proc,
        logs=[log, *logs],
        on_failure=lambda: stop_process(proc, timeout=5),
    )
    return proc


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    proc: subprocess.Popen | None = None,
    logs: Iterable = (),
    on_failure: Callable[[], None] | None = None,
) -> float:
    """Poll ``check()`` until it is done; return the seconds it took.

    ``check`` returns a truth value, or ``(done, detail)`` to explain a wait that fails.
    When ``proc`` exits first, or ``timeout`` seconds pass, ``on_failure`` runs (to stop
    what was started) and ServerError is raised with the detail and the tail of ``logs``.
    """
    logs = tuple(logs)
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            problem = f"{what}: the process exited with {proc.returncode}"
            break
        result = check()
        done, detail = result if isinstance(result, tuple) else (result, "")
        if done:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            problem = f"{what} not reached within {timeout:g} s: {detail}".rstrip(": ")
            break
        time.sleep(interval)
    if logs:
        problem += "\n" + logs_of(logs)
    if on_failure is not None:
        on_failure()
    raise ServerError(problem)
