"""The change feed (GET /metadata/updates): public documents' changes in commit order as
ERC-4906 events, from the durable change log; private crews' changes hidden except the
one that makes a crew disappear; pages that never skip, split or repeat an event; cursors
that expire with the log's retention; commit order on PostgreSQL.

Writes go through the API or through a connection of their own (as psql would), so only
the database's triggers record them.
"""

import pytest
from sqlalchemy import text

from tests.support.app import outside_engine
from tests.support.helpers import seed_crew


def read(client, after=None, limit=None):
    query = {k: v for k, v in (("after", after), ("limit", limit)) if v is not None}
    response = client.get("/metadata/updates", query_string=query)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    return response.get_json()


def events_of(page):
    """Events without their cursor and time: (event, token_type, id or (from, to))."""
    out = []
    for e in page["events"]:
        ids = e["token_id"] if "token_id" in e else (e["from_token_id"], e["to_token_id"])
        out.append((e["event"][0], e["token_type"], ids))
    return out


def tail(client, cursor):
    """Everything after ``cursor``: (events, the next cursor)."""
    page = read(client, cursor, limit=1000)
    assert not page["has_more"]
    return events_of(page), page["next_cursor"]


def patch_crew(client, user, crew_id, **fields):
    r = client.patch(f"/crews/{crew_id}", json=fields, headers=user["headers"])
    assert r.status_code == 200, r.get_json()


def test_a_public_crews_changes_and_its_disappearance(client, alice, bob):
    crew, agents = seed_crew(client, alice, agents=3)
    cid, aids = crew["id"], [a["id"] for a in agents]
    first, cursor = tail(client, None)
    # The crew, then each agent with the crew's document (its agent count).
    assert first[0] == ("M", "crew", cid)
    assert [e for e in first if e[1] == "agent"] == [("M", "agent", a) for a in aids]

    patch_crew(client, alice, cid, name="Renamed")
    got, cursor = tail(client, cursor)
    assert got == [("M", "crew", cid), ("B", "agent", (aids[0], aids[2]))]

    client.post(f"/crews/{cid}/runs", json={"status": "queued"}, headers=alice["headers"])
    got, cursor = tail(client, cursor)
    assert got == [("M", "crew", cid)]

    # Turning private is the one change of a private crew shown: consumers drop it.
    patch_crew(client, alice, cid, is_public=False)
    got, cursor = tail(client, cursor)
    assert got == [("M", "crew", cid), ("B", "agent", (aids[0], aids[2]))]

    # While private: nothing (a rename, an agent, a run, an agent deleted).
    patch_crew(client, alice, cid, name="Secret")
    client.post(f"/crews/{cid}/runs", json={"status": "queued"}, headers=alice["headers"])
    client.post(f"/crews/{cid}/agents", json={"name": "Dee", "role": "r"}, headers=alice["headers"])
    client.delete(f"/agents/{aids[1]}", headers=alice["headers"])
    got, cursor = tail(client, cursor)
    assert got == []

    # Public again: shown again, with the agents it has now.
    patch_crew(client, alice, cid, is_public=True)
    got, cursor = tail(client, cursor)
    assert got[0] == ("M", "crew", cid) and got[1] == ("M", "agent", aids[0])
    assert got[2][1] == "agent" and len(got) == 3


def test_a_private_crews_life_is_never_shown(client, alice, outside_sql):
    crew, agents = seed_crew(
        client, alice, agents=2, runs=[{"status": "succeeded"}], is_public=False
    )
    outside_sql("UPDATE agents SET name = 'x' WHERE crew_id = :id", id=crew["id"])
    outside_sql("DELETE FROM crews WHERE id = :id", id=crew["id"])
    page = read(client)
    assert page == {"events": [], "next_cursor": None, "has_more": False}


@pytest.mark.parametrize("how", ["api", "sql"])
def test_a_deleted_public_crew_names_the_agents_it_had(client, alice, outside_sql, how):
    """Its agents are gone when the feed is read: the log recorded them at deletion."""
    crew, agents = seed_crew(client, alice, agents=2)
    seed_crew(client, alice, agents=1, name="Other")  # ids not contiguous with the first
    late = client.post(
        f"/crews/{crew['id']}/agents", json={"name": "Late", "role": "r"}, headers=alice["headers"]
    ).get_json()["id"]
    _, cursor = tail(client, None)
    aids = [a["id"] for a in agents]
    if how == "api":
        assert client.delete(f"/crews/{crew['id']}", headers=alice["headers"]).status_code == 204
    else:
        outside_sql("DELETE FROM crews WHERE id = :id", id=crew["id"])
    got, _ = tail(client, cursor)
    assert got == [
        ("M", "crew", crew["id"]),
        ("B", "agent", (aids[0], aids[1])),
        ("M", "agent", late),
    ]


def test_an_agent_moved_out_of_a_public_crew_is_shown_as_it_leaves(client, alice, outside_sql):
    public, agents = seed_crew(client, alice, agents=1)
    private, _ = seed_crew(client, alice, agents=0, is_public=False, name="P")
    _, cursor = tail(client, None)
    aid = agents[0]["id"]
    outside_sql("UPDATE agents SET crew_id = :c WHERE id = :a", c=private["id"], a=aid)
    got, cursor = tail(client, cursor)
    assert got == [("M", "agent", aid), ("M", "crew", public["id"])]
    outside_sql("UPDATE agents SET name = 'hidden' WHERE id = :a", a=aid)
    assert tail(client, cursor)[0] == []


