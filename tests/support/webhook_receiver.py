"""A webhook receiver on 127.0.0.1 for tests: http.server in a thread, answering each
POST as a script says, recording every request it got and what it answered."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from crew7.services.webhooks.signing import verify


def event_key(event):
    """An event's place in the feed: its cursor without the trailing stamp, which the feed
    renews (``xid.id.n.stamp``, crew7/services/feed.py); the same event read twice may
    carry two stamps."""
    return event["cursor"].rsplit(".", 1)[0]


def feed_cursors(app, after=None, page_size=100):
    """The place (``event_key``) of every feed event after ``after``, read page by page."""
    from crew7.services.feed import read_feed  # noqa: PLC0415 (needs the app's models)

    cursors = []
    with app.app_context():
        while True:
            page = read_feed(after, page_size)
            cursors += [event_key(e) for e in page.events]
            after = page.events[-1]["cursor"] if page.events else after
            if not page.has_more:
                return cursors


@dataclass
class Received:
    headers: dict
    body: str
    action: str  # what the receiver did: "ok", "fail", "timeout", "hold", "redirect"
    status: int | None = None  # what it answered (None: nothing yet)
    at: float = field(default_factory=time.time)

    @property
    def payload(self):
        return json.loads(self.body)

    @property
    def cursors(self):
        return [event_key(e) for e in self.payload["events"]]

    def verifies(self, secret, now=None):
        return verify(
            secret,
            self.headers.get("X-Crew7-Timestamp"),
            self.body,
            self.headers.get("X-Crew7-Signature"),
            now=time.time() if now is None else now,
        )


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up or was killed resets its connection: expected here


class WebhookReceiver:
    """``script``: the actions of the first requests, in order ("ok" after them):
    "fail" answers 500; "timeout" sleeps ``sleep`` seconds, then answers 200 to a client
    that has long given up; "hold" answers 200 only once ``release()`` is called;
    "redirect" answers 302 to ``redirect_to``; "trickle" sends its headers a byte every
    0.1 s for ``sleep`` seconds."""

    def __init__(self, script=(), sleep=2.0, redirect_to="http://127.0.0.1:9/"):
        self.script = list(script)
        self.sleep = sleep
        self.redirect_to = redirect_to
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.held = threading.Event()  # set once a "hold" request is waiting
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                with receiver.lock:
                    action = receiver.script.pop(0) if receiver.script else "ok"
                    entry = Received(dict(self.headers), body, action)
                    receiver.received.append(entry)
                if action == "trickle":  # a byte at a time: never idle long enough to time out
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    deadline = time.monotonic() + receiver.sleep
                    try:
                        while time.monotonic() < deadline:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                if action == "timeout":
                    time.sleep(receiver.sleep)
                elif action == "hold":
                    receiver.held.set()
                    receiver._release.wait(60)
                status = {"fail": 500, "redirect": 302}.get(action, 200)
                entry.status = status
                try:
                    self.send_response(status)
                    if action == "redirect":
                        self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def release(self):
        self._release.set()

    def batches(self):
        with self.lock:
            return list(self.received)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def check_delivered_in_order(batches, feed_cursors):
    """``feed_cursors``: the feed's events after the subscription's start, as event_key
    gives them. Every batch a contiguous run of the feed that starts where the feed starts or
    right after a batch the receiver acknowledged (so a repeat is a whole batch sent
    again); returns the cursors received, each once, in order."""
    position = {cursor: n for n, cursor in enumerate(feed_cursors)}
    resume_points = {0}
    seen = []
    for batch in batches:
        cursors = batch.cursors
        assert cursors, "an empty batch was delivered"
        start = position[cursors[0]]
        assert start in resume_points, (
            f"batch starting at event {start} neither repeats an unacknowledged batch nor "
            f"follows an acknowledged one (resume points {sorted(resume_points)})"
        )
        assert [position[c] for c in cursors] == list(range(start, start + len(cursors))), (
            "a batch is not a contiguous run of the feed"
        )
        if batch.status is not None and 200 <= batch.status < 300:
            resume_points.add(start + len(cursors))
        for cursor in cursors:
            if cursor not in seen:
                seen.append(cursor)
    return seen
