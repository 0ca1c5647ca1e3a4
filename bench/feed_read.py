"""The change feed's read cost on PostgreSQL: a page of ``limit`` events from the start,
from the middle and at the end of a log of N entries.

Starts its own PostgreSQL and Redis, creates the schema, inserts N entries with SQL
(spread over the transaction ids below the filling one's; a quarter of them a private
crew's, every eighth a crew entry with four agents), then times ``read_feed`` (median of
20 reads each). Prints JSON.

    .venv/bin/python -m bench.feed_read [N] [LIMIT]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from sqlalchemy import text

from bench.common import Stack, log
from tests.support.app import dispose, make_app, reset_schema

FILL = """
INSERT INTO cache_changes (kind, ref_id, created_at, visibility, agents, xid)
SELECT CASE WHEN i % 8 = 0 THEN 'crew' WHEN i % 2 = 0 THEN 'agent' ELSE 'crew_document' END,
       i, now() AT TIME ZONE 'utc',
       CASE WHEN i % 4 = 3 THEN 'private' ELSE 'public' END,
       CASE WHEN i % 8 = 0 THEN concat_ws(',', i, i + 1, i + 2, i + 5) END,
       i * (pg_current_xact_id()::text::bigint - 1) / (:n + 1)
FROM generate_series(1, :n) AS i
"""


def timed(fn, runs=20):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2), result


def main(n=100_000, limit=1000):
    from crew7.extensions import db
    from crew7.services.feed import read_feed

    with Stack() as stack:
        app = make_app(stack.pg.url, stack.redis.url, CACHE_CHANGELOG_INTERVAL=0)
        reset_schema(app)
        try:
            with app.app_context():
                with db.engine.begin() as conn:
                    conn.execute(text(FILL), {"n": n})
                    conn.execute(text("ANALYZE cache_changes"))
                first_ms, first = timed(lambda: read_feed(None, limit))
                middle = read_feed(None, 1)
                for _ in range(3):  # a cursor about halfway
                    middle = read_feed(middle.next_cursor, min(limit, n // 8))
                middle_ms, _ = timed(lambda: read_feed(middle.next_cursor, limit))
                end = first
                while end.has_more:
                    end = read_feed(end.next_cursor, 1000)
                end_ms, tail = timed(lambda: read_feed(end.next_cursor, limit))
        finally:
            dispose(app)
    out = {
        "entries": n,
        "limit": limit,
        "first_page_ms": first_ms,
        "first_page_events": len(first.events),
        "middle_page_ms": middle_ms,
        "caught_up_read_ms": end_ms,
        "caught_up_events": len(tail.events),
    }
    log("done")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
