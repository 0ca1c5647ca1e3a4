"""Cache warming: the most popular public crews, once per deployment."""

import logging
import os
import socket
import threading

from flask import current_app

from crew7.services import metadata, rankings
from crew7.services.cache import (
    AGENT,
    CREW,
    CREW_AGENTS,
    LEADERBOARD_TYPES,
    STATS,
    CacheUnavailable,
    get_cache_service,
)

log = logging.getLogger(__name__)


CHUNK = 500


def warm_popular_crews(limit, with_agents=False, with_rankings=False, progress=None):
    """Put the ``limit`` most popular public crews' documents in the cache.

    Returns what happened, per document family: ``{"stored": {"crew": 10}, "present":
    {...}, "refused": {...}}`` (``present``: already cached; ``refused``: a write
    invalidated it meanwhile). Crews are warmed in chunks: one query builds a chunk's
    documents of each family, and one round trip fills them, each fenced and single-flight
    as a miss is. ``progress(done, total)`` is called as each chunk of crews is done. Raises
    CacheUnavailable when Redis cannot be reached or the cache is off: nothing can be
    warmed then, and saying otherwise would mislead.
    """
    cache = get_cache_service(current_app)
    if not cache.enabled:
        raise CacheUnavailable("the metadata cache is disabled (METADATA_CACHE_ENABLED)")
    if not cache.ping():
        raise CacheUnavailable("Redis did not answer PING")
    summary = {"stored": {}, "present": {}, "refused": {}}

    def warm(family, ids, key_of, compute_many, ttl=None):
        """Warm the documents of ``ids``; returns the ids that have one (not unknown)."""
        keys = {key_of(i): i for i in ids}
        if not keys:
            return []

        def compute(wanted):
            documents = compute_many([keys[k] for k in wanted])
            return {k: documents[keys[k]] for k in wanted}

        _, outcomes = cache.fill_many(family, list(keys), compute, ttl)
        for outcome in outcomes.values():
            if outcome in summary:
                summary[outcome][family] = summary[outcome].get(family, 0) + 1
        return [keys[k] for k, outcome in outcomes.items() if outcome != "unknown"]

    ranked = rankings.popular_crew_ids(limit)
    for start in range(0, len(ranked), CHUNK):
        chunk = ranked[start : start + CHUNK]
        # A crew made private or deleted since it was ranked has no document: skip it.
        public = warm(CREW, chunk, cache.crew_key, metadata.render_crews)
        if with_agents and public:
            warm(CREW_AGENTS, public, cache.crew_agents_key, metadata.render_crews_agents)
            agent_ids = [a for ids in metadata.agent_ids_of_crews(public).values() for a in ids]
            warm(AGENT, agent_ids, cache.agent_key, metadata.render_agents)
        if progress is not None:
            progress(start + len(chunk), len(ranked))
    if with_rankings:
        warm(
            STATS,
            ["popular"],
            lambda _: cache.popular_key(),
            lambda ids: dict.fromkeys(ids, rankings.render_popular_crews()),
            cache.popular_ttl,
        )
        warm(
            STATS,
            list(LEADERBOARD_TYPES),
            cache.leaderboard_key,
            lambda kinds: {k: rankings.render_leaderboard(k) for k in kinds},
            cache.stats_ttl,
        )
    return summary


def warm_all_caches(limit=None, progress=None):
    """``flask warm-cache``: popular crews, their agents, popular crews list, leaderboards."""
    limit = current_app.config["CACHE_WARM_COUNT"] if limit is None else limit
    return warm_popular_crews(limit, with_agents=True, with_rankings=True, progress=progress)


def describe(summary):
    """One line for logs and the CLI, e.g. ``stored 25 (crew 5, agent 10, ...); ...``."""
    parts = []
    for outcome in ("stored", "present", "refused"):
        counts = summary[outcome]
        detail = ", ".join(f"{family} {n}" for family, n in sorted(counts.items()))
        parts.append(f"{outcome} {sum(counts.values())}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


def deployment_id():
    """Workers of one gunicorn master share it; set CREW7_DEPLOYMENT_ID to span hosts."""
    configured = current_app.config.get("DEPLOYMENT_ID")
    if configured:
        return str(configured)
    return f"{socket.gethostname()}:{os.getppid()}"


def claim_warming(app):
    """True for exactly one process of a deployment (SET NX in Redis)."""
    cache = get_cache_service(app)
    key = cache.warming_key(deployment_id())
    try:
        return cache.claim(key, os.getpid(), 86400)
    except CacheUnavailable:
        return False


def start_warming(app):
    """Warm a serving process's cache at start-up (gunicorn's ``post_worker_init`` calls
    this), when ``CACHE_WARM_ON_START`` is on; returns the thread, or None."""
    if app.config["CACHE_WARM_ON_START"] and not app.testing:
        return warm_in_background(app)
    return None


def warm_in_background(app):
    """Warm after start-up without delaying serving, once however many workers start."""

    def run():
        with app.app_context():
            try:
                if not claim_warming(app):
                    return
                summary = warm_popular_crews(app.config["CACHE_WARM_COUNT"])
                log.info("Cache warming complete: %s", describe(summary))
            except CacheUnavailable as exc:
                log.warning("cache not warmed: Redis unavailable (%s)", exc)
            except Exception:
                log.exception("cache warming failed")
            finally:
                from crew7.extensions import db

                db.session.remove()

    thread = threading.Thread(target=run, name="crew7-cache-warming", daemon=True)
    thread.start()
    return thread