def test_pages_never_skip_split_or_repeat(client, alice):
    crews = [seed_crew(client, alice, agents=3, name=f"C{n}")[0] for n in range(3)]
    for crew in crews:
        patch_crew(client, alice, crew["id"], description="new")
    everything = read(client, limit=1000)
    assert not everything["has_more"]
    assert len({e["cursor"] for e in everything["events"]}) == len(everything["events"])
    for limit in (1, 2, 3, 7):
        seen, cursor = [], None
        for _ in range(len(everything["events"]) + 1):  # bounded: a page holds one at least
            page = read(client, cursor, limit)
            assert 0 < len(page["events"]) <= limit
            seen += page["events"]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert [e["cursor"] for e in seen] == [e["cursor"] for e in everything["events"]]
    # Any event's cursor resumes right after it.
    events = everything["events"]
    for n in (0, 5, len(events) - 2):
        page = read(client, events[n]["cursor"], limit=1)
        assert page["events"] == [events[n + 1]]


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=+5", "limit"),
        ("after=", "after"),
        ("after=" + "9" * 101, "after"),
    ],
)
def test_bad_arguments_are_a_json_400(client, query, field):
    response = client.get(f"/metadata/updates?{query}")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["status"] == 400 and field in error["fields"]
    assert error["message"] == "invalid query arguments"


@pytest.mark.parametrize(
    "cursor", ["abc", "1.2.3", "0.1.1." + "1" * 19, "-1.2.3.4", "0.01.1.5", "1.2.3.4 "]
)
def test_a_malformed_cursor_is_a_json_400(client, cursor):
    response = client.get("/metadata/updates", query_string={"after": cursor})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and error["fields"] == {"after": ["malformed cursor"]}


def test_a_cursor_older_than_the_retention_is_gone(client, alice, outside_sql):
    seed_crew(client, alice, agents=1)
    outside_sql("UPDATE cache_changes SET created_at = '2000-01-01 00:00:00'")
    first = read(client, limit=1)  # entries not pruned yet are still served
    assert first["has_more"]
    response = client.get("/metadata/updates", query_string={"after": first["next_cursor"]})
    assert response.status_code == 410
    error = response.get_json()["error"]
    assert error["code"] == "gone" and error["oldest_cursor"]
    # The oldest cursor reads from the oldest entry kept.
    assert read(client, error["oldest_cursor"])["events"] == read(client)["events"]
    # A reader that had read everything stays valid: its cursor is stamped when it read.
    assert client.get(f"/metadata/updates?after={read(client)['next_cursor']}").status_code == 200


def test_an_open_transaction_holds_the_feed_back_until_it_commits(
    app, client, alice, database_url, db_kind, outside_sql
):
    """PostgreSQL allocates ids at insert and commits in another order: a transaction
    holding an older id commits after a newer one. The feed serves neither past it while
    it is open, then both, in commit order."""
    if db_kind != "postgresql":
        pytest.skip("SQLite commits its writers one at a time, in id order")
    a, _ = seed_crew(client, alice, agents=0, name="A")
    b, _ = seed_crew(client, alice, agents=0, name="B")
    _, cursor = tail(client, None)
    engine = outside_engine(database_url)
    try:
        with engine.connect() as slow:
            with slow.begin():
                slow.execute(text("UPDATE crews SET name = 'A2' WHERE id = :id"), {"id": a["id"]})
                outside_sql("UPDATE crews SET name = 'B2' WHERE id = :id", id=b["id"])
                while_open, held = tail(client, cursor)
            after_commit, _ = tail(client, held)
    finally:
        engine.dispose()
    # Never skipped: a reader that moved past B's entry would never see A's.
    assert ("M", "crew", a["id"]) in while_open + after_commit
    assert while_open == []  # B's change waited behind A's open transaction
    assert after_commit == [("M", "crew", a["id"]), ("M", "crew", b["id"])]


def test_the_oldest_cursor_does_not_pass_an_open_transaction(
    app, client, alice, database_url, db_kind, outside_sql
):
    """A 410's oldest cursor on a log whose only committed entries follow an open
    transaction's: starting from it must not pass that transaction's entries."""
    if db_kind != "postgresql":
        pytest.skip("SQLite commits its writers one at a time, in id order")
    insert = (
        "INSERT INTO crews (owner_id, name, description, is_public, process, created_at,"
        " updated_at) VALUES (:owner, :name, '', true, 'sequential', now(), now())"
    )
    engine = outside_engine(database_url)
    try:
        with engine.connect() as slow:
            with slow.begin():
                slow.execute(text(insert), {"owner": alice["id"], "name": "A"})
                outside_sql(insert, owner=alice["id"], name="B")
                response = client.get("/metadata/updates?after=0.0.0.0")
                assert response.status_code == 410
                oldest = response.get_json()["error"]["oldest_cursor"]
    finally:
        engine.dispose()
    page = read(client, oldest, limit=1000) if oldest else read(client, limit=1000)
    assert len(events_of(page)) == 2  # A's crew and B's


def test_the_feed_is_documented_in_openapi(client):
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/metadata/updates"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"after", "limit"}
    assert {"200", "400", "410"} <= set(operation["responses"])


def test_the_relay_keeps_the_entries_the_feed_needs(app_factory, client, alice, outside_sql):
    """The relay prunes at the longer of its retention (an hour) and FEED_RETENTION."""
    from datetime import timedelta

    from crew7.models import utcnow
    from crew7.services.changelog import get_relay

    app = app_factory()
    seed_crew(app.test_client(), alice, agents=1)
    outside_sql("UPDATE cache_changes SET created_at = :t", t=utcnow() - timedelta(days=2))
    assert get_relay(app).prune() == 0  # FEED_RETENTION: 7 days
    assert read(client)["events"]
    shorter = app_factory(FEED_RETENTION=86400)
    assert get_relay(shorter).prune() > 0
    assert read(client)["events"] == []
