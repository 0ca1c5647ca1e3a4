"""A private object and an unknown id cost the same: the same SQL statements, whatever the
answer, so a client cannot tell them apart by timing a 404."""

import pytest
from sqlalchemy import event

from tests.test_write_order import make_objects

ROUTES = [
    ("GET", "/crews/{crew}", None),
    ("GET", "/crews/{crew}/runs", None),
    ("GET", "/agents/{agent}", None),
    ("PATCH", "/crews/{crew}", {"name": "x"}),
    ("DELETE", "/crews/{crew}", None),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}),
    ("PATCH", "/agents/{agent}", {"name": "x"}),
    ("DELETE", "/agents/{agent}", None),
    ("POST", "/crews/{crew}/runs", {}),
    ("PATCH", "/runs/{run}", {"status": "failed"}),
]


@pytest.fixture
def statements(app):
    """Calls count(request) -> (response, SQL statements it ran)."""
    from crew7.extensions import db

    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)

    def count(send):
        seen.clear()
        response = send()
        return response, list(seen)

    yield count
    event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    ("method", "template", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
def test_private_and_unknown_run_the_same_statements(
    client, alice, bob, statements, method, template, body
):
    private = make_objects(client, alice, False)
    public = make_objects(client, alice, True)
    unknown = {"crew": 999_999, "agent": 999_999, "run": 999_999}
    for who, headers in (("anonymous", {}), ("bob", bob["headers"])):
        if method != "GET" and who == "anonymous":
            continue  # a write without a token stops at 401 before any lookup
        runs = {}
        for name, ids in (("unknown", unknown), ("private", private), ("public", public)):
            path = template.format(**ids)
            response, sql = statements(
                lambda p=path, h=headers: client.open(p, method=method, json=body, headers=h)
            )
            runs[name] = (response.status_code, len(sql), sql)
        assert runs["unknown"][0] == runs["private"][0] == 404, (who, runs)
        assert runs["unknown"][1] == runs["private"][1], (who, runs)
        if method != "GET":
            # Someone else's public object: a 403 after the very same lookup.
            assert runs["public"][0] == 403 and runs["public"][1] == runs["private"][1], runs
