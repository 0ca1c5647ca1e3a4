"""Popular crews and leaderboards, computed from ``crew_stats`` and cached."""

import json

from flask import current_app
from sqlalchemy import select

from crew7.extensions import db
from crew7.models import Crew, CrewStats
from crew7.services.cache import LEADERBOARD_TYPES, get_cache_service

LEADERBOARD_SIZE = 10
# A success rate over very few runs says little: rank only crews with this many.
MIN_FINISHED_FOR_RATE = 5


def popular_crew_ids(limit):
    """Most viewed public crews; the newest public crews while there are no views yet."""
    cache = get_cache_service(current_app)
    ranked = cache.popular_crew_ids(limit * 3) if cache.enabled else []
    ids = []
    if ranked:
        public = set(
            db.session.scalars(select(Crew.id).where(Crew.id.in_(ranked), Crew.is_public.is_(True)))
        )
        ids = [i for i in ranked if i in public][:limit]
    if len(ids) < limit:
        newest = db.session.scalars(
            select(Crew.id)
            .where(Crew.is_public.is_(True), Crew.id.not_in(ids or [0]))
            .order_by(Crew.created_at.desc(), Crew.id.desc())
            .limit(limit - len(ids))
        )
        ids.extend(newest)
    return ids


def _crew_summary(crew, stats):
    return {
        "id": crew.id,
        "name": crew.name,
        "total_runs": stats.total_runs if stats else 0,
        "success_rate": stats.success_rate if stats else None,
        "metadata_url": f"/metadata/crew/{crew.id}",
    }


def render_popular_crews():
    limit = current_app.config["CACHE_WARM_COUNT"] or LEADERBOARD_SIZE
    ids = popular_crew_ids(limit)
    rows = {
        c.id: (c, s)
        for c, s in db.session.execute(
            select(Crew, CrewStats).outerjoin(CrewStats).where(Crew.id.in_(ids or [0]))
        )
    }
    crews = [_crew_summary(*rows[i]) for i in ids if i in rows]
    return json.dumps({"crews": crews}, separators=(",", ":")).encode()


def render_leaderboard(kind):
    q = select(Crew, CrewStats).join(CrewStats).where(Crew.is_public.is_(True))
    if kind == "runs":
        q = q.order_by(CrewStats.total_runs.desc(), Crew.id)
    else:
        finished = CrewStats.succeeded_runs + CrewStats.failed_runs
        q = q.where(finished >= MIN_FINISHED_FOR_RATE).order_by(
            (CrewStats.succeeded_runs * 1.0 / finished).desc(), finished.desc(), Crew.id
        )
    entries = [
        {"rank": n, **_crew_summary(c, s)}
        for n, (c, s) in enumerate(db.session.execute(q.limit(LEADERBOARD_SIZE)), start=1)
    ]
    return json.dumps({"type": kind, "entries": entries}, separators=(",", ":")).encode()


def serve_popular_crews():
    cache = get_cache_service(current_app)
    return cache.stats_read_through(cache.popular_key(), cache.popular_ttl, render_popular_crews)


def serve_leaderboard(kind):
    """The leaderboard's JSON, or None for an unknown type."""
    if kind not in LEADERBOARD_TYPES:
        return None
    cache = get_cache_service(current_app)
    return cache.stats_read_through(
        cache.leaderboard_key(kind), cache.stats_ttl, lambda: render_leaderboard(kind)
    )
