"""The rows of bench/staleness.py: each starts its own Redis (standalone or Sentinel) and
gunicorn (gunicorn.conf.py, 2 sync workers) on a fresh database, injects one fault, polls,
and returns its result rows (see ``result``)."""

from __future__ import annotations

import time
from contextlib import ExitStack

import redis
from sqlalchemy import text

from tests.support.app import fresh_users, outside_engine
from tests.support.processes import wait_until
from tests.support.servers import RedisSentinelSet, RedisServer
from tests.support.staleness import (
    Served,
    cache_document,
    crew_key,
    fence_key,
    held_fill_race,
    poll,
    renamed_back,
    summary,
)

ZERO = "0 stale reads"
WITHIN_1S = "no stale read later than 1 s after the fault cleared"
# A worker whose breaker opened during a fault reads Redis again after this (production:
# 5 s), so the polls reach Redis rather than reading around it.
COOLDOWN = 1.0
# Three relay polls (CACHE_CHANGELOG_INTERVAL, 0.25 s).
RELAYS_CAUGHT_UP = 0.75


def result(row, fault, ctx, topology, stats, bound, **extra):
    """One row of the table: the poll summary judged against its bound."""
    if bound == ZERO:
        passed = stats["stale"] == 0
    else:
        last = stats["last_stale_s"]
        passed = (last is None or last <= 1.0) and not stats["still_stale_at_end"]
    if stats.get("errors") and not extra.get("invalid"):
        extra["invalid"] = f"{stats['errors']} polls got no answer"
    if extra.get("invalid"):
        passed = False
    return {
        "row": row,
        "fault": fault,
        "db": ctx.db,
        "topology": topology,
        "bound": bound,
        "passed": passed,
        **stats,
        **extra,
    }


def _serve(ctx, stack, redis_url, **settings):
    database_url = ctx.new_database()
    (user,) = fresh_users(database_url, redis_url, "owner")
    settings = {"BREAKER_COOLDOWN": COOLDOWN, **settings, **ctx.extra_settings}
    served = stack.enter_context(Served(database_url, redis_url, user, **settings))
    return database_url, served


def _redis(stack, *args):
    server = RedisServer.start(extra_args=list(args))
    stack.callback(server.close)
    client = redis.Redis.from_url(server.url)
    stack.callback(client.close)
    return server, client


def _redis_on(topology, stack, *args):
    """``(server the fault hits, its client, app settings)``: a standalone Redis, or the
    master of a master + replica + 3 Sentinels (the app reaching it through them)."""
    if topology == "standalone":
        server, client = _redis(stack, *args)
        return server, client, {}
    sentinels = RedisSentinelSet.start()
    stack.callback(sentinels.close)
    client = redis.Redis.from_url(sentinels.master.url)
    stack.callback(client.close)
    for name, value in zip(args[::2], args[1::2], strict=True):
        client.config_set(name.lstrip("-"), value)
    settings = {
        "REDIS_SENTINELS": sentinels.sentinels_setting,
        "REDIS_SENTINEL_MASTER": sentinels.master_name,
    }
    return sentinels.master, client, settings


# -- a fill held at the worst moment ------------------------------------------------------


def _evict(client):
    def inject(cid):
        fence = fence_key(crew_key(cid))
        time.sleep(1.1)  # Redis's LRU clock ticks in seconds: let the fence be the oldest
        junk = b"x" * 1024
        for batch in range(120):
            pipe = client.pipeline(transaction=False)
            for n in range(500):
                pipe.set(f"junk:{batch}:{n}", junk, ex=3600)
            pipe.execute()
            if not client.exists(fence):
                return
        raise RuntimeError("the fence was never evicted")

    return inject


def _expire(client):
    def inject(cid):
        fence = fence_key(crew_key(cid))
        client.pexpire(fence, 1)
        wait_until(lambda: not client.exists(fence), 2, "fence expired", interval=0.005)

    return inject


