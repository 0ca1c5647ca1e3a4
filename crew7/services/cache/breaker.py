"""The circuit breaker: Redis is skipped for a while after consecutive failures."""

import logging
import threading
import time

log = logging.getLogger("crew7.services.cache")


class CircuitBreaker:
    """Per-process breaker: open after ``threshold`` consecutive failures, for ``cooldown`` s.

    After the cooldown one caller probes Redis (half-open); success closes it.
    One warning when it opens, one when it closes.
    """

    def __init__(self, threshold, cooldown, on_close=None, gauge=None):
        self.threshold = threshold
        self.gauge = gauge  # set to 1 while open, 0 when closed (a Prometheus gauge)
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at = None
        self.on_close = on_close
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self):
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self):
        if self.opened_at is None:
            return True
        with self._lock:
            if self._probing or time.monotonic() - self.opened_at < self.cooldown:
                return False
            self._probing = True
            return True

    def success(self):
        if self.opened_at is None and not self.failures:
            return
        with self._lock:
            reopened = self.opened_at is not None
            self.failures = 0
            self._probing = False
            if reopened and self.on_close is not None and not self.on_close():
                # Pending invalidations could not be applied: stay open.
                self.opened_at = time.monotonic()
                return
            self.opened_at = None
        if reopened:
            self._set_gauge(0)
            log.warning("Redis reachable again: cache circuit breaker closed")

    def _set_gauge(self, value):
        if self.gauge is not None:
            self.gauge.set(value)

    def failure(self, exc):
        with self._lock:
            self.failures += 1
            self._probing = False
            if self.opened_at is not None:
                self.opened_at = time.monotonic()
                return
            if self.failures < self.threshold:
                return
            self.opened_at = time.monotonic()
        self._set_gauge(1)
        log.warning(
            "Redis unavailable (%s: %s): cache circuit breaker open, serving from the "
            "database for %.1f s",
            type(exc).__name__,
            exc,
            self.cooldown,
        )
