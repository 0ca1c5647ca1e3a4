"""The cache change log: changes made with SQL outside the app, and invalidations a
writer could not deliver, reach the cache within a relay poll; a lost watermark replays.

Writes here go through a connection of their own (a separate engine on the test's
database URL), never the app's session, so no session event sees them: only the
database's triggers and the relay can invalidate.
"""

import threading
import time

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.app import make_user
from tests.support.helpers import attrs, body, seed_crew
from tests.support.processes import wait_until
from tests.support.servers import RedisServer, running

POLL_BOUND = 1.0  # seconds: four polls of 0.25 s


@pytest.fixture
def crew_setup(client, alice, relay):
    crew, agents = seed_crew(client, alice, agents=2, runs=[{"status": "succeeded"}])
    cid = crew["id"]
    relay.poll()  # caught up: no entry of the set-up is applied after the warming
    warm(client, cid, agents)
    return cid, agents


def warm(client, cid, agents):
    assert client.get(f"/metadata/crew/{cid}").status_code == 200
    client.get(f"/metadata/crew/{cid}/agents")
    for a in agents:
        client.get(f"/metadata/agent/{a['id']}")
    client.get("/stats/popular-crews")
    client.get("/stats/leaderboard/runs")


def within_poll(check, what):
    return wait_until(check, POLL_BOUND, what, interval=0.02)


def crew_name(client, cid):
    r = client.get(f"/metadata/crew/{cid}")
    return body(r)["name"] if r.status_code == 200 else r.status_code


def test_rename_by_sql_reaches_crew_and_agents(client, crew_setup, outside_sql, redis_client):
    cid, agents = crew_setup
    assert redis_client.exists(f"metadata:crew:{cid}", f"metadata:agent:{agents[0]['id']}") == 2
    outside_sql("UPDATE crews SET name = 'Renamed by SQL' WHERE id = :id", id=cid)
    within_poll(lambda: crew_name(client, cid) == "Renamed by SQL", "crew renamed")
    agent = body(client.get(f"/metadata/agent/{agents[0]['id']}"))
    assert attrs(agent)["Crew"]["value"] == "Renamed by SQL"


def listed(client, url, cid):
    doc = body(client.get(url))
    return any(c["id"] == cid for c in doc.get("crews", doc.get("entries", [])))


def test_privacy_flip_by_sql_leaves_documents_and_rankings(client, crew_setup, outside_sql):
    cid, agents = crew_setup
    assert listed(client, "/stats/popular-crews", cid)
    assert listed(client, "/stats/leaderboard/runs", cid)
    outside_sql("UPDATE crews SET is_public = false WHERE id = :id", id=cid)

    def gone():
        return (
            client.get(f"/metadata/crew/{cid}").status_code == 404
            and client.get(f"/metadata/agent/{agents[0]['id']}").status_code == 404
            and not listed(client, "/stats/popular-crews", cid)
            and not listed(client, "/stats/leaderboard/runs", cid)
        )

    within_poll(gone, "private crew gone from documents and rankings")


def test_run_inserted_by_sql_reaches_the_crew_document(client, crew_setup, outside_sql):
    cid, _ = crew_setup
    assert attrs(body(client.get(f"/metadata/crew/{cid}")))["Total Runs"]["value"] == 1
    # The aggregates' triggers count it in crew_stats; the change log delivers the document.
    outside_sql(
        "INSERT INTO runs (crew_id, status, tokens_used, created_at)"
        " VALUES (:id, 'failed', 5, CURRENT_TIMESTAMP)",
        id=cid,
    )
    within_poll(
        lambda: attrs(body(client.get(f"/metadata/crew/{cid}")))["Total Runs"]["value"] == 2,
        "run counted",
    )


def test_agent_then_crew_deleted_by_sql(client, crew_setup, outside_sql):
    cid, agents = crew_setup
    a0, a1 = agents
    outside_sql("DELETE FROM agents WHERE id = :id", id=a0["id"])

    def agent_gone():
        doc = client.get(f"/metadata/crew/{cid}")
        return (
            client.get(f"/metadata/agent/{a0['id']}").status_code == 404
            and len(body(client.get(f"/metadata/crew/{cid}/agents"))) == 1
            and attrs(body(doc))["Agents"]["value"] == 1
        )

    within_poll(agent_gone, "agent deleted")
    assert client.get(f"/metadata/agent/{a1['id']}").status_code == 200
    outside_sql("DELETE FROM crews WHERE id = :id", id=cid)

    def crew_gone():
        return (
            client.get(f"/metadata/crew/{cid}").status_code == 404
            and client.get(f"/metadata/crew/{cid}/agents").status_code == 404
            and client.get(f"/metadata/agent/{a1['id']}").status_code == 404
            and not listed(client, "/stats/popular-crews", cid)
        )

    within_poll(crew_gone, "crew deleted")


