"""One webhook POST to addresses already checked: no DNS between check and connect, no
redirects followed (http.client never follows one: a 3xx is a failure), bounded connect
time, a deadline for the whole exchange and a bounded read of the response."""

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

MAX_RESPONSE = 64 * 1024  # bytes of the response body read, at most


@dataclass
class Outcome:
    status: int | None  # the receiver's status code; None when there was no response
    error: str | None  # why it failed; None after a 2xx
    duration: float  # seconds

    @property
    def ok(self):
        return self.status is not None and 200 <= self.status < 300


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the given socket address; the Host header still names the URL's host."""

    def __init__(self, host, port, sockaddr, family, connect_timeout):
        super().__init__(host, port, timeout=connect_timeout)
        self._sockaddr, self._family = sockaddr, family

    def _open(self):
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    def connect(self):
        self.sock = self._open()


class _PinnedHTTPS(_PinnedHTTP):
    def connect(self):
        sock = self._open()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(sock, server_hostname=self.host)


def _describe(exc):
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def post(target, path, body, headers, connect_timeout, timeout):
    """POST ``body`` to the checked ``target`` (scheme, host, port, addresses), trying its
    addresses in order until one connects. The whole exchange ends by ``timeout`` seconds:
    a watchdog shuts the socket down then, however slowly a receiver trickles bytes."""
    scheme, host, port, addresses = target
    started = time.monotonic()
    deadline = started + timeout
    cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    error = "no address"
    for family, sockaddr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = "timeout"
            break
        conn = cls(host, port, sockaddr, family, min(connect_timeout, remaining))
        try:
            conn.connect()
        except OSError as exc:
            error = _describe(exc)
            conn.close()
            continue
        timed_out = threading.Event()

        def expire(sock=conn.sock, flag=timed_out):
            flag.set()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        watchdog = threading.Timer(max(deadline - time.monotonic(), 0), expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read(MAX_RESPONSE)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            error = "timeout" if timed_out.is_set() else _describe(exc)
            return Outcome(None, error, time.monotonic() - started)
        finally:
            watchdog.cancel()
            conn.close()
        if timed_out.is_set():
            return Outcome(None, "timeout", time.monotonic() - started)
        if 200 <= status < 300:
            return Outcome(status, None, time.monotonic() - started)
        snippet = text[:200].decode("utf-8", "replace").strip()
        return Outcome(
            status,
            f"HTTP {status}" + (f": {snippet}" if snippet else ""),
            time.monotonic() - started,
        )
    return Outcome(None, error, time.monotonic() - started)
