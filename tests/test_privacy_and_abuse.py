"""Token ids are never reused; stats never name a private or deleted crew; anonymous
traffic cannot grow the popularity set or steer it; warming tells the truth."""

import random
import sqlite3
import threading
import time

import pytest

from tests.support.app import make_app
from tests.support.helpers import body, seed_crew
from tests.support.processes import free_port

RUN = {"status": "succeeded", "duration": 3.0}


# -- ids ----------------------------------------------------------------------------


def test_deleted_ids_are_never_handed_to_another_users_rows(client, alice, bob):
    crew, agents = seed_crew(client, alice, agents=2)
    last_agent = agents[-1]["id"]
    # Delete the newest agent and the newest crew: the ids a plain SQLite rowid reuses.
    assert client.delete(f"/agents/{last_agent}", headers=alice["headers"]).status_code == 204
    assert client.delete(f"/crews/{crew['id']}", headers=alice["headers"]).status_code == 204
    theirs, their_agents = seed_crew(client, bob, agents=1)
    assert theirs["id"] > crew["id"]
    assert their_agents[0]["id"] > last_agent
    # The old token ids still name nothing.
    assert client.get(f"/metadata/crew/{crew['id']}").status_code == 404
    assert client.get(f"/metadata/agent/{last_agent}").status_code == 404
    assert client.get(f"/metadata/agent/{agents[0]['id']}").status_code == 404


def test_sqlite_migration_keeps_every_row_and_stops_id_reuse(tmp_path, redis_server):
    from flask_migrate import downgrade, upgrade

    path = tmp_path / "migrated.sqlite3"
    app = make_app(f"sqlite:///{path}", redis_server.url)
    with app.app_context():
        upgrade(revision="0001")
    con = sqlite3.connect(path)
    con.executescript(
        """
        INSERT INTO users VALUES (1, 'a', 'h1', 0, '2026-01-01'), (2, 'b', 'h2', 0, '2026-01-01');
        INSERT INTO crews VALUES
          (1, 1, 'c1', '', 1, 'sequential', '2026-01-01', '2026-01-01'),
          (2, 1, 'c2', '', 0, 'hierarchical', '2026-01-01', '2026-01-01');
        INSERT INTO agents VALUES (1, 2, 'a', 'r', '', '', 'x', '[]', '2026-01-01', '2026-01-01');
        INSERT INTO runs VALUES (1, 2, 'succeeded', NULL, NULL, 1.5, 3, '2026-01-01');
        INSERT INTO crew_stats VALUES (2, 1, 0, 0, 1, 0, 1.5, 1, 3, NULL);
        """
    )
    con.close()
    with app.app_context():
        upgrade()
    con = sqlite3.connect(path)
    counts = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("users", "crews", "agents", "runs", "crew_stats")
    }
    # Rebuilding the tables cascaded nothing; 0004 rebuilt crew_stats from the runs, a
    # row for every crew (crew 1 had none).
    assert counts == {"users": 2, "crews": 2, "agents": 1, "runs": 1, "crew_stats": 2}
    assert con.execute(
        "SELECT total_runs, tokens_sum FROM crew_stats WHERE crew_id = 2"
    ).fetchone() == (1, 3)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"ix_crews_public_id", "ix_agents_crew_id", "ix_runs_crew_status"} <= indexes
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("DELETE FROM crews WHERE id = 2")
    assert con.execute("SELECT count(*) FROM agents").fetchone()[0] == 0  # cascade still on
    con.execute(
        "INSERT INTO crews (owner_id, name, description, is_public, process, created_at,"
        " updated_at) VALUES (2, 'n', '', 1, 'sequential', '2026-01-02', '2026-01-02')"
    )
    assert con.execute("SELECT max(id) FROM crews").fetchone()[0] == 3
    con.commit()
    con.close()
    with app.app_context():
        downgrade(revision="0001")
        upgrade()


# -- stats and leaderboards ------------------------------------------------------------


def _listed(client):
    """Crew ids and names in every document that lists crews."""
    popular = body(client.get("/stats/popular-crews"))["crews"]
    runs = body(client.get("/stats/leaderboard/runs"))["entries"]
    rate = body(client.get("/stats/leaderboard/success-rate"))["entries"]
    return {
        "popular": {c["id"]: c["name"] for c in popular},
        "runs": {c["id"]: c["name"] for c in runs},
        "success-rate": {c["id"]: c["name"] for c in rate},
    }


@pytest.mark.topologies
def test_stats_forget_a_crew_the_moment_it_is_private_renamed_or_deleted(client, alice):
    crews = [seed_crew(client, alice, agents=1, runs=[RUN] * 6, name=f"Crew {n}")[0] for n in "AB"]
    target = crews[0]["id"]
    url = f"/crews/{target}"
    for _ in range(3):
        client.get(f"/metadata/crew/{target}")
    listed = _listed(client)  # now cached
    assert all(target in ids for ids in listed.values()), listed

    r = client.patch(url, json={"is_public": False}, headers=alice["headers"])
    assert r.status_code == 200
    assert all(target not in ids for ids in _listed(client).values())

    client.patch(url, json={"is_public": True}, headers=alice["headers"])
    assert all(target in ids for ids in _listed(client).values())

    client.patch(url, json={"name": "Renamed"}, headers=alice["headers"])
    assert all(ids[target] == "Renamed" for ids in _listed(client).values())

    assert client.delete(url, headers=alice["headers"]).status_code == 204
    assert all(target not in ids for ids in _listed(client).values())