# -- an invalidation the writer could not deliver -----------------------------------


@pytest.fixture
def own_redis():
    yield from running(RedisServer)


def test_writer_lost_its_invalidation_while_redis_was_frozen(app_factory, own_redis):
    """The writer's fast path fails (Redis frozen) and the writer dies before Redis answers
    again (its retried set is gone); a reader process's relay delivers the change."""
    from crew7.services.changelog import get_relay, start_relay

    settings = {"REDIS_URL": own_redis.url, "BREAKER_THRESHOLD": 3, "BREAKER_COOLDOWN": 1.0}
    writer = app_factory(**settings)
    reader = app_factory(**settings)
    wclient, rclient = writer.test_client(), reader.test_client()
    user = make_user(writer, "dora")
    crew, _ = seed_crew(wclient, user, agents=1)
    cid = crew["id"]
    assert crew_name(rclient, cid) == "Research Crew"
    start_relay(reader)
    try:
        own_redis.freeze()
        try:
            r = wclient.patch(f"/crews/{cid}", json={"name": "After"}, headers=user["headers"])
            assert r.status_code == 200
            # The writer is killed before Redis answers again: what it kept to retry,
            # and its own relay, are lost with it.
            cache = writer.extensions["crew7.cache"]
            writer.extensions["crew7.changelog"] = None
            cache._flush_pending = lambda: True
            timer = cache._retry_timer
            if timer is not None:
                timer.cancel()
                timer.join(5)
            with cache._pending_lock:
                cache._pending.clear()
        finally:
            own_redis.resume()
        within_poll(lambda: crew_name(rclient, cid) == "After", "the reader sees the write")
    finally:
        get_relay(reader).stop()


def test_a_process_reads_around_redis_until_the_log_is_applied(app_factory, own_redis, outside_sql):
    """After a Redis error a process does not read Redis again until it has applied what
    the change log holds beyond Redis's watermark: here a rename made by SQL while Redis
    was frozen, which no relay delivered (none runs), is shown by the first read after."""
    from crew7.services.changelog import get_relay

    app = app_factory(REDIS_URL=own_redis.url, BREAKER_THRESHOLD=3, BREAKER_COOLDOWN=0.2)
    client = app.test_client()
    cache = app.extensions["crew7.cache"]
    user = make_user(app, "erin")
    cid = seed_crew(client, user, agents=1)[0]["id"]
    assert crew_name(client, cid) == "Research Crew"
    get_relay(app).poll()
    own_redis.freeze()
    try:
        assert crew_name(client, cid) == "Research Crew"  # from the database
        assert not cache.trusted
        outside_sql("UPDATE crews SET name = 'After' WHERE id = :id", id=cid)
    finally:
        own_redis.resume()
    time.sleep(0.3)  # the breaker's cooldown
    assert crew_name(client, cid) == "After"
    assert cache.trusted
    hits = cache.counters.hits
    assert crew_name(client, cid) == "After" and cache.counters.hits == hits + 1


def test_a_connection_lost_under_the_fast_path_is_caught_up_before_redis_is_read(
    app_factory, own_redis, outside_sql
):
    """A Redis error the fast path meets, while the next call succeeds (as when a failover
    breaks the connection and the pool finds the new master), makes the process catch the
    change log up before it reads Redis again: a rename made meanwhile by SQL, which no
    relay delivered, shows on that very request. Here Redis is busy (a script) for longer
    than the socket timeout, and free again by the next call."""
    from crew7.services.changelog import get_relay

    app = app_factory(REDIS_URL=own_redis.url)
    client = app.test_client()
    user = make_user(app, "fay")
    cid = seed_crew(client, user, agents=1)[0]["id"]
    assert crew_name(client, cid) == "Research Crew"
    assert crew_name(client, cid) == "Research Crew"  # a hit, answered by the fast path
    get_relay(app).poll()
    outside_sql("UPDATE crews SET name = 'After' WHERE id = :id", id=cid)
    busy = threading.Thread(target=_busy_redis, args=(own_redis.url, 0.4))
    busy.start()
    with redis.Redis.from_url(own_redis.url, socket_timeout=0.02) as probe:
        wait_until(lambda: _is_busy(probe), 2, "Redis busy with the script", interval=0.005)
    try:
        assert crew_name(client, cid) == "After"
    finally:
        busy.join(5)