# name: (title, fill delay, Redis arguments, fault(server, client) -> inject(crew id))
RACES = {
    "restart-empty": (
        "Redis restarted empty between the reader's database read and its fill",
        1.5,
        (),
        lambda server, client: lambda cid: server.restart(),
    ),
    "flushall": ("FLUSHALL at the same point", 1.0, (), lambda s, c: lambda cid: c.flushall()),
    "evict-allkeys-lru": (
        "maxmemory 3mb with allkeys-lru: the fence evicted before the miss and again after "
        "the write",
        4.0,
        ("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"),
        lambda s, c: _evict(c),
    ),
    "evict-volatile-lru": (
        "maxmemory 3mb with volatile-lru: the fence evicted before the miss and again after "
        "the write",
        4.0,
        ("--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru"),
        lambda s, c: _evict(c),
    ),
    "fence-expiry": (
        "the fence expired before the miss and again after the write",
        1.0,
        (),
        lambda s, c: _expire(c),
    ),
    "control": ("control: the same race without a fault", 1.0, (), lambda s, c: lambda cid: None),
}


def race_row(name, ctx, topology="standalone"):
    title, delay, args, make_fault = RACES[name]
    with ExitStack() as stack:
        server, client, settings = _redis_on(topology, stack, *args)
        _, served = _serve(ctx, stack, server.url, CACHE_FILL_DELAY=delay, **settings)
        cid, cleared, (status, doc) = held_fill_race(served, client, make_fault(server, client))
        reader = doc.get("name") if status == 200 and doc else status
        polls = poll(
            served, f"/metadata/crew/{cid}", renamed_back("Before"), cleared, ctx.polls, ctx.span
        )
        return [
            result(
                name,
                title,
                ctx,
                topology,
                summary(polls),
                ZERO,
                fill_delay_s=delay,
                reader_saw=reader,
                invalid="the held reader did not read the old name" if reader != "Before" else "",
            )
        ]


# -- an invalidation lost with its writer ------------------------------------------------


def freeze_row(ctx, topology="standalone"):
    title = (
        "Redis frozen (SIGSTOP), the rename acknowledged, the writing gunicorn worker killed "
        "(SIGKILL) before Redis thawed"
    )
    with ExitStack() as stack:
        server, client, settings = _redis_on(topology, stack)
        _, served = _serve(ctx, stack, server.url, **settings)
        crew, _ = served.create_crew("Before", agents=1)
        cid = crew["id"]
        cache_document(served, client, cid)
        server.freeze()
        try:
            started = time.monotonic()
            served.patch_crew(cid, name="After")
            acknowledged = time.monotonic() - started
            writer = served.writer_pid("PATCH", f"/crews/{cid}")
            served.kill_worker(writer)
        finally:
            server.resume()
        wait_until(server._ping, 5, "Redis answering")
        cleared = time.monotonic()
        polls = poll(
            served, f"/metadata/crew/{cid}", renamed_back("Before"), cleared, ctx.polls, ctx.span
        )
        return [
            result(
                "freeze-kill-writer",
                title,
                ctx,
                topology,
                summary(polls),
                WITHIN_1S,
                killed_worker=writer,
                rename_acknowledged_in_s=round(acknowledged, 3),
            )
        ]


# -- Sentinel failover that loses the last invalidations ----------------------------------


