"""Rankings (served under /stats): popular crews and leaderboards."""

from flask import Response, abort, current_app
from flask_smorest import Blueprint

from crew7.services import rankings as service
from crew7.services.cache import LEADERBOARD_TYPES

blp = Blueprint(
    "rankings", __name__, url_prefix="/stats", description="Rankings: popular crews, leaderboards"
)


def _json(body, ttl):
    return Response(
        body,
        mimetype="application/json",
        headers={"Cache-Control": f"public, max-age={ttl}", "Access-Control-Allow-Origin": "*"},
    )


@blp.get("/popular-crews")
@blp.alt_response(200, description="The most viewed public crews")
def popular_crews():
    """The most viewed public crews (the newest ones while nothing has been viewed)."""
    return _json(service.serve_popular_crews(), current_app.config["POPULAR_CREWS_TTL"])


@blp.get("/leaderboard/<string:kind>")
@blp.alt_response(200, description=f"Leaderboard; type is one of {', '.join(LEADERBOARD_TYPES)}")
def leaderboard(kind):
    """Top public crews by total runs or by success rate."""
    body = service.serve_leaderboard(kind)
    if body is None:
        abort(404, f"unknown leaderboard type {kind[:40]!r}: use {', '.join(LEADERBOARD_TYPES)}")
    return _json(body, current_app.config["STATS_TTL"])