def _is_busy(probe):
    try:
        probe.ping()
    except redis.TimeoutError:
        return True
    return False


def _busy_redis(url, seconds):
    """Keep Redis busy for ``seconds`` (a script spinning on TIME)."""
    spin = """
local t0 = redis.call('TIME')
while true do
  local t = redis.call('TIME')
  if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then return 1 end
end
"""
    with redis.Redis.from_url(url, socket_timeout=5) as r:
        r.eval(spin, 0, int(seconds * 1_000_000))


def test_a_batch_reads_nothing_from_an_untrusted_redis(app, client, alice, redis_client):
    """While the change log cannot be caught up, a batch builds every document from the
    database: what Redis holds may be what a lost invalidation left."""
    cid = seed_crew(client, alice, agents=0)[0]["id"]
    assert crew_name(client, cid) == "Research Crew"
    cache = app.extensions["crew7.cache"]
    stale = client.get(f"/metadata/crew/{cid}").get_data().replace(b"Research", b"Stale")
    redis_client.set(cache.crew_key(cid), stale, ex=300)  # as a lost invalidation leaves it
    cache.catch_up = lambda: False
    cache.distrust()
    assert body(client.get(f"/metadata/crews?ids={cid}"))[0]["name"] == "Research Crew"
    assert crew_name(client, cid) == "Research Crew"


def test_catching_up_applies_again_what_this_process_applied_above_the_watermark(
    app, client, alice, redis_client
):
    """The watermark can stay below entries this process applied (an id missing below
    them, a transaction still open on PostgreSQL). A Redis that comes back with that
    watermark but without those invalidations (a replica promoted, a restore) is caught
    up from its watermark, not from this process's cursor."""
    from crew7.services.changelog import get_relay

    relay = get_relay(app)
    cid = seed_crew(client, alice, agents=0)[0]["id"]
    assert crew_name(client, cid) == "Research Crew"
    relay.poll()
    held = int(redis_client.get("changelog:applied"))
    old = redis_client.get(f"metadata:crew:{cid}")
    r = client.patch(f"/crews/{cid}", json={"name": "After"}, headers=alice["headers"])
    assert r.status_code == 200
    relay.poll()
    assert relay.cursor > held
    # The watermark held at `held` (a gap below the rename's entries), the rename's
    # invalidation lost with the server that took it.
    redis_client.set("changelog:applied", held)
    relay.mark_seen = held
    redis_client.set(f"metadata:crew:{cid}", old, ex=300)
    app.extensions["crew7.cache"].distrust()  # the error that came with the switch
    assert crew_name(client, cid) == "After"


# -- a lost watermark ------------------------------------------------------------------


def test_watermark_lost_with_stale_documents_replays(app_factory, outside_sql, redis_client):
    """A promoted replica that lagged: it has the documents from before a change and no
    watermark. A new process's relay replays the retained entries and applies them."""
    from crew7.services.changelog import get_relay

    app = app_factory()
    client = app.test_client()
    user = make_user(app, "erin")
    crew, agents = seed_crew(client, user, agents=1)
    cid = crew["id"]
    warm(client, cid, agents)
    key = f"metadata:crew:{cid}"
    stale = redis_client.dump(key)
    outside_sql("UPDATE crews SET name = 'Changed' WHERE id = :id", id=cid)
    relay = get_relay(app)
    assert relay.poll() >= 1
    assert crew_name(client, cid) == "Changed"
    # The replica: the old document, no fence replaced, no watermark.
    redis_client.delete("changelog:applied", f"fence:{{{key}}}")
    redis_client.restore(key, 0, stale, replace=True)
    assert crew_name(client, cid) == "Research Crew"
    fresh = app_factory()  # a process started after the failover
    applied = get_relay(fresh).poll()
    assert applied >= 1 and get_relay(fresh).last_replay["entries"] == applied
    assert crew_name(client, cid) == "Changed"
    assert int(redis_client.get("changelog:applied")) >= get_relay(fresh).cursor


def test_flushall_replays_every_recent_entry(app_factory, outside_sql, redis_client):
    from crew7.services.changelog import get_relay

    app = app_factory()
    client = app.test_client()
    user = make_user(app, "fred")
    crew, _ = seed_crew(client, user, agents=1)
    relay = get_relay(app)
    relay.poll()
    mark = int(redis_client.get("changelog:applied"))
    redis_client.flushall()
    applied = relay.poll()
    assert applied == relay.last_replay["entries"] and applied >= mark  # the whole window
    assert int(redis_client.get("changelog:applied")) == mark