def sentinel_row(ctx):
    title = (
        "Sentinel: the replica cut off (SIGSTOP, its link dropped by CLIENT KILL), the rename "
        "acknowledged by the master alone, the master killed (SIGKILL), the replica resumed "
        "and promoted"
    )
    with ExitStack() as stack:
        sentinels = RedisSentinelSet.start()
        stack.callback(sentinels.close)
        master_url = sentinels.master.url
        _, served = _serve(
            ctx,
            stack,
            master_url,
            REDIS_SENTINELS=sentinels.sentinels_setting,
            REDIS_SENTINEL_MASTER=sentinels.master_name,
        )
        crew, _ = served.create_crew("Before", agents=1)
        cid = crew["id"]
        served.get(f"/metadata/crew/{cid}")
        master = redis.Redis.from_url(master_url)
        replica = redis.Redis.from_url(sentinels.replica.url)
        stack.callback(master.close)
        stack.callback(replica.close)

        def replicated():
            # A relay applying the creation's entries after the writer did refuses a fill
            # in flight: ask again until the document is cached.
            if not master.exists(crew_key(cid)):
                served.get(f"/metadata/crew/{cid}")
            return replica.exists(crew_key(cid)) and replica.get("changelog:applied") == (
                master.get("changelog:applied")
            )

        wait_until(replicated, 5, "the document and the watermark on the replica")
        # SIGSTOP alone does not cut a replica off: the kernel still takes the replication
        # stream into its socket. The master also drops the link of the frozen replica, so
        # the rename reaches the master alone.
        sentinels.replica.freeze()
        try:
            master.client_kill_filter(_type="replica")
            wait_until(
                lambda: master.info("replication")["connected_slaves"] == 0,
                5,
                "the replica's link dropped",
            )
            served.patch_crew(cid, name="After")
            assert not master.exists(crew_key(cid))  # the master applied the invalidation
            # Every worker's relay has read the rename's entries: what a relay that lagged
            # behind would re-apply after the failover is not what this row measures.
            time.sleep(RELAYS_CAUGHT_UP)
            sentinels.kill_master()
        finally:
            sentinels.replica.resume()
        kept = replica.get(crew_key(cid))  # what the promoted replica holds
        took = sentinels.wait_for_failover(timeout=30)
        cleared = time.monotonic()
        polls = poll(
            served, f"/metadata/crew/{cid}", renamed_back("Before"), cleared, ctx.polls, ctx.span
        )
        return [
            result(
                "sentinel-failover",
                title,
                ctx,
                "sentinel",
                summary(polls),
                WITHIN_1S,
                failover_s=round(took, 2),
                replica_kept_old_document=bool(kept and b'"Before"' in kept),
            )
        ]


# -- changes made with SQL outside the app ----------------------------------------------


def _attrs(doc):
    return {a["trait_type"]: a["value"] for a in doc.get("attributes", [])}


def _listings(served):
    """{document: {crew id: name}} of the stats documents that list crews."""
    out = {}
    for path, field in (
        ("/stats/popular-crews", "crews"),
        ("/stats/leaderboard/runs", "entries"),
        ("/stats/leaderboard/success-rate", "entries"),
    ):
        status, doc = served.get(path)
        out[path] = {c["id"]: c["name"] for c in (doc or {}).get(field, [])}
    return out


def _watch(served, check, cleared, duration):
    """Run ``check(tag)`` (True when stale) back to back for ``duration`` seconds."""
    polls = []
    while time.monotonic() - cleared < duration:
        record = {"tag": served.tag(), "started": time.monotonic() - cleared}
        record["stale"] = bool(check(record["tag"]))
        record["status"] = 200
        polls.append(record)
        time.sleep(0.02)
    served.pids_of(polls)
    return polls


