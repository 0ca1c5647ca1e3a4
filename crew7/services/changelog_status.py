"""What operators see of the change log's relay: ``flask cache-log``, ``/cache/stats``
and the ``/metrics`` gauges."""

from sqlalchemy import func, select

from crew7.models import CacheChange, utcnow
from crew7.services.cache import CacheUnavailable, get_cache_service


def relay_status(relay, last=0):
    """Log size, watermark, lag (entries and the oldest unapplied entry's age in
    seconds), what this process applied, and the ``last`` entries."""
    cache = get_cache_service(relay.app)
    try:
        mark = cache.changelog_watermark()
        available = True
    except CacheUnavailable:
        mark, available = None, False
    with relay.engine().connect() as conn:
        size, max_id = conn.execute(
            select(func.count(), func.coalesce(func.max(CacheChange.id), 0))
        ).one()
        oldest = conn.execute(
            select(func.min(CacheChange.created_at)).where(CacheChange.id > (mark or 0))
        ).scalar()
        recent = []
        if last:
            recent = [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "ref_id": r.ref_id,
                    "created_at": str(r.created_at),
                }
                for r in conn.execute(
                    select(
                        CacheChange.id,
                        CacheChange.kind,
                        CacheChange.ref_id,
                        CacheChange.created_at,
                    )
                    .order_by(CacheChange.id.desc())
                    .limit(last)
                )
            ]
    age = None
    if oldest is not None and mark is not None:
        if isinstance(oldest, str):  # SQLite without a type on an aggregate
            from datetime import datetime

            oldest = datetime.fromisoformat(oldest)
        age = max(0.0, (utcnow() - oldest).total_seconds())
    return {
        "size": size,
        "max_id": max_id,
        "watermark": mark,
        "redis_available": available,
        "lag_entries": None if mark is None else max(0, max_id - mark),
        "oldest_unapplied_age": age if (mark is not None and max_id > mark) else 0.0,
        "applied_by_this_process": relay.applied,
        "replays_by_this_process": relay.replays,
        "last_entries": recent,
    }