def test_concurrent_relays_never_lower_the_watermark(app_factory, outside_sql, redis_client):
    from crew7.services.changelog import get_relay

    apps = [app_factory() for _ in range(3)]
    client = apps[0].test_client()
    user = make_user(apps[0], "gail")
    crew, _ = seed_crew(client, user, agents=0)
    seen = []

    def relay_loop(app):
        for _ in range(20):
            get_relay(app).poll()
            seen.append(int(redis_client.get("changelog:applied") or 0))

    threads = [threading.Thread(target=relay_loop, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for n in range(20):
        outside_sql("UPDATE crews SET description = :d WHERE id = :id", d=str(n), id=crew["id"])
    for t in threads:
        t.join(30)
    get_relay(apps[0]).poll()
    with apps[0].app_context():
        from tests.support.app import db_scalar

        top = db_scalar(apps[0], "SELECT max(id) FROM cache_changes")
    assert int(redis_client.get("changelog:applied")) == top
    assert get_relay(apps[0]).status()["lag_entries"] == 0


# -- what operators see -----------------------------------------------------------------


def metric(client, name):
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def test_metrics_and_cache_stats_show_size_and_lag(app, client, make_user, outside_sql):
    from crew7.services.changelog import get_relay

    admin = make_user("root", admin=True)
    crew, _ = seed_crew(client, admin, agents=0)
    get_relay(app).poll()
    assert metric(client, "crew7_cache_changelog_lag_entries") == 0
    # No relay runs in this process: the entries written by SQL wait.
    outside_sql("UPDATE crews SET name = 'x' WHERE id = :id", id=crew["id"])
    outside_sql("UPDATE crews SET name = 'y' WHERE id = :id", id=crew["id"])
    assert metric(client, "crew7_cache_changelog_lag_entries") == 4  # crew + stats, twice
    assert metric(client, "crew7_cache_changelog_oldest_unapplied_seconds") >= 0
    size = metric(client, "crew7_cache_changelog_entries")
    report = client.get("/cache/stats", headers=admin["headers"]).get_json()["changelog"]
    assert report["size"] == size and report["lag_entries"] == 4
    get_relay(app).poll()
    assert metric(client, "crew7_cache_changelog_lag_entries") == 0
    assert metric(client, "crew7_cache_changelog_applied_total") >= 4


def test_cache_log_and_cache_replay_commands(app, client, alice, runner, redis_client):
    import json

    crew, agents = seed_crew(client, alice, agents=1)
    log = json.loads(runner.invoke(args=["cache-log", "--last", "3"]).output)
    assert log["size"] >= 4 and log["lag_entries"] == 0 and len(log["last_entries"]) == 3
    assert log["last_entries"][0]["kind"] == "crew_document"
    warm(client, crew["id"], agents)
    assert redis_client.exists(f"metadata:crew:{crew['id']}")
    r = runner.invoke(args=["cache-replay"])
    assert r.exit_code == 0 and f"applied {log['size']} change-log entries" in r.output
    assert not redis_client.exists(f"metadata:crew:{crew['id']}")


def test_pruning_keeps_the_retention_and_ids_are_not_reused(app, client, alice, outside_sql):
    from crew7.services.changelog import get_relay
    from tests.support.app import db_scalar

    crew, _ = seed_crew(client, alice, agents=1)
    top = db_scalar(app, "SELECT max(id) FROM cache_changes")
    relay = get_relay(app)
    assert relay.prune() == 0
    outside_sql("UPDATE cache_changes SET created_at = '2000-01-01 00:00:00'")
    assert relay.prune(limit=2) == 2
    assert relay.prune() == top - 2
    client.patch(f"/crews/{crew['id']}", json={"name": "n"}, headers=alice["headers"])
    assert db_scalar(app, "SELECT min(id) FROM cache_changes") == top + 1


# -- run aggregates kept by the database ---------------------------------------------


def test_runs_written_by_sql_keep_crew_stats_exact(app, client, alice, outside_sql):
    """Inserted, changed, moved and deleted by SQL, in bulk: crew_stats stays what the
    runs add up to (recompute-stats's own computation)."""
    from crew7.extensions import db
    from crew7.models import CrewStats
    from crew7.services.aggregates import aggregate_from_runs

    one, _ = seed_crew(client, alice, agents=0, runs=[{"status": "running"}])
    two, _ = seed_crew(client, alice, agents=0)
    outside_sql(
        "INSERT INTO crews (owner_id, name, description, is_public, process, created_at,"
        " updated_at) VALUES (:o, 'by SQL', '', true, 'sequential', CURRENT_TIMESTAMP,"
        " CURRENT_TIMESTAMP)",
        o=alice["id"],
    )
    for n in range(6):
        outside_sql(
            "INSERT INTO runs (crew_id, status, duration, tokens_used, created_at, started_at)"
            " VALUES (:c, :s, :d, :t, CURRENT_TIMESTAMP, :at)",
            c=one["id"] if n % 2 else two["id"],
            s=("queued", "succeeded", "failed")[n % 3],
            d=None if n % 3 == 0 else float(n),
            t=10 * n,
            at=f"2026-01-0{n + 1} 00:00:00",
        )
    outside_sql("UPDATE runs SET status = 'succeeded', duration = 2.5 WHERE status = 'queued'")
    outside_sql(
        "UPDATE runs SET crew_id = :b WHERE id = (SELECT min(id) FROM runs WHERE crew_id = :a)",
        a=one["id"],
        b=two["id"],
    )
    outside_sql(
        "DELETE FROM runs WHERE id = (SELECT max(id) FROM runs WHERE crew_id = :a)",
        a=two["id"],
    )
    with app.app_context():
        expected = aggregate_from_runs(db.session.connection())
        rows = {s.crew_id: s for s in db.session.scalars(db.select(CrewStats))}
        assert len(rows) == 3  # the crew inserted by SQL has its row
        for crew_id, row in rows.items():
            want = expected.get(crew_id, {"total_runs": 0, "last_run_at": None})
            for column, value in want.items():
                got = getattr(row, column)
                if column == "last_run_at":  # SQLite's max() answers text
                    got, value = (None if v is None else str(v)[:19] for v in (got, value))
                assert got == value, (crew_id, column, got, value)


def test_an_entry_committed_after_a_newer_one_is_not_skipped(
    app, client, alice, database_url, db_kind, outside_sql, redis_client
):
    """PostgreSQL takes ids at insert: a transaction holding an older id commits after a
    newer one was relayed. The watermark waits below the gap, then the entry lands."""
    from crew7.services.changelog import get_relay

    if db_kind != "postgresql":
        pytest.skip("SQLite commits its writers one at a time, in id order")
    a, _ = seed_crew(client, alice, agents=0, name="A")
    b, _ = seed_crew(client, alice, agents=0, name="B")
    relay = get_relay(app)
    relay.poll()
    assert crew_name(client, a["id"]) == "A" and crew_name(client, b["id"]) == "B"
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as slow:
            with slow.begin():
                slow.execute(text("UPDATE crews SET name = 'A2' WHERE id = :id"), {"id": a["id"]})
                outside_sql("UPDATE crews SET name = 'B2' WHERE id = :id", id=b["id"])
                assert relay.poll() == 2  # B's crew and stats entries
                assert crew_name(client, b["id"]) == "B2"
                assert crew_name(client, a["id"]) == "A"  # refilled, from before A's commit
            applied = relay.poll()
    finally:
        engine.dispose()
    assert crew_name(client, a["id"]) == "A2"
    assert applied == 2 and not relay.gaps
    top = int(redis_client.get("changelog:applied"))
    assert relay.status()["lag_entries"] == 0 and top == relay.cursor


def test_one_process_replays_while_the_others_wait(app_factory, redis_client):
    """Workers starting on an empty Redis replay once: a second replay landing after the
    first one's warming would only refuse its fills."""
    from crew7.services.changelog import get_relay

    app = app_factory()
    seed_crew(app.test_client(), make_user(app, "hana"), agents=1)
    redis_client.flushall()
    redis_client.set("changelog:replaying", "another process", ex=10)
    relay = get_relay(app)
    assert relay.poll() == 0 and redis_client.get("changelog:applied") is None
    assert relay.start_up(wait=0.2) is False  # waited for the other, then gave up
    redis_client.delete("changelog:replaying")
    assert relay.start_up() is True and relay.last_replay["entries"] >= 4
    assert not redis_client.exists("changelog:replaying")


def test_a_claim_taken_after_another_process_replayed_does_not_replay_again(
    app_factory, redis_client
):
    """Two processes find no watermark; one replays and releases the claim; the other's
    claim, taken just after, reads the watermark again and does not replay (a second
    replay would refuse the fills of the warming that followed the first)."""
    from crew7.services.changelog import get_relay

    first, second = app_factory(), app_factory()
    user = make_user(first, "gus")
    seed_crew(first.test_client(), user, agents=1)
    redis_client.delete("changelog:applied")
    assert get_relay(first).poll() >= 1  # the replay
    mark = int(redis_client.get("changelog:applied"))
    cache = second.extensions["crew7.cache"]
    assert get_relay(second)._claim_replay(cache) == mark
    assert not redis_client.exists("changelog:replaying")
