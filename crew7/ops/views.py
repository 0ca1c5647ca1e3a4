"""Operators' endpoints: Prometheus metrics and cache analytics."""

import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from crew7.auth import admin_required
from crew7.services import metrics
from crew7.services.cache import get_cache_service
from crew7.services.changelog import get_relay

bp = Blueprint("ops", __name__)


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text format, every gunicorn worker included."""
    metrics.set_changelog(changelog_status())
    body, content_type = metrics.exposition(get_cache_service(current_app).front_hits())
    return Response(body, content_type=content_type)


@bp.get("/cache/stats")
@admin_required
def cache_stats():
    """Hits, misses, bypasses, computations and errors per key family, hit rate, keys, memory."""
    return jsonify(cache_report())


def cache_report():
    totals, redis_errors = metrics.cache_totals()
    families = {}
    lookups_all = hits_all = 0
    for family, events in sorted(totals.items()):
        hits = events.get("hit", 0)
        lookups = hits + events.get("miss", 0) + events.get("bypass", 0)
        lookups_all += lookups
        hits_all += hits
        families[family] = {**events, "hit_rate": round(hits / lookups, 4) if lookups else None}
    cache = get_cache_service(current_app)
    info = cache.info()
    rate, window_lookups, window_seconds = cache.window_hit_rate()
    return {
        "families": families,
        "hit_rate": round(hits_all / lookups_all, 4) if lookups_all else None,
        "redis_errors": redis_errors,
        "front_hits": get_cache_service(current_app).front_hits(),
        "breaker": info["breaker"],
        "keys": info["keys"],
        "memory_used": info["memory_used"],
        "redis_available": info["available"],
        "pending_invalidations": info["pending_invalidations"],
        "changelog": changelog_status(),
        "window": {
            "seconds": window_seconds,
            "hit_rate": None if rate is None else round(rate, 4),
            "lookups": window_lookups,
            "scope": "this process",
        },
    }


def changelog_status():
    """The change log's size and the relay's lag; what could not be read is None."""
    try:
        status = get_relay(current_app).status()
    except SQLAlchemyError as exc:
        current_app.logger.warning("change log status unavailable: %s", exc)
        return {"size": None, "lag_entries": None, "oldest_unapplied_age": None}
    status.pop("last_entries")
    return status


def _start_timer():
    g._crew7_started = time.perf_counter()


def _observe(response):
    started = g.pop("_crew7_started", None)
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.observe_request(rule, request.method, response.status_code, started)
    return response


def register_request_metrics(app):
    app.before_request(_start_timer)
    app.after_request(_observe)
