"""Warming (once per deployment), popularity, stats and their CLI commands."""

import json
import time
import urllib.request

import pytest

from tests.support.gunicorn import GunicornServer
from tests.support.helpers import body, redis_env, seed_crew

pytestmark = pytest.mark.topologies


def seed(app, **kw):
    from crew7.services.seed import seed_demo

    with app.app_context():
        return seed_demo(**kw)


def test_popularity_counts_views_and_falls_back_to_newest(app, client, redis_client):
    seed(app, users=2, crews=6, agents_per_crew=1, runs_per_crew=3, private_every=3)
    newest = body(client.get("/stats/popular-crews"))["crews"]
    # No views yet: the newest public crews (3 and 6 are private).
    assert [c["id"] for c in newest][:4] == [5, 4, 2, 1]
    redis_client.delete("stats:popular_crews")
    for _ in range(3):
        client.get("/metadata/crew/2")
    client.get("/metadata/crew/4")
    client.get("/metadata/crews?ids=4,4,1")  # a view of 4 and of 1: once per id
    views = app.extensions["crew7.cache"].views
    if views is not None:  # a Cluster buffers views and flushes them each second
        views.flush()
    assert redis_client.zscore("stats:crew_views", "2") == 3
    assert redis_client.zscore("stats:crew_views", "4") == 2
    assert redis_client.zscore("stats:crew_views", "1") == 1
    ranked = [c["id"] for c in body(client.get("/stats/popular-crews"))["crews"]]
    assert ranked[:3] == [2, 4, 1]


def test_leaderboards(app, client):
    seed(app, users=2, crews=8, agents_per_crew=1, runs_per_crew=10, private_every=4)
    runs = body(client.get("/stats/leaderboard/runs"))
    assert runs["type"] == "runs" and len(runs["entries"]) == 6  # 2 of 8 are private
    rate = body(client.get("/stats/leaderboard/success-rate"))["entries"]
    rates = [e["success_rate"] for e in rate]
    assert rates == sorted(rates, reverse=True)
    r = client.get("/stats/leaderboard/unknown")
    assert r.status_code == 404 and body(r)["error"]["code"] == "not_found"


def test_warm_cache_command(app, runner, redis_client):
    seed(app, users=1, crews=12, agents_per_crew=2, runs_per_crew=2, private_every=0)
    result = runner.invoke(args=["warm-cache", "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert (
        "Cache warming complete: stored 23 (agent 10, crew 5, crew_agents 5, stats 3); "
        "present 0; refused 0" in result.output
    )
    assert (
        len([k for k in redis_client.scan_iter("metadata:crew:*") if not k.endswith(b"agents")])
        == 5
    )
    assert (
        redis_client.exists(
            "stats:leaderboard:runs", "stats:leaderboard:success-rate", "stats:popular_crews"
        )
        == 3
    )
    assert len(list(redis_client.scan_iter("metadata:agent:*"))) == 10


def test_cache_stats_command(app, client, runner, redis_client):
    seed(app, users=1, crews=3, agents_per_crew=1, runs_per_crew=1, private_every=0)
    client.get("/metadata/crew/1")
    client.get("/metadata/agent/1")
    result = runner.invoke(args=["cache-stats"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["keys"]["crew"] == 1 and info["keys"]["agent"] == 1
    assert info["memory_used"] and info["breaker"] == "closed"


def test_recompute_stats_agrees_with_incremental(app, client, alice, runner):
    from crew7.extensions import db
    from crew7.models import CrewStats
    from crew7.services.aggregates import _COUNTERS, aggregate_from_runs

    crew, _ = seed_crew(client, alice, agents=0)
    cid = crew["id"]
    ids = []
    for n in range(12):
        status = ["queued", "running", "succeeded", "failed"][n % 4]
        r = client.post(
            f"/crews/{cid}/runs",
            json={
                "status": status,
                "tokens_used": n,
                "started_at": f"2026-02-{n + 1:02d}T00:00:00",
            },
            headers=alice["headers"],
        )
        ids.append(r.get_json()["id"])
    for run_id in ids[:4]:
        client.patch(
            f"/runs/{run_id}",
            json={"status": "succeeded", "duration": 2.5},
            headers=alice["headers"],
        )
    # The counters the app keeps per crew, and the time of the last run.
    columns = [*_COUNTERS, "last_run_at"]

    def snapshot():
        with app.app_context():
            db.session.expire_all()
            row = db.session.get(CrewStats, cid)
            return {c: getattr(row, c) for c in columns}

    incremental = snapshot()
    with app.app_context():
        from_runs = aggregate_from_runs(db.session.connection(), [cid])[cid]
    assert {c: from_runs[c] for c in columns if c != "last_run_at"} == pytest.approx(
        {c: incremental[c] for c in columns if c != "last_run_at"}, rel=1e-12
    )
    assert str(from_runs["last_run_at"])[:19] == str(incremental["last_run_at"])[:19]
    assert incremental["total_runs"] == 12 and incremental["succeeded_runs"] == 6
    result = runner.invoke(args=["recompute-stats"])
    assert result.exit_code == 0 and "1 crews" in result.output
    again = snapshot()
    assert again.pop("duration_sum") == pytest.approx(incremental.pop("duration_sum"), rel=1e-12)
    assert again == incremental


def test_create_user_prints_token_once(app, runner, client):
    result = runner.invoke(args=["create-user", "zed", "--admin"])
    assert result.exit_code == 0
    token = result.stdout.strip().splitlines()[0]
    r = client.post("/crews", json={"name": "z"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201
    from tests.support.app import db_scalar

    stored = db_scalar(app, "SELECT token_hash FROM users WHERE name = 'zed'")
    assert token not in stored and len(stored) == 64
    assert runner.invoke(args=["create-user", "zed"]).exit_code != 0


def test_seed_demo_is_deterministic(app, runner):
    result = runner.invoke(args=["seed-demo", "--crews", "10", "--runs-per-crew", "20"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["crews"] == 10 and summary["runs"] == 200
    from tests.support.app import db_scalar

    assert db_scalar(app, "SELECT count(*) FROM crews WHERE is_public = false") == 2
    total = db_scalar(app, "SELECT sum(duration) FROM runs")
    assert total == pytest.approx(61903.14)  # the same data on every run (seed 7)
    assert db_scalar(app, "SELECT sum(duration_sum) FROM crew_stats") == pytest.approx(total)
    assert runner.invoke(args=["seed-demo"]).exit_code != 0  # already seeded


@pytest.mark.slow
@pytest.mark.gunicorn
def test_warming_runs_once_across_gunicorn_workers(
    db_kind, database_url, redis_settings, redis_client, app
):
    seed(app, users=1, crews=15, agents_per_crew=1, runs_per_crew=2, private_every=0)
    env = {
        "DATABASE_URL": database_url,
        **redis_env(redis_settings),
        "CREW7_CACHE_WARM_ON_START": "true",
        "CREW7_CACHE_WARM_COUNT": "10",
    }
    with GunicornServer(env, workers=3) as server:
        # Serving is not delayed by warming.
        with urllib.request.urlopen(server.url + "/healthz", timeout=2) as r:
            assert r.status == 200
        deadline = time.monotonic() + 15
        while "Cache warming complete" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # give the other workers time to (not) warm
        log = server.output()
        assert len(server.worker_pids()) == 3
    assert log.count("Cache warming complete: stored 10 (crew 10); present 0; refused 0") == 1, log
    crews = [k for k in redis_client.scan_iter("metadata:crew:*") if not k.endswith(b":agents")]
    assert len(crews) == 10
