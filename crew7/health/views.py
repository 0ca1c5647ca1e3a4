"""Liveness, readiness, and the benchmark baseline route."""

import json

from flask import Blueprint, Response, current_app, jsonify
from flask_caching import Cache
from sqlalchemy import text

from crew7.errors import error_response
from crew7.extensions import db
from crew7.services.cache import get_cache_service
from crew7.services.metadata import render_crew

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
# The @memoize peer's Flask-Caching, as its users configure it (cachelib's pickle
# serializer), on the app's Redis client under its own prefix.
bench_cache = Cache()


@bench_bp.record_once
def _init_bench_cache(state):
    config = state.app.config
    bench_cache.init_app(
        state.app,
        config={
            "CACHE_TYPE": config["CACHE_TYPE"],
            "CACHE_REDIS_HOST": config["CACHE_REDIS_HOST"],
            "CACHE_KEY_PREFIX": "bench:memoize:",
            "CACHE_DEFAULT_TIMEOUT": 300,
            "CACHE_SERIALIZER": None,  # not the app's: the backend's own (pickle)
        },
    )


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


@bench_bp.get("/memoize/<int:crew_id>")
def memoize_document(crew_id):
    """The benchmark's peer: what a user of Flask-Caching would write, ``@memoize`` over
    the same Redis around the document built from the database, served by ``jsonify``."""
    document = _memoized_crew_document(crew_id)
    if document is None:
        return Response(b'{"error":"not found"}', status=404, mimetype="application/json")
    response = jsonify(document)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bench_cache.memoize(timeout=300)
def _memoized_crew_document(crew_id):
    body = render_crew(crew_id)
    return None if body is None else json.loads(body)
