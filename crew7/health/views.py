"""Liveness, readiness, and the benchmark baseline route."""

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from crew7.errors import error_response
from crew7.extensions import db
from crew7.services.cache import get_cache_service

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The database and Redis are reachable; 503 naming what is down."""
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready"
        db.session.rollback()
        checks["database"] = f"down: {type(exc).__name__}"
    checks["redis"] = "ok" if get_cache_service(current_app).ping() else "down"
    down = [name for name, state in checks.items() if state != "ok"]
    if not down:
        return jsonify(status="ok", checks=checks)
    error = error_response(503, f"unavailable: {', '.join(down)}").get_json()
    return jsonify(**error, checks=checks), 503, {"Retry-After": "5"}


bench_bp = Blueprint("bench", __name__, url_prefix="/bench")
_STATIC = None


@bench_bp.get("/static")
def static_document():
    """The benchmark's baseline: fixed bytes, no cache or database work."""
    global _STATIC
    if _STATIC is None:
        _STATIC = b'{"name":"baseline","description":"' + b"x" * 1500 + b'","attributes":[]}'
    return Response(
        _STATIC,
        mimetype="application/json",
        headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300"},
    )


@bench_bp.get("/redis-get/<int:crew_id>")
def redis_get(crew_id):
    """The benchmark's reference hit: one bare Redis GET of the stored document."""
    cache = get_cache_service(current_app)
    body = cache.get_unguarded(cache.crew_key(crew_id))
    if body is None:
        return Response(b'{"error":"not cached"}', status=404, mimetype="application/json")
    return Response(
        body,
        mimetype="application/json",
        headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300"},
    )
