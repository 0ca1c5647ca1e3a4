"""The cache change log's relay: entries the database's triggers wrote into
``cache_changes`` (``crew7.changelog_triggers``) become invalidations, applied until
Redis has them.

Each poll reads the entries after the watermark (``changelog:applied``: the last entry
whose invalidations are applied) with one indexed query (plus one for the agents of
changed crews), invalidates their keys, and only then raises the watermark. Invalidation
is idempotent, so several processes may relay at once.

Ids are committed in any order on PostgreSQL: an id missing below newer entries may
belong to a transaction still open. The watermark stays below such a gap until the entry
appears or ``CACHE_CHANGELOG_GAP_WAIT`` passes (a rollback leaves the gap for ever).

A missing watermark (Redis restarted or flushed) replays every entry newer than the
longest TTL plus a margin; a lower one than this process saw (a lagging replica promoted)
and any Redis error make the next poll apply everything after Redis's watermark again.

Runs in every serving process (a daemon thread started by gunicorn's
``post_worker_init``, see ``start_relay``), and right after a writer's own invalidations
(``crew7.invalidation.after_commit``).
"""

import logging
import os
import threading
import time
from datetime import timedelta

from sqlalchemy import delete, func, select

from crew7.models import Agent, CacheChange, utcnow
from crew7.services import metrics
from crew7.services.cache import CacheUnavailable, get_cache_service
from crew7.services.changelog_entries import crews_needing_agents, expand

log = logging.getLogger(__name__)

BATCH = 1000
PRUNE_BATCH = 5000
PRUNE_EVERY = 10.0  # seconds between pruning passes of one process
MAX_GAPS = 10000
BACKLOG_WAIT = 60  # seconds a start-up may spend applying a backlog before serving
REPLAY_CLAIM_TTL = 10  # seconds: a replaying process that dies holds the others back so long


def _entries_after(conn, cursor):
    """The next batch of entries after ``cursor``, in id order (one indexed query)."""
    return conn.execute(
        select(CacheChange.id, CacheChange.kind, CacheChange.ref_id)
        .where(CacheChange.id > cursor)
        .order_by(CacheChange.id)
        .limit(BATCH)
    ).all()


def _agents_of_changed_crews(conn, entries):
    """``{crew_id: [agent ids]}`` of the crews whose agents the entries name, as they are
    now (one query, none when no entry names a crew)."""
    agents = {}
    crews = crews_needing_agents(entries)
    if crews:
        rows = conn.execute(select(Agent.id, Agent.crew_id).where(Agent.crew_id.in_(sorted(crews))))
        for agent_id, crew_id in rows:
            agents.setdefault(crew_id, []).append(agent_id)
    return agents


