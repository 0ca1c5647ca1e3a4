"""Prometheus metrics, aggregated across gunicorn workers.

Under gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any worker imports this module; every process then writes its
counters to memory-mapped files there, and ``/metrics`` or ``/cache/stats`` merge them.
Counting costs a few microseconds and no Redis round trip.
"""

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import CounterMetricFamily

CACHE_EVENTS = (
    "hit",
    "miss",
    "bypass",
    "computation",
    "computation_error",
    "wait",
    "wait_timeout",
    "fill_rejected",
    "early_refresh",
)

cache_events = Counter(
    "crew7_cache_events_total",
    "What the metadata cache did, per key family",
    ["family", "event"],
)
redis_errors = Counter("crew7_cache_redis_errors_total", "Redis calls that failed")
breaker_open = Gauge(
    "crew7_cache_breaker_open",
    "1 while this process skips Redis (circuit breaker open)",
    multiprocess_mode="max",
)
# The cache change log: set at scrape time from the database and Redis (the same value
# in every process, so the most recent one is shown), and what the relays applied.
changelog_entries = Gauge(
    "crew7_cache_changelog_entries",
    "Entries retained in the cache change log (cache_changes)",
    multiprocess_mode="mostrecent",
)
changelog_lag = Gauge(
    "crew7_cache_changelog_lag_entries",
    "Change-log entries after the watermark: written, invalidations not yet applied",
    multiprocess_mode="mostrecent",
)
changelog_oldest = Gauge(
    "crew7_cache_changelog_oldest_unapplied_seconds",
    "Age of the oldest change-log entry whose invalidations are not applied (0: none)",
    multiprocess_mode="mostrecent",
)
changelog_applied = Counter(
    "crew7_cache_changelog_applied_total", "Change-log entries applied by the relays"
)
changelog_replays = Counter(
    "crew7_cache_changelog_replays_total",
    "Replays of the retained window after the watermark was found missing",
)
http_requests = Counter(
    "crew7_http_requests_total", "HTTP requests", ["endpoint", "method", "status"]
)
http_latency = Histogram(
    "crew7_http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def multiprocess_enabled():
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def registry():
    """The registry to expose: every worker's values under gunicorn, else this process's."""
    if multiprocess_enabled():
        merged = CollectorRegistry()
        _multiprocess.MultiProcessCollector(merged)
        return merged
    return REGISTRY


def exposition(front_hits=None):
    """The text format; ``front_hits`` ({family: n}, read from Redis at scrape time) as
    ``crew7_front_hits_total``: documents nginx served without the app."""
    body = generate_latest(registry())
    if front_hits is not None:
        front = CollectorRegistry()
        front.register(_FrontHits(front_hits))
        body += generate_latest(front)
    return body, CONTENT_TYPE_LATEST


class _FrontHits:
    def __init__(self, hits):
        self.hits = hits

    def collect(self):
        family = CounterMetricFamily(
            "crew7_front_hits",
            "Metadata documents nginx served from Redis without the app, per key family",
            labels=["family"],
        )
        for name, value in sorted(self.hits.items()):
            family.add_metric([name], value)
        yield family


def cache_totals():
    """{family: {event: count}} summed over all processes, plus Redis errors."""
    totals = {}
    errors = 0
    for metric in registry().collect():
        if metric.name == "crew7_cache_events":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    family = totals.setdefault(sample.labels["family"], {})
                    event = sample.labels["event"]
                    family[event] = family.get(event, 0) + int(sample.value)
        elif metric.name == "crew7_cache_redis_errors":
            errors += sum(int(s.value) for s in metric.samples if s.name.endswith("_total"))
    return totals, errors


def set_changelog(status):
    """The change log's gauges from ``ChangeRelay.status()`` (at scrape time)."""
    if status["size"] is None:
        return  # the database did not answer: the last values stay
    changelog_entries.set(status["size"])
    if status["lag_entries"] is not None:
        changelog_lag.set(status["lag_entries"])
    changelog_oldest.set(status["oldest_unapplied_age"] or 0.0)


def observe_request(endpoint, method, status, started):
    http_requests.labels(endpoint, method, str(status)).inc()
    http_latency.labels(endpoint).observe(time.perf_counter() - started)


def worker_exit(pid):
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges."""
    if multiprocess_enabled():
        _multiprocess.mark_process_dead(pid)
