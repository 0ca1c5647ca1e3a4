"""The read-through: a hit, a single-flight miss, batches, warming, early refresh."""

import logging
import math
import os
import random
import time

from crew7.services.cache.client import REDIS_ERRORS, CacheUnavailable
from crew7.services.cache.documents import NOT_FOUND
from crew7.services.cache.scripts import _fence_token, _lock_token, _text

log = logging.getLogger("crew7.services.cache")


class ReadThrough:
    """The service's read-through methods."""

    def read_through(self, family, key, compute, count_view=None, ttl=None, refresh=False):
        """The stored bytes of ``key``, computed with ``compute()`` on a miss.

        Redis is read only while it is trusted (``regain_trust``): after a Redis error the
        document is computed, not cached, until the change log is caught up.

        ``compute`` returns the document's JSON bytes, or None when the id is unknown
        or private (cached briefly as ``null``). Exactly one caller computes a cold key;
        the others wait for its result (bounded), then compute themselves. ``count_view``
        names the crew whose view to count when the document is public; ``ttl`` overrides
        the family's. ``refresh``: refresh a hit early whatever XFetch says here (the front
        decided it).
        """
        if not self.enabled or not (self.trusted or self.regain_trust()):
            self.counters.record(family, "bypass")
            return self._compute(family, compute)
        keys, args = self._read_keys(key, count_view)
        try:
            reply = self._call(self.scripts.run, "read", keys, args)  # not _run: one frame less
        except CacheUnavailable:
            self.counters.record(family, "bypass")
            return self._compute(family, compute)
        if reply[0] == 1:
            value = reply[1]
            self._served_hit(
                family, key, value, reply[2], count_view, compute, ttl, refresh=refresh
            )
            return value
        self.counters.record(family, "miss")
        value = self._fill(family, key, compute, ttl)
        if count_view is not None and value != NOT_FOUND:
            self.count_view(count_view)
        return value

    def try_hit(self, family, key, compute, count_view=None, defer=None):
        """The stored public document of ``key`` if this one round trip finds it, served
        and counted exactly as ``read_through`` serves a hit; otherwise None, with nothing
        recorded, and the caller answers through ``read_through``: on a miss, a negative
        entry, a disabled cache, an untrusted Redis (``regain_trust``), an open breaker,
        pending invalidations, or a Redis error
        (``read_through`` tries again and counts that failure once). An early refresh is
        handed to ``defer`` (the service's own by default)."""
        # Whatever makes read_through skip Redis (its guards at the top) returns None here:
        # an untrusted Redis is caught up by read_through before it is read.
        if (
            not self.enabled
            or not self.trusted
            or self._pending
            or self.breaker.opened_at is not None
        ):
            return None
        keys, args = self._read_keys(key, count_view)
        try:
            reply = self.scripts.run("read", keys, args)
        except REDIS_ERRORS:
            # Read around Redis until caught up: the connection may come back to another
            # server (a failover) that lacks invalidations. read_through counts the error.
            self.distrust()
            return None
        self.breaker.success()
        if reply[0] != 1 or reply[1] == NOT_FOUND:
            return None
        value = reply[1]
        self._served_hit(family, key, value, reply[2], count_view, compute, None, defer)
        return value

    def _read_keys(self, key, count_view):
        if count_view is not None and self.views is None:
            return [key, self._views_key], (count_view, self.popularity_size)
        return [key], ()

    def _served_hit(
        self, family, key, value, pttl, count_view, compute, ttl, defer=None, refresh=False
    ):
        self.counters.record(family, "hit")
        if self.views is not None and count_view is not None and value != NOT_FOUND:
            self.views.add(count_view)
        if refresh or self._should_refresh_early(family, pttl):
            self._schedule_early_refresh(family, key, compute, ttl, defer)

    def fill_many(self, family, keys, compute_many, ttl=None):
        """Documents for many keys that missed, computed together: ``(values, outcomes)``,
        dicts by key. An outcome is ``"present"`` (already cached, or filled by another
        process), ``"stored"``, ``"refused"`` (an invalidation raced the fill) or
        ``"unknown"`` (null: the id is unknown or private; remembered briefly like any miss).

        The keys this process locks are computed by one call of ``compute_many(keys)``
        (a dict by key of bytes, or None for unknown or private) and filled in one round
        trip, each fenced as a single fill is. Keys that appeared meanwhile are taken as
        they are; keys another process is computing are waited for one by one, as a
        single miss waits. Raises CacheUnavailable when Redis fails.
        """
        if not (self.trusted or self.regain_trust()):
            # What a lock step finds present could be what a lost invalidation left.
            raise CacheUnavailable("Redis not trusted until the change log is caught up")
        token = _lock_token()
        replies = self._acquire_many(keys, token)
        values, outcomes, mine, held = {}, {}, {}, []
        for key, reply in zip(keys, replies, strict=True):
            if reply[0] == 1:
                values[key], outcomes[key] = reply[1], "present"
            elif reply[0] == 2:
                mine[key] = _text(reply[1])
            else:
                held.append(key)
        if mine:
            computed = self._compute_many(family, list(mine), compute_many, token)
            if ttl is None:
                ttl = self.ttl[family]
            stored = self._fill_many(computed, mine, token, ttl)
            for key, value in computed.items():
                values[key] = value
                if value == NOT_FOUND:
                    outcomes[key] = "unknown"
                elif stored[key]:
                    outcomes[key] = "stored"
                else:
                    self.counters.record(family, "fill_rejected")
                    outcomes[key] = "refused"
        for key in held:
            self.counters.record(family, "wait")
            value = self._wait_for(key, self.lock_key(key), time.monotonic() + self.wait_max)
            if value is None:  # the holder stored nothing in time: compute it here
                value = compute_many([key]).get(key) or NOT_FOUND
            values[key], outcomes[key] = value, "present"
        return values, outcomes

    def _acquire_many(self, keys, token):
        if self.cluster:
            return [self._acquire(key, token) for key in keys]
        triples = [k for key in keys for k in (key, self.lock_key(key), self.fence_key(key))]
        fences = [_fence_token() for _ in keys]
        return self._run("acquire_many", triples, [token, self.lease_ms, self.FENCE_TTL, *fences])

    def _compute_many(self, family, keys, compute_many, token):
        started = time.perf_counter()
        try:
            documents = compute_many(keys)
        except BaseException:
            for key in keys:
                self._release(self.lock_key(key), token)
            self.counters.record(family, "computation_error")
            raise
        elapsed = time.perf_counter() - started
        self.counters.record(family, "computation", len(keys))
        self._delta[family] = 0.8 * self._delta[family] + 0.2 * elapsed / len(keys)
        if self.trace:
            for key in keys:
                log.info("cache compute key=%s pid=%d ms=%.1f", key, os.getpid(), elapsed * 1000)
        if self.fill_delay:
            time.sleep(self.fill_delay)  # fault injection: widen the race window
        return {key: documents.get(key) or NOT_FOUND for key in keys}

    def _fill_many(self, computed, fences, token, ttl):
        def ttl_ms(value):
            return int((self.negative_ttl if value == NOT_FOUND else ttl) * 1000)

        if self.cluster:
            return {
                key: bool(
                    self._run(
                        "fill",
                        [key, self.fence_key(key), self.lock_key(key)],
                        [value, ttl_ms(value), fences[key], token],
                    )
                )
                for key, value in computed.items()
            }
        triples, args = [], [token]
        for key, value in computed.items():
            triples += [key, self.lock_key(key), self.fence_key(key)]
            args += [value, ttl_ms(value), fences[key]]
        stored = self._run("fill_many", triples, args)
        return dict(zip(computed, (bool(s) for s in stored), strict=True))

    def _acquire(self, key, token):
        return self._run(
            "acquire",
            [key, self.lock_key(key), self.fence_key(key)],
            [token, self.lease_ms, _fence_token(), self.FENCE_TTL],
        )

    def _fill(self, family, key, compute, ttl=None):
        lock_key = self.lock_key(key)
        token = _lock_token()
        deadline = time.monotonic() + self.wait_max
        while True:
            try:
                reply = self._acquire(key, token)
            except CacheUnavailable:
                return self._compute(family, compute)
            if reply[0] == 1:
                return reply[1]
            if reply[0] == 2:
                fence = _text(reply[1])
                return self._compute_and_store(family, key, compute, fence, token, ttl)
            self.counters.record(family, "wait")
            value = self._wait_for(key, lock_key, deadline)
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                # The holder is slow and its lease still runs: answer anyway, uncached.
                self.counters.record(family, "wait_timeout")
                return self._compute(family, compute)
            # The lock was released without a value (the fill was fenced out, or the
            # holder failed): try to take it, reading the fence again, before the database.

    def _wait_for(self, key, lock_key, deadline):
        """Poll until the value appears (return it) or the lock goes away (return None)."""
        delay = 0.002
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.025)
            try:
                # The lock first, then the value: the holder stores the value and releases
                # the lock atomically, so "no lock, then no value" means it stored nothing.
                # (The other order can fall between the two and compute a second time.)
                locked, value = self._run("peek", [lock_key, key])
            except CacheUnavailable:
                return None
            if value is not None:
                return value
            if not locked:
                return None
        return None

    def _compute(self, family, compute, key=None):
        started = time.perf_counter()
        try:
            document = compute()
        except Exception:
            self.counters.record(family, "computation_error")
            raise
        elapsed = time.perf_counter() - started
        self.counters.record(family, "computation")
        self._delta[family] = 0.8 * self._delta[family] + 0.2 * elapsed
        if self.trace:
            log.info("cache compute key=%s pid=%d ms=%.1f", key, os.getpid(), elapsed * 1000)
        return NOT_FOUND if document is None else document

    def _compute_and_store(self, family, key, compute, fence, token, ttl=None):
        try:
            value = self._compute(family, compute, key)
            if self.fill_delay:
                time.sleep(self.fill_delay)  # fault injection: widen the race window
        except BaseException:
            self._release(self.lock_key(key), token)
            raise
        if value == NOT_FOUND:
            ttl = self.negative_ttl
        elif ttl is None:
            ttl = self.ttl[family]
        try:
            stored = self._run(
                "fill",
                [key, self.fence_key(key), self.lock_key(key)],
                [value, int(ttl * 1000), fence, token],
            )
            if not stored:
                self.counters.record(family, "fill_rejected")
                if self.trace:
                    log.info("cache fill rejected key=%s pid=%d", key, os.getpid())
        except CacheUnavailable:
            pass
        return value

    def _release(self, lock_key, token):
        try:
            self._run("release", [lock_key], [token])
        except CacheUnavailable:
            pass

    def _should_refresh_early(self, family, pttl):
        return should_refresh_early(
            pttl, self._delta[family], self.xfetch_beta, self.refresh_window, random.random()
        )

    def _schedule_early_refresh(self, family, key, compute, ttl=None, defer=None):
        """Refresh after the response is sent, so no client waits on the computation."""

        def refresh():
            try:
                self._refresh_early(family, key, compute, ttl)
            except Exception:
                log.exception("early refresh of %s failed", key)

        (defer or self.defer)(refresh)

    def _refresh_early(self, family, key, compute, ttl=None):
        """Recompute a hot key before it expires; only the lock holder does it."""
        lock_key = self.lock_key(key)
        token = _lock_token()
        try:
            fence = self._run(
                "lease",
                [lock_key, self.fence_key(key)],
                [token, self.lease_ms, _fence_token(), self.FENCE_TTL],
            )
        except CacheUnavailable:
            return
        if fence is None:
            return  # another process holds the lock
        fence = _text(fence)
        self.counters.record(family, "early_refresh")
        self._compute_and_store(family, key, compute, fence, token, ttl)


def should_refresh_early(pttl_ms, delta, beta, window, u):
    """XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh a key whose
    remaining life is ``pttl_ms`` when ``-delta * beta * ln(1 - u) >= remaining``, ``u``
    uniform in [0, 1). The chance rises as expiry nears, so one request refreshes a hot
    key before it expires. ``delta`` (seconds one computation takes) counts for at least
    ``window``: computations take milliseconds, and a window that short would let the key
    expire between two requests."""
    if pttl_ms is None or pttl_ms < 0:
        return False
    scale = max(delta * beta, window)
    if scale <= 0:
        return False
    return -scale * math.log(1.0 - u) * 1000 >= pttl_ms
