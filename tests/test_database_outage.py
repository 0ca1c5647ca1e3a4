"""A database outage: cached documents are still served, the rest get a JSON 503."""

import pytest

from tests.support.app import make_app, make_user, reset_schema
from tests.support.helpers import body, seed_crew
from tests.support.servers import PostgresServer, running


@pytest.fixture
def own_postgres():
    yield from running(PostgresServer)


def test_database_down(own_postgres, redis_server, redis_client):
    app = make_app(own_postgres.url, redis_server.url)
    reset_schema(app)
    client = app.test_client()
    user = make_user(app, "owner")
    cached, _ = seed_crew(client, user, agents=0)
    uncached, _ = seed_crew(client, user, agents=0, name="Cold")
    assert client.get(f"/metadata/crew/{cached['id']}").status_code == 200
    own_postgres.stop()
    try:
        r = client.get(f"/metadata/crew/{cached['id']}")
        assert r.status_code == 200 and body(r)["name"] == "Research Crew"
        for url in (f"/metadata/crew/{uncached['id']}", f"/crews/{uncached['id']}", "/crews"):
            r = client.get(url)
            assert r.status_code == 503, (url, r.status_code)
            assert body(r)["error"]["code"] == "service_unavailable"
            assert int(r.headers["Retry-After"]) > 0
            assert "Traceback" not in r.get_data(as_text=True)
        r = client.post("/crews", json={"name": "x"}, headers=user["headers"])
        assert r.status_code == 503
        assert client.get("/readyz").status_code == 503
    finally:
        own_postgres.restart()
    assert client.get(f"/metadata/crew/{uncached['id']}").status_code == 200
    with app.app_context():
        from crew7.extensions import db

        db.session.remove()
        db.engine.dispose()


def test_database_lost_before_teardown_keeps_the_response(own_postgres, redis_server):
    """The session's end-of-request rollback on a dead connection must not turn a finished
    response into the WSGI server's HTML 500."""
    app = make_app(own_postgres.url, redis_server.url)
    reset_schema(app)

    @app.get("/query-then-lose-db")
    def query_then_lose_db():
        from sqlalchemy import text

        from crew7.extensions import db

        db.session.execute(text("SELECT 1"))  # the session now holds a connection
        own_postgres.stop()
        return {"ok": True}

    try:
        r = app.test_client().get("/query-then-lose-db")
        assert r.status_code == 200 and r.get_json() == {"ok": True}
    finally:
        own_postgres.restart()
    with app.app_context():
        from crew7.extensions import db

        db.engine.dispose()
