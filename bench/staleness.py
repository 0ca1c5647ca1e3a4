"""crew7 staleness drills: does any client read a document older than an acknowledged
write, under single ordinary faults?

``make drill`` (after bench/drill.py), or alone:

    .venv/bin/python bench/staleness.py
    STALENESS_ONLY=sentinel-failover STALENESS_DBS=sqlite .venv/bin/python bench/staleness.py

Each row starts its own Redis (standalone, or a master, a replica and 3 Sentinels), a fresh
database (a SQLite file, or a new PostgreSQL database on the run's own server), and gunicorn
with the production ``gunicorn.conf.py`` and 2 sync workers, its access log naming the
worker of each request. Rows (bench/staleness_rows.py):

    restart-empty, flushall, evict-allkeys-lru, evict-volatile-lru, fence-expiry, control
        a reader's miss held between its database read and its fill (CACHE_FILL_DELAY); the
        crew renamed (200); the fault; then a leading poll, STALENESS_POLLS (28) polls in
        concurrent pairs over STALENESS_SPAN (4 s), and a final poll. Bound: 0 stale reads.
    freeze-kill-writer
        the document cached; Redis frozen (SIGSTOP); the rename acknowledged; the worker
        that served it killed (SIGKILL, by pid; gunicorn starts another); Redis resumed.
        Bound: no stale read later than 1 s after Redis answers again.
    sentinel-failover
        the replica frozen; the rename acknowledged by the master alone; the master killed;
        the replica resumed and promoted. Bound: no stale read later than 1 s after the new
        master answers.
    sql-outside
        by raw SQL on a connection of its own: a rename, a run inserted, a privacy flip, a
        DELETE; crew and agent documents and the stats documents, polled back to back for
        STALENESS_SQL_WATCH (2.5 s). Bound: nothing stale later than 1 s after the commit.
    stats-api
        a crew made private, another deleted, through the API: absent from
        /stats/popular-crews and both leaderboards from the next request on. Bound: 0.

Every row gets BREAKER_COOLDOWN=1 (production: 5 s), so a worker whose breaker opened in
the fault reads Redis again within the polls. STALENESS_DBS (sqlite,postgresql) chooses
the databases; STALENESS_EXTRA ("NAME=VALUE,...") adds app settings to every gunicorn, to
see a row fail with a protection turned off (CACHE_CHANGELOG_INTERVAL=0: no relay).

Writes bench/results/staleness-<UTC date>-<time>.json and bench/results/staleness-latest.md;
exits 1 when any row breaks its bound. Bounded: every request has a timeout, every wait a
deadline; about 3 minutes for both databases. Stops what it started, by pid.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    PostgresServer,
    env_number,
    log,
    machine_info,
    results_doc,
    stop_on_sigterm,
    utc_stamp,
    write_results,
)
from staleness_rows import (  # noqa: E402
    RACES,
    freeze_row,
    race_row,
    sentinel_row,
    sql_rows,
    stats_rows,
)

ROWS = {
    **{name: (lambda ctx, name=name: race_row(name, ctx)) for name in RACES if name != "control"},
    "freeze-kill-writer": freeze_row,
    "sentinel-failover": sentinel_row,
    "sql-outside": sql_rows,
    "stats-api": stats_rows,
    "control": lambda ctx: race_row("control", ctx),
    # The same faults on a Sentinel master (a restart there is quick enough that the
    # Sentinels keep it; the replica resynchronises from the emptied master).
    **{
        f"sentinel-{name}": (lambda ctx, name=name: race_row(name, ctx, "sentinel"))
        for name in RACES
        if name != "control"
    },
    "sentinel-freeze-kill-writer": lambda ctx: freeze_row(ctx, "sentinel"),
}
DATABASES = ("sqlite", "postgresql")


class Context:
    """What every row of one database needs: a fresh database per row, poll settings."""

    def __init__(self, db, tmpdir, pg, extra_settings):
        self.db = db
        self.tmpdir = tmpdir
        self.pg = pg
        self.extra_settings = extra_settings
        self.polls = env_number("STALENESS_POLLS", 28, int)
        self.span = env_number("STALENESS_SPAN", 4.0)
        self.sql_watch = env_number("STALENESS_SQL_WATCH", 2.5)
        self._n = 0

    def new_database(self) -> str:
        self._n += 1
        if self.db == "sqlite":
            return f"sqlite:///{self.tmpdir}/row{self._n}.sqlite3"
        return self.pg.create_database(f"staleness_{self._n}")


def _extra_settings():
    raw = os.environ.get("STALENESS_EXTRA", "").strip()
    pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
    return {name.strip(): value.strip() for name, value in pairs}


def _how_long(r):
    if r["stale"] == 0:
        return "-"
    if r["still_stale_at_end"]:
        return f"until the TTL (still stale at the last poll, {r['last_poll_s']:.1f} s)"
    return f"{r['last_stale_s']:.2f} s"


def _workers(r):
    return "+".join(str(n) for _, n in sorted(r.get("workers", {}).items()))


def write_markdown(path, doc):
    lines = [
        "# Staleness drills (`bench/staleness.py`, part of `make drill`)",
        "",
        f"Run {doc['started']} UTC, {doc['minutes']} min. gunicorn with `gunicorn.conf.py`, "
        "2 sync workers, real Redis (standalone, or master + replica + 3 Sentinels), "
        "SQLite file or PostgreSQL; BREAKER_COOLDOWN=1 s. "
        f"A leading poll, {doc['config']['polls']} over {doc['config']['span']} s in "
        "concurrent pairs and a final one (race and failover rows); SQL and stats rows "
        f"poll back to back for {doc['config']['sql_watch']} s. Times are seconds after the "
        "fault cleared (the fault injected, Redis answering again, the new master promoted, "
        "the SQL committed, the API write acknowledged).",
        "",
    ]
    if doc["config"]["extra_settings"]:
        lines += [f"**App settings added:** `{doc['config']['extra_settings']}`", ""]
    lines += [
        "| fault | database, Redis | stale reads | how long | last stale read, s after the "
        "fault cleared | polls per worker | bound | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['row']} | {r['db']} | - | - | - | - | - | ERROR: {r['error'][:120]} |"
            )
            continue
        last = "-" if r["last_stale_s"] is None else f"{r['last_stale_s']:.2f}"
        verdict = "PASS" if r["passed"] else "FAIL"
        if r.get("invalid"):
            verdict += f" ({r['invalid']})"
        lines.append(
            f"| {r['fault']} | {r['db']}, {r['topology']} | {r['stale']}/{r['polls']} | "
            f"{_how_long(r)} | {last} | {_workers(r)} | {r['bound']} | {verdict} |"
        )
    failed = [f"{r['row']} ({r['db']})" for r in doc["rows"] if not r.get("passed")]
    lines += ["", f"**{'FAIL: ' + ', '.join(failed) if failed else 'every bound held'}**", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main():
    only = [r.strip() for r in os.environ.get("STALENESS_ONLY", "").split(",") if r.strip()]
    unknown = set(only) - set(ROWS)
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    dbs = [d.strip() for d in os.environ.get("STALENESS_DBS", ",".join(DATABASES)).split(",")]
    if set(dbs) - set(DATABASES):
        sys.exit(f"STALENESS_DBS: choose from {', '.join(DATABASES)}")
    extra = _extra_settings()
    stop_on_sigterm()
    started, t0 = utc_stamp(), time.monotonic()
    rows, pg = [], None
    with tempfile.TemporaryDirectory(prefix="crew7-staleness-") as tmpdir:
        try:
            if "postgresql" in dbs:
                pg = PostgresServer.start()
            for db in dbs:
                ctx = Context(db, tmpdir, pg, extra)
                for name, run in ROWS.items():
                    if only and name not in only:
                        continue
                    log(f"{db}: {name}")
                    try:
                        got = run(ctx)
                    except Exception as exc:  # a row that cannot run is a failed row
                        traceback.print_exc()
                        got = [{"row": name, "db": db, "passed": False, "error": repr(exc)}]
                    for r in got:
                        log(
                            f"  {r['row']}: {'PASS' if r.get('passed') else 'FAIL'} "
                            f"stale {r.get('stale')}/{r.get('polls')} last "
                            f"{r.get('last_stale_s')} workers {r.get('workers')}"
                        )
                    rows.extend(got)
        finally:
            if pg is not None:
                pg.close()
    json_file, doc = results_doc(
        "staleness-",
        started,
        t0,
        config={
            "databases": dbs,
            "only": only,
            "polls": env_number("STALENESS_POLLS", 28, int),
            "span": env_number("STALENESS_SPAN", 4.0),
            "sql_watch": env_number("STALENESS_SQL_WATCH", 2.5),
            "extra_settings": extra,
            "workers": 2,
        },
        machine=machine_info(),
        rows=rows,
    )
    write_results(json_file, doc, "staleness-latest.md", write_markdown)
    log(f"wrote {json_file.relative_to(ROOT)} and bench/results/staleness-latest.md")
    failed = [r for r in rows if not r.get("passed")]
    if failed:
        log(f"{len(failed)} row(s) broke their bound")
        sys.exit(1)


if __name__ == "__main__":
    main()