def sql_rows(ctx):
    """Rename, a run inserted, a privacy flip, a DELETE, each by raw SQL on a connection of
    its own (no session event sees them): crew and agent documents and stats entries."""
    rows = []
    with ExitStack() as stack:
        server, _ = _redis(stack)
        database_url, served = _serve(ctx, stack, server.url)
        engine = outside_engine(database_url)
        stack.callback(engine.dispose)
        run = {"status": "succeeded"}
        crew, agents = served.create_crew("Before", agents=2, runs=[run] * 6)
        other, other_agents = served.create_crew("Other", agents=1, runs=[run] * 6)
        cid, oid = crew["id"], other["id"]

        def warm():
            for path in (
                f"/metadata/crew/{cid}",
                f"/metadata/crew/{cid}/agents",
                f"/metadata/agent/{agents[0]['id']}",
                f"/metadata/crew/{oid}",
                f"/metadata/agent/{other_agents[0]['id']}",
            ):
                served.get(path)
            return _listings(served)

        def sql(statement, **params):
            with engine.begin() as conn:
                conn.execute(text(statement), params)
            return time.monotonic()

        def crew_doc(tag, crew_id):
            status, doc = served.get(f"/metadata/crew/{crew_id}", tag)
            return status, doc or {}

        def renamed_stale(tag):
            status, doc = crew_doc(tag, cid)
            _, agent = served.get(f"/metadata/agent/{agents[0]['id']}")
            listed = _listings(served)
            return (
                doc.get("name") != "Renamed by SQL"
                or _attrs(agent or {}).get("Crew") != "Renamed by SQL"
                or any(ids.get(cid) not in (None, "Renamed by SQL") for ids in listed.values())
            )

        runs_before = {}

        def run_stale(tag):
            return _attrs(crew_doc(tag, cid)[1]).get("Total Runs") == runs_before["n"]

        def private_stale(tag):
            status, _ = crew_doc(tag, cid)
            agent_status, _ = served.get(f"/metadata/agent/{agents[0]['id']}")
            listed = _listings(served)
            return (
                status != 404 or agent_status != 404 or any(cid in ids for ids in listed.values())
            )

        def deleted_stale(tag):
            status, _ = crew_doc(tag, oid)
            agent_status, _ = served.get(f"/metadata/agent/{other_agents[0]['id']}")
            listed = _listings(served)
            return (
                status != 404 or agent_status != 404 or any(oid in ids for ids in listed.values())
            )

        drills = (
            (
                "sql-rename",
                "UPDATE crews SET name by SQL: crew and agent documents, stats",
                "UPDATE crews SET name = 'Renamed by SQL' WHERE id = :id",
                {"id": cid},
                renamed_stale,
            ),
            (
                "sql-run-insert",
                "INSERT INTO runs by SQL: the crew document's run count",
                "INSERT INTO runs (crew_id, status, tokens_used, created_at)"
                " VALUES (:id, 'failed', 5, CURRENT_TIMESTAMP)",
                {"id": cid},
                run_stale,
            ),
            (
                "sql-private",
                "UPDATE crews SET is_public = false by SQL: documents 404, gone from stats",
                "UPDATE crews SET is_public = false WHERE id = :id",
                {"id": cid},
                private_stale,
            ),
            (
                "sql-delete",
                "DELETE FROM crews by SQL: crew and agent documents 404, gone from stats",
                "DELETE FROM crews WHERE id = :id",
                {"id": oid},
                deleted_stale,
            ),
        )
        for name, title, statement, params, stale in drills:
            listed = warm()
            runs_before["n"] = _attrs(crew_doc(None, cid)[1]).get("Total Runs")
            if name in ("sql-private", "sql-delete"):
                target = cid if name == "sql-private" else oid
                assert all(target in ids for ids in listed.values()), listed
            cleared = sql(statement, **params)
            polls = _watch(served, stale, cleared, ctx.sql_watch)
            rows.append(result(name, title, ctx, "standalone", summary(polls), WITHIN_1S))
    return rows


# -- stats after a write through the API -------------------------------------------------


def stats_rows(ctx):
    """A crew made private, another deleted, through the API: absent from every stats
    document on the next request and after."""
    rows = []
    with ExitStack() as stack:
        server, _ = _redis(stack)
        _, served = _serve(ctx, stack, server.url)
        run = {"status": "succeeded"}
        made = [served.create_crew(f"Crew {n}", agents=1, runs=[run] * 6)[0] for n in "AB"]
        for crew, (name, title, write) in zip(
            made,
            (
                ("stats-private", "a crew made private through the API (200)", "private"),
                ("stats-deleted", "a crew deleted through the API (204)", "delete"),
            ),
            strict=True,
        ):
            cid = crew["id"]
            served.get(f"/metadata/crew/{cid}")
            listed = _listings(served)  # cached now, naming the crew
            assert all(cid in ids for ids in listed.values()), listed
            if write == "private":
                served.patch_crew(cid, is_public=False)
            else:
                status, _ = served.call("DELETE", f"/crews/{cid}")
                assert status == 204, status
            cleared = time.monotonic()

            def listed_stale(tag, cid=cid):
                served.get(f"/metadata/crew/{cid}", tag)
                return any(cid in ids for ids in _listings(served).values())

            polls = _watch(served, listed_stale, cleared, ctx.sql_watch)
            rows.append(result(name, title, ctx, "standalone", summary(polls), ZERO))
    return rows
