"""What the cache did: event counters per family and the hit-rate window."""

import logging
import time

from crew7.services.cache.documents import FAMILIES

log = logging.getLogger("crew7.services.cache")


class Counters:
    """What the cache did: per-process totals (for tests and this process) and the
    Prometheus counters per key family (aggregated across workers), in one call."""

    _FIELDS = {
        "hit": "hits",
        "miss": "misses",
        "bypass": "bypasses",
        "computation": "computations",
        "computation_error": "computation_errors",
        "wait": "waits",
        "wait_timeout": "wait_timeouts",
        "fill_rejected": "fills_rejected",
        "early_refresh": "early_refreshes",
    }

    def __init__(self, metrics=None):
        """``metrics``: the Prometheus ``cache_events`` (labels family, event) and
        ``redis_errors`` counters; without them only this process's totals are kept."""
        events = _Uncounted() if metrics is None else metrics.cache_events
        self._metric = {
            (family, event): events.labels(family, event)
            for family in FAMILIES
            for event in self._FIELDS
        }
        self._redis_errors = _Uncounted() if metrics is None else metrics.redis_errors
        self.window = HitRateWindow()
        self.reset()

    def reset(self):
        for field in self._FIELDS.values():
            setattr(self, field, 0)
        self.redis_errors = 0

    def record(self, family, event, n=1):
        field = self._FIELDS[event]
        setattr(self, field, getattr(self, field) + n)
        self._metric[(family, event)].inc(n)
        if event in ("hit", "miss", "bypass"):
            self.window.add(event == "hit", n)

    def redis_error(self):
        self.redis_errors += 1
        self._redis_errors.inc()

    def as_dict(self):
        return {f: getattr(self, f) for f in (*self._FIELDS.values(), "redis_errors")}


class _Uncounted:
    """Stands in for a Prometheus counter when none is given."""

    def labels(self, *labels):
        return self

    def inc(self, n=1):
        pass


class HitRateWindow:
    """Hit rate over a sliding window (per process); warns when it falls below a threshold.

    Lookups are counted in one-second buckets; the check runs at most every few seconds,
    so the hot path pays a dict update.
    """

    def __init__(self, seconds=60, threshold=0.0, min_lookups=100):
        self.configure(seconds, threshold, min_lookups)
        self.buckets = {}
        self._next_check = 0.0
        self._alerting = False

    def configure(self, seconds, threshold, min_lookups):
        self.seconds = seconds
        self.threshold = threshold
        self.min_lookups = min_lookups

    def add(self, hit, n=1):
        now = time.monotonic()
        second = int(now)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = [0, 0]
        bucket[0 if hit else 1] += n
        if now >= self._next_check:
            self._next_check = now + min(5.0, self.seconds / 4)
            self.check(now)

    def rate(self, now=None):
        now = time.monotonic() if now is None else now
        horizon = int(now) - self.seconds
        for second in [s for s in self.buckets if s <= horizon]:
            del self.buckets[second]
        hits = sum(b[0] for b in self.buckets.values())
        total = hits + sum(b[1] for b in self.buckets.values())
        return (hits / total if total else None), total

    def check(self, now=None):
        if not self.threshold:
            return
        rate, total = self.rate(now)
        low = rate is not None and total >= self.min_lookups and rate < self.threshold
        if low and not self._alerting:
            log.warning(
                "cache hit rate %.1f%% over the last %d s (%d lookups) is below %.0f%%",
                100 * rate,
                self.seconds,
                total,
                100 * self.threshold,
            )
        elif not low and self._alerting and rate is not None:
            log.warning("cache hit rate back to %.1f%%", 100 * rate)
        self._alerting = low
