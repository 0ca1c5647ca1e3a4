"""A small open-loop, fixed-rate HTTP load generator (wrk2-style, in Python).

Request ``i`` is *scheduled* at ``t0 + i / rate`` whatever happened to the requests
before it, and its latency is measured from that scheduled time, not from when it was
actually sent: when the server (or this generator) falls behind, the waiting time is
counted, so coordinated omission is accounted for.

One thread and one epoll loop over non-blocking sockets (asyncio costs several times
more CPU per request, and this client shares two cores with the server), one TCP
connection per request (``Connection: close``, which is what gunicorn's sync workers do
anyway), a bounded number of requests in flight and a bounded duration: a request that
would exceed ``max_inflight`` is not sent and counts as ``dropped``; one that takes longer
than ``timeout`` is an error.

Only 127.0.0.1 is ever targeted by the bench scripts.
"""

from __future__ import annotations

import errno
import json
import resource
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Record", "Result", "percentile", "run_fixed_rate", "summarize_latencies"]


@dataclass(slots=True)
class Record:
    """One request: times are ``time.monotonic()`` seconds."""

    tag: str
    path: str
    scheduled: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0  # 0: no HTTP response (connection error or timeout)
    content_type: str = ""
    is_json: bool | None = None
    retry_after: str | None = None
    nbytes: int = 0
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.scheduled


@dataclass
class Result:
    rate: float
    duration: float
    records: list[Record] = field(default_factory=list)
    dropped: int = 0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    max_send_lag_s: float = 0.0


def _parse(raw: bytes, rec: Record, want_body: bool) -> None:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        rec.error = "truncated response"
        return
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        rec.error = "bad status line"
        return
    rec.status = int(parts[1])
    rec.nbytes = len(body)
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-type":
            rec.content_type = value.strip().decode("latin-1")
        elif name == b"retry-after":
            rec.retry_after = value.strip().decode("latin-1")
    if want_body:
        try:
            json.loads(body)
            rec.is_json = True
        except ValueError:
            rec.is_json = False


class _Conn:
    __slots__ = ("sock", "rec", "request", "chunks", "connected")

    def __init__(self, sock, rec, request):
        self.sock = sock
        self.rec = rec
        self.request = request
        self.chunks = []
        self.connected = False


def _loop(host, port, rate, duration, next_request, timeout, max_inflight, want_body):
    """The generator: one epoll loop, non-blocking sockets, no per-request objects but two."""
    result = Result(rate=rate, duration=duration)
    interval = 1.0 / rate
    total = int(duration * rate)
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    addr = (host, port)
    head = f" HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: crew7-bench\r\n"
    head += "Connection: close\r\n\r\n"
    tail = head.encode()
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT  # noqa: N806
    t0 = time.monotonic() + 0.05
    hard_stop = t0 + duration + timeout + 1.0
    next_sweep = t0 + 0.1
    i = 0

    def finish(fd, conn, error=""):
        rec = conn.rec
        rec.done = time.monotonic()
        if error:
            rec.error = error
        else:
            _parse(b"".join(conn.chunks), rec, want_body)
        try:
            ep.unregister(fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()
        del conns[fd]

    while True:
        now = time.monotonic()
        while i < total and t0 + i * interval <= now:
            tag, path = next_request(i)
            rec = Record(tag=tag, path=path, scheduled=t0 + i * interval)
            result.records.append(rec)
            lag = now - rec.scheduled
            if lag > result.max_send_lag_s:
                result.max_send_lag_s = lag
            i += 1
            if len(conns) >= max_inflight:
                rec.error = "dropped"
                rec.sent = rec.done = now
                result.dropped += 1
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            rec.sent = now
            conn = _Conn(sock, rec, b"GET " + path.encode() + tail)
            fd = sock.fileno()
            conns[fd] = conn
            code = sock.connect_ex(addr)
            if code == 0:
                conn.connected = True
                sock.send(conn.request)
                ep.register(fd, EPOLLIN)
            elif code == errno.EINPROGRESS:
                ep.register(fd, EPOLLOUT)
            else:
                finish(fd, conn, errno.errorcode.get(code, str(code)))
        if i >= total and not conns:
            break
        if now >= hard_stop:
            for fd, conn in list(conns.items()):
                finish(fd, conn, "timeout")
            break
        if now >= next_sweep:
            next_sweep = now + 0.1
            for fd, conn in list(conns.items()):
                if now - conn.rec.sent > timeout:
                    finish(fd, conn, "timeout")
        wait = 0.05 if i >= total else max(0.0, t0 + i * interval - time.monotonic())
        for fd, _ev in ep.poll(min(wait, 0.05)):
            conn = conns.get(fd)
            if conn is None:
                continue
            if not conn.connected:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(fd, conn, errno.errorcode.get(err, str(err)))
                    continue
                conn.connected = True
                try:
                    conn.sock.send(conn.request)
                except OSError as exc:
                    finish(fd, conn, type(exc).__name__)
                    continue
                ep.modify(fd, EPOLLIN)
                continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                finish(fd, conn, type(exc).__name__ if not conn.chunks else "")
                continue
            if data:
                conn.chunks.append(data)
            else:
                finish(fd, conn)
    ep.close()
    return result


def run_fixed_rate(
    port: int,
    rate: float,
    duration: float,
    next_request: Callable[[int], tuple[str, str]],
    *,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
    max_inflight: int = 1000,
    want_body: bool = False,
) -> Result:
    """Send ``rate`` requests per second for ``duration`` seconds; return every record.

    ``next_request(i)`` returns ``(tag, path)`` for the i-th request.
    """
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError("the bench only loads 127.0.0.1")
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    result = _loop(host, port, rate, duration, next_request, timeout, max_inflight, want_body)
    result.wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summarize_latencies(records: list[Record]) -> dict:
    """Counts and latency percentiles (ms, from the scheduled time) of ``records``."""
    ok = [r for r in records if 200 <= r.status < 400]
    lat = [r.latency * 1000 for r in records if r.status]
    out = {
        "requests": len(records),
        "ok": len(ok),
        "non_2xx_3xx": sum(1 for r in records if r.status and not 200 <= r.status < 400),
        "errors": sum(1 for r in records if not r.status),
    }
    for q in (50, 90, 99, 99.9):
        value = percentile(lat, q)
        out[f"p{q:g}_ms"] = round(value, 3) if value is not None else None
    out["max_ms"] = round(max(lat), 3) if lat else None
    return out