def test_a_deleted_crew_leaves_the_popularity_set(client, alice, redis_client):
    crew, _ = seed_crew(client, alice, agents=0)
    client.get(f"/metadata/crew/{crew['id']}")
    assert redis_client.zscore("stats:crew_views", str(crew["id"])) == 1
    client.delete(f"/crews/{crew['id']}", headers=alice["headers"])
    assert redis_client.zscore("stats:crew_views", str(crew["id"])) is None


# -- abuse ----------------------------------------------------------------------------


@pytest.mark.topologies
def test_unknown_and_private_ids_add_nothing_to_the_popularity_set(
    app, client, alice, redis_client
):
    private, _ = seed_crew(client, alice, agents=0, is_public=False)
    rng = random.Random(9)
    ids = [rng.randint(1000, 2**31 - 1) for _ in range(200)]
    for crew_id in ids[:100]:
        assert client.get(f"/metadata/crew/{crew_id}").status_code == 404
    for start in range(100, 200, 50):
        batch = ",".join(str(i) for i in ids[start : start + 50])
        assert client.get(f"/metadata/crews?ids={batch}").status_code == 200
    for _ in range(2):  # a miss, then the negative entry's hit
        assert client.get(f"/metadata/crew/{private['id']}").status_code == 404
        client.get(f"/metadata/crews?ids={private['id']}")
    views = app.extensions["crew7.cache"].views
    if views is not None:
        views.flush()
    assert redis_client.zcard("stats:crew_views") == 0


@pytest.mark.topologies
def test_a_batch_counts_one_view_per_crew(app, client, alice, redis_client):
    crew, _ = seed_crew(client, alice, agents=0)
    same = ",".join([str(crew["id"])] * 100)
    for _ in range(2):  # all misses, then all hits
        r = client.get(f"/metadata/crews?ids={same}")
        assert r.status_code == 200 and len(body(r)) == 100
    views = app.extensions["crew7.cache"].views
    if views is not None:
        views.flush()
    assert redis_client.zscore("stats:crew_views", str(crew["id"])) == 2


def test_the_popularity_set_keeps_only_the_most_viewed(app_factory, redis_client, make_user):
    app = app_factory(POPULARITY_SIZE=3)
    client = app.test_client()
    user = make_user("carol")
    crews = [seed_crew(client, user, agents=0, name=f"C{n}")[0]["id"] for n in range(6)]
    for n, crew_id in enumerate(crews):
        for _ in range(n + 1):  # crew k gets k + 1 views
            client.get(f"/metadata/crew/{crew_id}")
    members = [int(m) for m in redis_client.zrange("stats:crew_views", 0, -1)]
    assert sorted(members) == crews[3:]


# -- warming --------------------------------------------------------------------------


def test_warm_cache_fails_loudly_when_redis_is_unreachable(database_url):
    dead = make_app(
        database_url,
        f"redis://127.0.0.1:{free_port()}/0",
        REDIS_SOCKET_TIMEOUT=0.1,
        REDIS_CONNECT_TIMEOUT=0.1,
    )
    result = dead.test_cli_runner().invoke(args=["warm-cache", "--limit", "3"])
    assert result.exit_code != 0
    assert "Redis is unavailable" in result.output
    assert "complete" not in result.output


def test_warm_cache_reports_what_it_stored(client, runner, alice, redis_client):
    crews = [seed_crew(client, alice, agents=1)[0]["id"] for _ in range(3)]
    client.get(f"/metadata/crew/{crews[0]}")  # already cached
    result = runner.invoke(args=["warm-cache", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert (
        "stored 11 (agent 3, crew 2, crew_agents 3, stats 3); present 1 (crew 1)" in result.output
    )
    assert redis_client.exists(*[f"metadata:crew:{c}" for c in crews]) == 3


def test_a_stats_fill_that_raced_a_privacy_flip_is_refused(app_factory, make_user):
    app = app_factory(CACHE_FILL_DELAY=0.6)
    owner = make_user("dana")
    client = app.test_client()
    crew, _ = seed_crew(client, owner, agents=0, runs=[RUN] * 6)
    # A reader computes the leaderboard while the crew is public, then stalls before
    # storing it; meanwhile the owner makes the crew private.
    reader = threading.Thread(target=lambda: app.test_client().get("/stats/leaderboard/runs"))
    reader.start()
    time.sleep(0.2)
    r = client.patch(f"/crews/{crew['id']}", json={"is_public": False}, headers=owner["headers"])
    assert r.status_code == 200
    reader.join()
    entries = body(client.get("/stats/leaderboard/runs"))["entries"]
    assert crew["id"] not in [e["id"] for e in entries]
