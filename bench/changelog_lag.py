"""The cache change log under a burst of writes: the relay's lag, and rows per write.

Starts its own PostgreSQL and Redis, runs the migrations, starts gunicorn (2 workers,
the production gunicorn.conf.py: each worker runs a relay thread), then:

* ``api``: N writes through the API in a loop (PATCH a crew's name, POST a run, PATCH
  the run, in turn); the writer's process wakes its relay after each commit;
* ``sql``: N single-row UPDATEs made with SQL outside the app (no writer to wake a
  relay: only the 0.25 s polls deliver them).

A sampler reads ``max(id) - watermark`` and the age of the oldest unapplied entry every
5 ms. Prints JSON: per phase the max lag (entries and seconds), the time to drain after
the last write, and the log rows written per write; then the table's size on disk
(with its indexes) per row.

    .venv/bin/python bench/changelog_lag.py [N]
"""

from __future__ import annotations

import json
import sys
import threading
import time

import redis
import requests
from sqlalchemy import create_engine, text

from bench.common import Gunicorn, Stack, app_env, flask_cli, log


def sample_lag(engine, r, stop, out):
    with engine.connect() as conn:
        while not stop.is_set():
            mark = int(r.get("changelog:applied") or 0)
            top, oldest = conn.execute(
                text(
                    "SELECT (SELECT coalesce(max(id), 0) FROM cache_changes),"
                    " (SELECT extract(epoch FROM (now() AT TIME ZONE 'utc') - min(created_at))"
                    "  FROM cache_changes WHERE id > :m)"
                ),
                {"m": mark},
            ).one()
            conn.commit()
            out.append((time.monotonic(), top - mark, float(oldest or 0.0)))
            time.sleep(0.005)


def drain_time(engine, r, since):
    with engine.connect() as conn:
        while True:
            top = conn.execute(text("SELECT coalesce(max(id), 0) FROM cache_changes")).scalar()
            conn.commit()
            if int(r.get("changelog:applied") or 0) >= top:
                return time.monotonic() - since
            time.sleep(0.005)


def phase(name, engine, r, write, n):
    with engine.connect() as conn:
        before = conn.execute(text("SELECT coalesce(max(id), 0) FROM cache_changes")).scalar()
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_lag, args=(engine, r, stop, samples))
    sampler.start()
    started = time.monotonic()
    for i in range(n):
        write(i)
    wrote = time.monotonic() - started
    drained = drain_time(engine, r, time.monotonic())
    stop.set()
    sampler.join()
    with engine.connect() as conn:
        after = conn.execute(text("SELECT coalesce(max(id), 0) FROM cache_changes")).scalar()
    return {
        "phase": name,
        "writes": n,
        "writes_per_second": round(n / wrote, 1),
        "max_lag_entries": max(s[1] for s in samples),
        "max_oldest_unapplied_seconds": round(max(s[2] for s in samples), 3),
        "drain_after_last_write_seconds": round(drained, 3),
        "log_rows": after - before,
        "rows_per_write": round((after - before) / n, 2),
        "samples": len(samples),
    }


def main(n=500):
    with Stack() as stack:
        env = app_env(stack, CACHE_WARM_ON_START=False)
        flask_cli(env, "db", "upgrade")
        _, token, _ = flask_cli(env, "create-user", "bench")
        headers = {"Authorization": f"Bearer {token.strip()}"}
        engine = create_engine(stack.pg.url)
        r = redis.Redis.from_url(stack.redis.url)
        server = Gunicorn("changelog", env, workers=2, logdir=stack.tmpdir)
        try:
            s = requests.Session()
            crew = s.post(f"{server.url}/crews", json={"name": "c"}, headers=headers).json()
            cid = crew["id"]
            run = s.post(f"{server.url}/crews/{cid}/runs", json={}, headers=headers).json()

            def api_write(i):
                if i % 3 == 0:
                    s.patch(f"{server.url}/crews/{cid}", json={"name": f"n{i}"}, headers=headers)
                elif i % 3 == 1:
                    s.post(f"{server.url}/crews/{cid}/runs", json={}, headers=headers)
                else:
                    s.patch(
                        f"{server.url}/runs/{run['id']}",
                        json={"tokens_used": i},
                        headers=headers,
                    )

            def sql_write(i):
                with engine.begin() as conn:
                    conn.execute(
                        text("UPDATE crews SET description = :d WHERE id = :id"),
                        {"d": str(i), "id": cid},
                    )

            time.sleep(0.5)
            results = [phase("api", engine, r, api_write, n), phase("sql", engine, r, sql_write, n)]
            with engine.connect() as conn:
                rows, size = conn.execute(
                    text(
                        "SELECT count(*), pg_total_relation_size('cache_changes')"
                        " FROM cache_changes"
                    )
                ).one()
            results.append(
                {"log_rows": rows, "table_bytes": size, "bytes_per_row": round(size / rows)}
            )
        finally:
            server.stop()
            engine.dispose()
        log(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