class ChangeRelay:
    """One process's relay of the change log of one app (``app.extensions``)."""

    def __init__(self, app):
        self.app = app
        config = app.config
        self.interval = config["CACHE_CHANGELOG_INTERVAL"]
        self.retention = max(config["CACHE_CHANGELOG_RETENTION"], config["FEED_RETENTION"])
        self.margin = config["CACHE_CHANGELOG_REPLAY_MARGIN"]
        self.gap_wait = config["CACHE_CHANGELOG_GAP_WAIT"]
        self.cursor = None  # the highest id this process has read and applied
        self.mark_seen = None  # the highest watermark this process has seen in Redis
        # Rewinds (``rewind``) requested, and done by a poll started after the request.
        self._rewinds = self._rewound = 0
        self.gaps = {}  # id -> monotonic time first seen missing
        self.applied = 0  # entries applied by this process
        self.replays = 0  # lost watermarks this process replayed from
        self.last_replay = None  # {"from_id", "entries"} of the latest replay
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._last_prune = 0.0
        self._db_engine = None

    def engine(self):
        """The app's engine (the relay uses its own connections, never the session)."""
        if self._db_engine is None:
            from crew7.extensions import db

            with self.app.app_context():
                self._db_engine = db.engine
        return self._db_engine

    # -- one poll -------------------------------------------------------------
    def replay_window(self, cache):
        """Seconds back a lost watermark replays: the longest TTL plus the margin."""
        return max([*cache.ttl_of.values(), cache.negative_ttl]) + self.margin

    def poll(self, blocking=True):
        """Apply what is new; returns the number of entries applied (0 when Redis or the
        database did not answer: the next poll tries again)."""
        return self._locked_poll(blocking) or 0

    def _locked_poll(self, blocking=True):
        """As ``poll``, but None when nothing could be applied (Redis did not answer,
        another process replays, another thread of this one polls)."""
        if not self._lock.acquire(blocking=blocking):
            return None
        try:
            return self._poll()
        finally:
            self._lock.release()

    def catch_up(self):
        """Apply everything the log holds beyond Redis's watermark, now: True once done
        (``CacheService.catch_up``: Redis is read again only after this succeeds)."""
        try:
            while True:
                applied = self._locked_poll()
                if applied is None:
                    return False
                if applied < BATCH:
                    return True
        except Exception:
            log.exception("cache change log relay: catching up failed")
            return False

    def rewind(self):
        """After a Redis error (``CacheService.on_distrust``): the next poll applies every
        entry after Redis's watermark, including those this process applied above it (a
        server that came back, or took over, may lack them)."""
        self._rewinds += 1

    def _poll(self):
        cache = get_cache_service(self.app)
        requested = self._rewinds
        try:
            mark = cache.changelog_watermark()
        except CacheUnavailable:
            return None
        replay = mark is None
        if replay:
            mark = self._claim_replay(cache)
            if mark is False:
                return None
            replay = mark is None
        try:
            applied = self._poll_from(cache, mark, rewind=self._rewound < requested)
            if applied is not None:
                self._rewound = max(self._rewound, requested)
            return applied
        finally:
            if replay:
                cache.release(cache.replay_key())

    def _claim_replay(self, cache):
        """None (replay: this process holds the claim), the watermark (another process
        replayed and released the claim between our read and our claim), or False (another
        replays now, or Redis failed): applying its entries again would refuse fills."""
        try:
            if not cache.claim(cache.replay_key(), os.getpid(), REPLAY_CLAIM_TTL):
                return False
            mark = cache.changelog_watermark()
        except CacheUnavailable:
            return False
        if mark is not None:
            cache.release(cache.replay_key())
        return mark

    def _poll_from(self, cache, mark, rewind=False):
        replay = mark is None
        with self.engine().connect() as conn:
            if replay:
                cursor = self._replay_start(conn, cache)
                gaps = {}
            elif self.mark_seen is not None and mark < self.mark_seen:
                # The watermark only rises, so Redis lost writes: a replica that lagged
                # was promoted (or a snapshot restored). Invalidations acknowledged since
                # its watermark may be lost with them: apply those entries again.
                log.warning(
                    "cache change log: the watermark went back from %d to %d (a failover "
                    "or restore); applying the entries since again",
                    self.mark_seen,
                    mark,
                )
                replay, cursor, gaps = True, mark, {}
            elif rewind or self.cursor is None:
                cursor, gaps = mark, {i: t for i, t in self.gaps.items() if i > mark}
            else:
                cursor = max(self.cursor, mark)
                gaps = {i: t for i, t in self.gaps.items() if i > mark}
            rows = _entries_after(conn, cursor)
            filled = []
            if gaps:
                filled = conn.execute(
                    select(CacheChange.id, CacheChange.kind, CacheChange.ref_id).where(
                        CacheChange.id.in_(sorted(gaps))
                    )
                ).all()
            entries = [(r.kind, r.ref_id) for r in (*rows, *filled)]
            agents = _agents_of_changed_crews(conn, entries)
        now = time.monotonic()
        for row in filled:
            gaps.pop(row.id, None)
        expected = cursor + 1
        for row in rows:
            for missing in range(expected, row.id):
                if len(gaps) < MAX_GAPS:
                    gaps.setdefault(missing, now)
            expected = row.id + 1
        gaps = {i: t for i, t in gaps.items() if now - t < self.gap_wait}
        new_cursor = rows[-1].id if rows else cursor
        watermark = min(gaps) - 1 if gaps else new_cursor
        if not entries and not replay and watermark <= (mark or 0):
            self.cursor, self.gaps = new_cursor, gaps
            self.mark_seen = max(self.mark_seen or 0, mark)
            return 0
        keys, views = expand(entries, agents, cache.key_of, cache.stats_keys())
        if not cache.apply_changes(keys, views, watermark):
            return None
        self.cursor, self.gaps = new_cursor, gaps
        self.mark_seen = (
            max(watermark, mark or 0) if replay else max(self.mark_seen or 0, watermark, mark)
        )
        self.applied += len(entries)
        metrics.changelog_applied.inc(len(entries))
        if replay:
            self.replays += 1
            metrics.changelog_replays.inc()
            self.last_replay = {"from_id": cursor + 1, "entries": len(entries)}
            log.warning(
                "cache change log: replayed %d entries from id %d",
                len(entries),
                cursor + 1,
            )
        return len(entries)

    def _replay_start(self, conn, cache):
        """The id before the first entry a lost watermark must replay."""
        since = utcnow() - timedelta(seconds=self.replay_window(cache))
        first = conn.execute(
            select(func.min(CacheChange.id)).where(CacheChange.created_at >= since)
        ).scalar()
        if first is not None:
            return first - 1
        return conn.execute(select(func.max(CacheChange.id))).scalar() or 0

    def replay_all(self):
        """Apply every retained entry (``flask cache-replay``); returns how many."""
        with self._lock:
            self.cursor = 0
            self.gaps = {}
            cache = get_cache_service(self.app)
            try:
                mark = cache.changelog_watermark()
            except CacheUnavailable:
                mark = None
            total = 0
            while True:
                before = self.cursor
                total += self._apply_from(cache, before)
                if self.cursor == before:
                    break
            if mark is not None and self.cursor < mark:
                self.cursor = mark
            return total

    def _apply_from(self, cache, cursor):
        with self.engine().connect() as conn:
            rows = _entries_after(conn, cursor)
            entries = [(r.kind, r.ref_id) for r in rows]
            agents = _agents_of_changed_crews(conn, entries)
        if not rows:
            return 0
        keys, views = expand(entries, agents, cache.key_of, cache.stats_keys())
        if not cache.apply_changes(keys, views, rows[-1].id):
            raise CacheUnavailable("Redis did not take the invalidations")
        self.cursor = rows[-1].id
        self.applied += len(rows)
        metrics.changelog_applied.inc(len(rows))
        return len(rows)

    # -- pruning --------------------------------------------------------------
    def prune(self, limit=PRUNE_BATCH):
        """Delete up to ``limit`` entries older than the retention; returns how many."""
        cutoff = utcnow() - timedelta(seconds=self.retention)
        old = (
            select(CacheChange.id)
            .where(CacheChange.created_at < cutoff)
            .order_by(CacheChange.id)
            .limit(limit)
        )
        with self.engine().begin() as conn:
            return conn.execute(delete(CacheChange).where(CacheChange.id.in_(old))).rowcount

    # -- the thread -----------------------------------------------------------
    def wake(self):
        """After a commit: poll now (the thread), or here when no thread runs."""
        if self._thread is not None and self._thread.is_alive():
            self._wake.set()
        else:
            self.poll(blocking=False)

    def start_up(self, wait=REPLAY_CLAIM_TTL):
        """A serving process's first polls, before it serves or warms: applies what is new
        (replays a lost watermark) to the end of the backlog, or waits, up to ``wait``
        seconds, for the process that replays. Returns True once the watermark is in
        Redis."""
        cache = get_cache_service(self.app)
        deadline = time.monotonic() + wait
        while True:
            try:
                # The whole backlog: a batch applied after serving began would replace
                # fences under fills in flight (refused, computed again).
                while self.poll() >= BATCH and time.monotonic() < deadline + BACKLOG_WAIT:
                    pass
                if cache.changelog_watermark() is not None:
                    return True
            except CacheUnavailable:
                return False
            except Exception:
                log.exception("cache change log relay: start-up poll failed")
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def start(self):
        """Poll every ``CACHE_CHANGELOG_INTERVAL`` seconds in a daemon thread (the first
        poll at once); returns the thread."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="crew7-changelog", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout=5):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self):
        with self.app.app_context():
            while not self._stop.is_set():
                try:
                    # A full batch means more is waiting: read on without sleeping.
                    while self.poll() >= BATCH and not self._stop.is_set():
                        pass
                    if time.monotonic() - self._last_prune >= PRUNE_EVERY:
                        self._last_prune = time.monotonic()
                        self.prune()
                except Exception:
                    log.exception("cache change log relay: poll failed")
                self._wake.wait(self.interval)
                self._wake.clear()

    # -- what operators see ------------------------------------------------------
    def status(self, last=0):
        """Log size, watermark and lag, what this process applied, and the ``last``
        entries (``crew7.services.changelog_status``)."""
        from crew7.services.changelog_status import relay_status

        return relay_status(self, last)


def get_relay(app):
    """The app's ChangeRelay."""
    return app.extensions["crew7.changelog"]


def init_app(app):
    """The app's relay; the cache catches up through it before it trusts Redis again."""
    relay = app.extensions["crew7.changelog"] = ChangeRelay(app)
    cache = get_cache_service(app)
    cache.catch_up = relay.catch_up
    cache.on_distrust = relay.rewind


def start_relay(app, first_poll=True):
    """Relay the change log in this serving process (gunicorn's ``post_worker_init``
    calls this before ``start_warming``): one poll now, so that what a lost watermark
    replays lands before this process serves or warms anything, then a thread. Returns
    the thread, or None when ``CACHE_CHANGELOG_INTERVAL`` is 0."""
    if not app.config["CACHE_CHANGELOG_INTERVAL"]:
        return None
    relay = get_relay(app)
    if first_poll and not relay.start_up():
        get_cache_service(app).distrust()  # read around Redis until the relay catches up
    return relay.start()
