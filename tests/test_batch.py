"""A batch's misses: one query for all of them, filled together, fenced and single-flight."""

import threading
import time

import pytest
from sqlalchemy import event

from tests.support.app import make_user
from tests.support.helpers import body, seed_crew

pytestmark = pytest.mark.topologies


def _owner(app):
    return make_user(app, "owner")


class Statements:
    """SELECTs run against the app's engine while active."""

    def __init__(self, app):
        from crew7.extensions import db

        with app.app_context():
            self.engine = db.engine
        self.selects = []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            self.selects.append(statement)


def test_cold_batch_is_one_query_and_the_same_bytes_as_single_requests(app_factory, redis_client):
    app = app_factory()
    client = app.test_client()
    owner = _owner(app)
    crews = [seed_crew(client, owner, agents=n % 3)[0]["id"] for n in range(30)]
    private = seed_crew(client, owner, agents=1, is_public=False)[0]["id"]
    ids = [*crews, private, 2**31 - 1, crews[0]]
    redis_client.flushall()
    cache = app.extensions["crew7.cache"]
    cache.counters.reset()
    with Statements(app) as seen:
        batch = body(client.get("/metadata/crews?ids=" + ",".join(map(str, ids))))
    assert len(seen.selects) == 1, seen.selects
    assert cache.counters.computations == len(crews) + 2  # the private and the unknown id
    assert batch[-3:-1] == [None, None] and batch[-1] == batch[0]
    # Each document is stored, and is what a single request builds.
    for crew_id in crews:
        assert redis_client.exists(f"metadata:crew:{crew_id}")
    redis_client.flushall()
    singles = [body(client.get(f"/metadata/crew/{c}")) for c in crews]
    assert singles == batch[: len(crews)]


def test_concurrent_cold_batches_compute_each_crew_once(app_factory):
    app = app_factory(CACHE_FILL_DELAY=0.3)
    client = app.test_client()
    owner = _owner(app)
    crews = [seed_crew(client, owner, agents=0)[0]["id"] for _ in range(20)]
    cache = app.extensions["crew7.cache"]
    cache.counters.reset()
    url = "/metadata/crews?ids=" + ",".join(map(str, crews))
    results = []

    def get():
        results.append(body(app.test_client().get(url)))

    threads = [threading.Thread(target=get) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 6 and all(r == results[0] for r in results)
    assert cache.counters.computations == len(crews)


def test_a_batch_fill_that_raced_a_rename_is_refused(app_factory, redis_client):
    app = app_factory(CACHE_FILL_DELAY=0.5)
    client = app.test_client()
    owner = _owner(app)
    crews = [seed_crew(client, owner, agents=0, name=f"Before {n}")[0]["id"] for n in range(3)]
    url = "/metadata/crews?ids=" + ",".join(map(str, crews))
    reader = threading.Thread(target=lambda: app.test_client().get(url))
    reader.start()
    time.sleep(0.2)  # the reader has built the documents and waits to fill them
    r = client.patch(f"/crews/{crews[1]}", json={"name": "After"}, headers=owner["headers"])
    assert r.status_code == 200
    reader.join(10)
    assert redis_client.get(f"metadata:crew:{crews[1]}") is None
    assert body(client.get(url))[1]["name"] == "After"
    assert app.extensions["crew7.cache"].counters.fills_rejected >= 1


def test_warming_builds_each_family_with_one_query_per_chunk(app_factory, redis_client):
    app = app_factory()
    client = app.test_client()
    owner = _owner(app)
    crews = [seed_crew(client, owner, agents=2)[0]["id"] for _ in range(40)]
    redis_client.flushall()
    with Statements(app) as seen:
        result = app.test_cli_runner().invoke(args=["warm-cache", "--limit", "40"])
    assert result.exit_code == 0, result.output
    assert "stored 163 (agent 80, crew 40, crew_agents 40, stats 3)" in result.output
    # Ranking, then per family one or two queries, then the three stats documents.
    assert len(seen.selects) <= 12, seen.selects
    for crew_id in crews:
        assert (
            redis_client.exists(f"metadata:crew:{crew_id}", f"metadata:crew:{crew_id}:agents") == 2
        )
