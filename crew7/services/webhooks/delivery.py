"""Delivering the change feed to webhook subscriptions: at least once, in order.

Each pass reads, for every enabled subscription that is due, the feed's events after its
cursor (at most ``WEBHOOKS_BATCH``). A subscription with events is claimed with a lease
(``UPDATE ... WHERE lease_until < now``: one process at a time delivers it, on SQLite and
PostgreSQL alike), its batch is POSTed, signed, and the outcome is written in one
transaction: a row in the attempts log and, after a 2xx only, the cursor moved past the
batch. A failure (any other status, a refused address, a timeout) schedules the next
attempt after an exponential backoff with full jitter and, after
``WEBHOOKS_MAX_FAILURES`` in a row, disables the subscription. A process that dies
mid-delivery leaves its lease to expire; the batch is then delivered again, whole.

Runs in every serving process (a daemon thread that gunicorn's ``post_worker_init``
starts, see ``start_delivery``) and in ``flask webhooks deliver``.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from crew7.extensions import db
from crew7.models import utcnow
from crew7.services.webhooks.addresses import RefusedURL, checked_target
from crew7.services.webhooks.signing import backoff_delay, signed_headers
from crew7.services.webhooks.transport import Outcome, post
from crew7.webhook_models import WebhookDelivery, WebhookSubscription

log = logging.getLogger(__name__)

PRUNE_EVERY = 60.0  # seconds between pruning passes of one process
CURSOR_REFRESH = 600.0  # seconds between refreshes of an idle subscription's cursor
LEASE_MARGIN = 10.0  # seconds a lease outlives the longest attempt (DNS, commit)

Sub = WebhookSubscription


class LeaseLost(Exception):
    """Another process claimed the subscription meanwhile: this outcome is not recorded."""


def lease_seconds(config):
    return 2 * config["WEBHOOKS_TIMEOUT"] + LEASE_MARGIN


def request_path(url):
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Deliverer:
    """Delivers the app's subscriptions; one per process (``get_deliverer``)."""

    def __init__(self, app):
        self.app = app
        self.owner = f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._thread = None
        self._last_prune = 0.0
        self._refreshed = {}  # subscription id -> monotonic time of its last refresh

    def _config(self, name):
        return self.app.config[name]

    # -- one pass -------------------------------------------------------------
    def deliver_due(self):
        """Try every due subscription once; returns the number of attempts made."""
        now = utcnow()
        with db.engine.connect() as conn:
            due = conn.execute(
                select(Sub.id, Sub.cursor)
                .where(
                    Sub.enabled.is_(True),
                    Sub.next_attempt_at <= now,
                    or_(Sub.lease_until.is_(None), Sub.lease_until < now),
                )
                .order_by(Sub.next_attempt_at, Sub.id)
            ).all()
        attempts = 0
        for sub_id, cursor in due:
            if self._stop.is_set():
                break
            try:
                attempts += self.deliver_one(sub_id, cursor)
            except LeaseLost:
                log.warning(
                    "webhook %s: lease lost mid-delivery; another process redelivers", sub_id
                )
        if time.monotonic() - self._last_prune >= PRUNE_EVERY:
            self._last_prune = time.monotonic()
            self.prune()
        return attempts

    def deliver_one(self, sub_id, cursor):
        """Deliver the next batch of one subscription whose cursor was ``cursor`` when it
        was found due; 1 when an attempt was made, 0 when there was nothing to do."""
        from crew7.services.feed import BadCursor, CursorExpired, read_feed

        try:
            page = read_feed(cursor, self._config("WEBHOOKS_BATCH"))
        except (CursorExpired, BadCursor) as exc:
            return self._restart_expired(sub_id, cursor, exc)
        finally:
            db.session.remove()  # no transaction stays open during the POST
        if not page.events:
            self._refresh_idle(sub_id, cursor, page.next_cursor)
            return 0
        if not self._claim(sub_id, cursor):
            return 0
        sub = db.session.get(Sub, sub_id)
        if sub is None:  # removed meanwhile
            return 0
        url, secret, failures = sub.url, sub.secret, sub.consecutive_failures
        db.session.remove()
        delivery = str(uuid.uuid4())
        body = json.dumps(
            {"subscription": sub_id, "delivery": delivery, "events": page.events},
            separators=(",", ":"),
        )
        outcome = self._post(url, secret, body, delivery)
        self._record(sub_id, failures, page.events, delivery, outcome)
        return 1

    def _post(self, url, secret, body, delivery):
        started = time.monotonic()
        try:
            target = checked_target(url, self._config("WEBHOOKS_ALLOW_PRIVATE"))
        except RefusedURL as exc:
            return Outcome(None, f"refused: {exc}", time.monotonic() - started)
        headers = signed_headers(secret, int(time.time()), body, delivery)
        try:
            return post(
                target,
                request_path(url),
                body.encode(),
                headers,
                self._config("WEBHOOKS_CONNECT_TIMEOUT"),
                self._config("WEBHOOKS_TIMEOUT"),
            )
        except Exception as exc:  # whatever went wrong, it is this attempt's failure
            log.exception("webhook POST to %s failed unexpectedly", url)
            return Outcome(None, f"{type(exc).__name__}: {exc}"[:300], time.monotonic() - started)

    def _claim(self, sub_id, cursor):
        """Take the subscription's lease if it is free, due, enabled and still at
        ``cursor``: one UPDATE, which one process wins."""
        now = utcnow()
        with db.engine.begin() as conn:
            won = conn.execute(
                update(Sub)
                .where(
                    Sub.id == sub_id,
                    Sub.enabled.is_(True),
                    Sub.next_attempt_at <= now,
                    or_(Sub.lease_until.is_(None), Sub.lease_until < now),
                    (Sub.cursor.is_(None) if cursor is None else Sub.cursor == cursor),
                )
                .values(
                    lease_owner=self.owner,
                    lease_until=now + timedelta(seconds=lease_seconds(self.app.config)),
                )
            ).rowcount
        return won == 1

    def _record(self, sub_id, failures, events, delivery, outcome):
        """The attempt's log row and the subscription's new state, in one transaction
        that only the lease's holder may commit."""
        now = utcnow()
        attempt = failures + 1
        values = {"lease_owner": None, "lease_until": None, "last_attempt_at": now}
        if outcome.ok:
            values |= {
                "cursor": events[-1]["cursor"],
                "consecutive_failures": 0,
                "next_attempt_at": now,
                "last_success_at": now,
            }
        else:
            failures += 1
            delay = backoff_delay(
                failures, self._config("WEBHOOKS_RETRY_BASE"), self._config("WEBHOOKS_RETRY_MAX")
            )
            values |= {
                "consecutive_failures": failures,
                "next_attempt_at": now + timedelta(seconds=delay),
                "last_error": outcome.error,
            }
            if failures >= self._config("WEBHOOKS_MAX_FAILURES"):
                values |= {"enabled": False}
                log.warning(
                    "webhook %s disabled after %d failures: %s", sub_id, failures, outcome.error
                )
        with db.engine.begin() as conn:
            owned = conn.execute(
                update(Sub).where(Sub.id == sub_id, Sub.lease_owner == self.owner).values(**values)
            ).rowcount
            if owned != 1:  # rolled back: the holder that took over delivers this batch
                raise LeaseLost(sub_id)
            conn.execute(
                insert(WebhookDelivery).values(
                    subscription_id=sub_id,
                    delivery=delivery,
                    attempt=attempt,
                    first_cursor=events[0]["cursor"],
                    last_cursor=events[-1]["cursor"],
                    event_count=len(events),
                    status_code=outcome.status,
                    error=outcome.error,
                    duration_ms=round(outcome.duration * 1000, 1),
                    created_at=now,
                )
            )

    def _refresh_idle(self, sub_id, cursor, fresh):
        """An idle subscription's cursor replaced, now and then, by the feed's own cursor
        for the same position: a cursor too old for the feed's retention would expire
        though nothing was missed. Only while nobody holds the lease and the cursor is
        unchanged (one compare-and-set UPDATE)."""
        now = time.monotonic()
        if not fresh or fresh == cursor or now - self._refreshed.get(sub_id, 0) < CURSOR_REFRESH:
            return
        self._refreshed[sub_id] = now
        with db.engine.begin() as conn:
            conn.execute(
                update(Sub)
                .where(
                    Sub.id == sub_id,
                    or_(Sub.lease_until.is_(None), Sub.lease_until < utcnow()),
                    (Sub.cursor.is_(None) if cursor is None else Sub.cursor == cursor),
                )
                .values(cursor=fresh)
            )

    def _restart_expired(self, sub_id, cursor, exc):
        """The cursor is older than the feed keeps: what was lost is logged, and delivery
        resumes from the oldest event the feed still has."""
        if not self._claim(sub_id, cursor):
            return 0
        now = utcnow()
        error = (
            f"cursor {cursor!r} refused by the feed ({exc}): delivery resumes from the oldest "
            "event retained; events before it were not delivered"
        )
        with db.engine.begin() as conn:
            conn.execute(
                insert(WebhookDelivery).values(
                    subscription_id=sub_id,
                    delivery=str(uuid.uuid4()),
                    attempt=0,
                    first_cursor=cursor,
                    last_cursor=getattr(exc, "oldest", None),
                    event_count=0,
                    error=error,
                    duration_ms=0.0,
                    created_at=now,
                )
            )
            conn.execute(
                update(Sub)
                .where(Sub.id == sub_id, Sub.lease_owner == self.owner)
                .values(cursor=None, lease_owner=None, lease_until=None, last_error=error)
            )
        log.warning("webhook %s: %s", sub_id, error)
        return 1

    def prune(self):
        """Delete attempts older than ``WEBHOOKS_LOG_RETENTION``; returns how many."""
        cutoff = utcnow() - timedelta(seconds=self._config("WEBHOOKS_LOG_RETENTION"))
        with db.engine.begin() as conn:
            return conn.execute(
                delete(WebhookDelivery).where(WebhookDelivery.created_at < cutoff)
            ).rowcount

    # -- the thread -------------------------------------------------------------
    def run_until_idle(self, limit=1000):
        """Pass after pass until one makes no attempt (``flask webhooks deliver --once``)."""
        total = 0
        for _ in range(limit):
            made = self.deliver_due()
            total += made
            if not made:
                break
        return total

    def start(self):
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="crew7-webhooks", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else lease_seconds(self.app.config))
            self._thread = None

    def _run(self):
        interval = self._config("WEBHOOKS_INTERVAL") or 1.0
        with self.app.app_context():
            while not self._stop.is_set():
                made = 0
                try:
                    made = self.deliver_due()
                except SQLAlchemyError as exc:  # the database is away: the next pass retries
                    log.warning("webhook delivery pass failed: %s", str(exc).splitlines()[0][:200])
                except Exception:
                    log.exception("webhook delivery pass failed")
                finally:
                    db.session.remove()
                if not made:  # after an attempt, look again at once: more may be waiting
                    self._stop.wait(interval)


def get_deliverer(app):
    """The app's Deliverer, created on first use."""
    deliverer = app.extensions.get("crew7.webhooks")
    if deliverer is None:
        deliverer = app.extensions["crew7.webhooks"] = Deliverer(app)
    return deliverer


def start_delivery(app):
    """Deliver webhooks from this serving process (gunicorn's ``post_worker_init``);
    returns the thread, or None when ``WEBHOOKS_INTERVAL`` is 0."""
    if not app.config["WEBHOOKS_INTERVAL"]:
        return None
    return get_deliverer(app).start()
