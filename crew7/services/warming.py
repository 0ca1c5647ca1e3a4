"""Cache warming: the most popular public crews, once per deployment."""

import logging
import os
import socket
import threading

from flask import current_app

from crew7.services import metadata, stats
from crew7.services.cache import LEADERBOARD_TYPES, CacheUnavailable, get_cache_service

log = logging.getLogger(__name__)


def warm_popular_crews(limit, with_agents=False, with_stats=False):
    """Put the ``limit`` most popular public crews' documents in the cache.

    Returns the summary dict, e.g. ``{'popular_crews': 10}``.
    """
    ids = stats.popular_crew_ids(limit)
    summary = {"popular_crews": 0}
    if with_agents:
        summary["crew_agents"] = 0
        summary["agents"] = 0
    for crew_id in ids:
        body, _ = metadata.crew_metadata_json(crew_id, count_view=False)
        if body == b"null":
            continue
        summary["popular_crews"] += 1
        if with_agents:
            metadata.crew_agents_metadata_json(crew_id)
            summary["crew_agents"] += 1
            for agent_id in metadata.agent_ids_of_crew(crew_id):
                metadata.agent_metadata_json(agent_id)
                summary["agents"] += 1
    if with_stats:
        stats.popular_crews_json()
        for kind in LEADERBOARD_TYPES:
            stats.leaderboard_json(kind)
        summary["leaderboards"] = len(LEADERBOARD_TYPES)
    return summary


def warm_all_caches(limit=None):
    """``flask warm-cache``: popular crews, their agents, popular crews list, leaderboards."""
    limit = current_app.config["CACHE_WARM_COUNT"] if limit is None else limit
    return warm_popular_crews(limit, with_agents=True, with_stats=True)


def deployment_id():
    """Workers of one gunicorn master share it; set CREW7_DEPLOYMENT_ID to span hosts."""
    configured = current_app.config.get("DEPLOYMENT_ID")
    if configured:
        return str(configured)
    return f"{socket.gethostname()}:{os.getppid()}"


def claim_warming(app):
    """True for exactly one process of a deployment (SET NX in Redis)."""
    cache = get_cache_service(app)
    key = f"{cache.prefix}warming:{deployment_id()}"
    try:
        return bool(cache._call(cache.client.set, key, os.getpid(), nx=True, ex=86400))
    except CacheUnavailable:
        return False


def warm_in_background(app):
    """Warm after start-up without delaying serving, once however many workers start."""

    def run():
        with app.app_context():
            try:
                if not claim_warming(app):
                    return
                summary = warm_popular_crews(app.config["CACHE_WARM_COUNT"])
                log.info("Cache warming complete: %s", summary)
            except Exception:
                log.exception("cache warming failed")
            finally:
                from crew7.extensions import db

                db.session.remove()

    thread = threading.Thread(target=run, name="crew7-cache-warming", daemon=True)
    thread.start()
    return thread
