"""Token images (/images/crew/<id>.svg, /images/agent/<id>.svg): cards of the documents,
served and cached like them, and invalidated by every change that reaches a document,
including SQL made outside the app (the change log's relay)."""

import xml.etree.ElementTree as ET

import pytest

from crew7.images.views import IMAGE_CSP
from crew7.services.cards import clean, fit
from tests.support.app import make_user
from tests.support.helpers import body, seed_crew
from tests.support.processes import wait_until
from tests.support.servers import RedisServer, running

SVG = "{http://www.w3.org/2000/svg}"
POLL_BOUND = 1.0  # seconds: four polls of the relay (tests/test_changelog.py)


def shown(response):
    """The texts of a card (asserting it is a well-formed SVG)."""
    assert response.status_code == 200, response.get_data()
    root = ET.fromstring(response.get_data())
    assert root.tag == f"{SVG}svg"
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def crew_card(client, cid):
    return shown(client.get(f"/images/crew/{cid}.svg"))


def agent_card(client, aid):
    return shown(client.get(f"/images/agent/{aid}.svg"))


@pytest.fixture
def crew_setup(app, client, alice):
    # The session's rules alone: no relay poll after a commit (it would deliver the same
    # invalidations from the change log; the tests below the relay's fixture show that).
    app.extensions.pop("crew7.changelog", None)
    crew, agents = seed_crew(client, alice, agents=2, runs=[{"status": "succeeded"}])
    cid = crew["id"]
    warm(client, cid, agents)
    return cid, agents


def warm(client, cid, agents):
    assert client.get(f"/images/crew/{cid}.svg").status_code == 200
    for a in agents:
        assert client.get(f"/images/agent/{a['id']}.svg").status_code == 200


def test_a_crew_card_shows_its_document(app, client, alice, redis_client):
    crew, _ = seed_crew(client, alice, agents=2, runs=[{"status": "succeeded"}] * 3)
    cid = crew["id"]
    r = client.get(f"/images/crew/{cid}.svg")
    texts = shown(r)
    assert {f"CREW #{cid}", "Research Crew", "Agents: 2", "Total runs: 3", "100%"} <= set(texts)
    assert any(t.startswith("Last run: 20") for t in texts)
    assert r.headers["Content-Type"] == "image/svg+xml"
    assert r.headers["Content-Security-Policy"] == IMAGE_CSP
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    document = client.get(f"/metadata/crew/{cid}")
    for name in ("Access-Control-Allow-Origin", "Cache-Control"):
        assert r.headers[name] == document.headers[name]
    # cached as the served bytes; the same answer for the hex id, and a 304 for its ETag
    assert redis_client.get(f"image:crew:{cid}") == r.get_data()
    hexed = client.get(f"/images/crew/{cid:064x}.svg")
    assert hexed.get_data() == r.get_data() and hexed.headers["ETag"] == r.headers["ETag"]
    again = client.get(f"/images/crew/{cid}.svg", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""
    assert again.headers["ETag"] == r.headers["ETag"]
    assert again.headers["Content-Security-Policy"] == IMAGE_CSP
    # the document points at it
    assert body(document)["image"].endswith(f"/images/crew/{cid}.svg")
    keys = app.extensions["crew7.cache"].info()["keys"]  # flask cache-stats, /cache/stats
    assert keys["crew_image"] == 1 and keys["agent_image"] == 0


def test_an_agent_card_shows_role_llm_tools_and_crew(client, alice):
    crew, agents = seed_crew(client, alice, agents=2)
    texts = agent_card(client, agents[1]["id"])
    assert {"Agent 1", "Role: Researcher", "LLM: gpt-4o", "Tools: 2"} <= set(texts)
    assert "Crew: Research Crew" in texts
    doc = body(client.get(f"/metadata/agent/{agents[1]['id']}"))
    assert doc["image"].endswith(f"/images/agent/{agents[1]['id']}.svg")


def test_unknown_private_and_malformed_ids_get_the_documents_errors(client, alice):
    hidden, agents = seed_crew(client, alice, agents=1, is_public=False)
    for kind, ident in (("crew", hidden["id"]), ("agent", agents[0]["id"]), ("crew", 999999)):
        image = client.get(f"/images/{kind}/{ident}.svg")
        document = client.get(f"/metadata/{kind}/{ident}")
        assert image.status_code == document.status_code == 404
        assert image.get_data() == document.get_data() and image.mimetype == "application/json"
    for raw in ("0", "0123", "-1", "2147483648", "f" * 64, "1.svg", "abc"):
        image = client.get(f"/images/crew/{raw}.svg")
        assert (image.status_code, image.get_data()) == (
            404,
            client.get(f"/metadata/crew/{raw}").get_data(),
        ), raw
    assert client.get("/images/crew/1.png").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "<script>alert(1)</script>",
        '"/><foreignObject><body onload="alert(1)"/></foreignObject>',
        "]]><svg onload=alert(1)>\x01\x1f",
    ],
)
def test_a_hostile_name_renders_as_text(client, alice, name):
    crew, agents = seed_crew(client, alice, agents=1, name=name)
    cards = {
        f"/images/crew/{crew['id']}.svg": fit(name, 38, 528),  # the title line
        f"/images/agent/{agents[0]['id']}.svg": fit(f"Crew: {name}", 18, 528),
    }
    for path, label in cards.items():
        root = ET.fromstring(client.get(path).get_data())
        for element in root.iter():
            assert element.tag.removeprefix(SVG) not in ("script", "foreignObject"), path
            assert not any(a.lower().startswith("on") for a in element.attrib), path
        # the name is text: control characters dropped, cut with an ellipsis if long
        texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
        assert label in texts, (label, texts)
        assert label.rstrip("\u2026").removeprefix("Crew: ") in clean(name)


# -- invalidation through the app ---------------------------------------------------


def test_a_rename_reaches_the_crew_and_agent_cards(client, alice, crew_setup, redis_client):
    cid, agents = crew_setup
    assert redis_client.exists(f"image:crew:{cid}", f"image:agent:{agents[0]['id']}") == 2
    client.patch(f"/crews/{cid}", json={"name": "Renamed Crew"}, headers=alice["headers"])
    assert "Renamed Crew" in crew_card(client, cid)
    assert "Crew: Renamed Crew" in agent_card(client, agents[0]["id"])


def test_a_run_reaches_the_crew_card(client, alice, crew_setup):
    cid, agents = crew_setup
    assert "Total runs: 1" in crew_card(client, cid)
    client.post(f"/crews/{cid}/runs", json={"status": "failed"}, headers=alice["headers"])
    texts = crew_card(client, cid)
    assert "Total runs: 2" in texts and "50%" in texts


def test_a_privacy_flip_hides_the_cards(client, alice, crew_setup):
    cid, agents = crew_setup
    client.patch(f"/crews/{cid}", json={"is_public": False}, headers=alice["headers"])
    assert client.get(f"/images/crew/{cid}.svg").status_code == 404
    assert client.get(f"/images/agent/{agents[0]['id']}.svg").status_code == 404
    client.patch(f"/crews/{cid}", json={"is_public": True}, headers=alice["headers"])
    assert client.get(f"/images/crew/{cid}.svg").status_code == 200


def test_agent_changes_reach_their_cards(client, alice, crew_setup):
    cid, agents = crew_setup
    a0, a1 = agents
    client.patch(f"/agents/{a0['id']}", json={"llm": "claude"}, headers=alice["headers"])
    assert "LLM: claude" in agent_card(client, a0["id"])
    client.post(f"/crews/{cid}/agents", json={"name": "n", "role": "r"}, headers=alice["headers"])
    assert "Agents: 3" in crew_card(client, cid)
    client.delete(f"/agents/{a1['id']}", headers=alice["headers"])
    assert "Agents: 2" in crew_card(client, cid)
    assert client.get(f"/images/agent/{a1['id']}.svg").status_code == 404


def test_a_new_crew_gets_its_card_despite_the_negative_entry(client, alice):
    crew, _ = seed_crew(client, alice, agents=0)
    next_id = crew["id"] + 1
    assert client.get(f"/images/crew/{next_id}.svg").status_code == 404
    made, _ = seed_crew(client, alice, agents=0, name="Fresh")
    assert made["id"] == next_id and "Fresh" in crew_card(client, next_id)


# -- Redis down or frozen: answered from the database, nothing stale after -------------


@pytest.fixture
def own_redis():
    yield from running(RedisServer)


def test_cards_are_drawn_while_redis_is_down_and_not_stale_after(app_factory, own_redis):
    app = app_factory(REDIS_URL=own_redis.url, BREAKER_THRESHOLD=3, BREAKER_COOLDOWN=0.5)
    app.extensions.pop("crew7.changelog", None)  # no relay poll after each commit
    client = app.test_client()
    user = make_user(app, "dora")
    crew, agents = seed_crew(client, user, agents=1)
    cid, aid = crew["id"], agents[0]["id"]
    warm(client, cid, agents)
    own_redis.freeze()
    try:
        client.patch(f"/crews/{cid}", json={"name": "Frozen Rename"}, headers=user["headers"])
        assert "Frozen Rename" in crew_card(client, cid)  # from the database
        assert "Crew: Frozen Rename" in agent_card(client, aid)
    finally:
        own_redis.resume()
    # Redis kept the old cards through the freeze: the invalidations it missed land
    # before it is read again.
    cache = app.extensions["crew7.cache"]
    wait_until(cache.regain_trust, 5, "Redis trusted again", interval=0.05)
    for _ in range(5):
        assert "Frozen Rename" in crew_card(client, cid)
        assert "Crew: Frozen Rename" in agent_card(client, aid)
    own_redis.stop()
    assert "Frozen Rename" in crew_card(client, cid)


# -- SQL outside the app: the change log's relay ------------------------------------


@pytest.fixture
def relayed_setup(client, alice, relay):
    crew, agents = seed_crew(client, alice, agents=2, runs=[{"status": "succeeded"}])
    relay.poll()  # caught up: no entry of the set-up is applied after the warming
    warm(client, crew["id"], agents)
    return crew["id"], agents


def within_poll(check, what):
    return wait_until(check, POLL_BOUND, what, interval=0.02)


def _has(client, path, needle):
    r = client.get(path)
    return r.status_code == 200 and needle in shown(r)


def test_a_rename_by_sql_reaches_the_cards(client, relayed_setup, outside_sql):
    cid, agents = relayed_setup
    outside_sql("UPDATE crews SET name = 'Renamed by SQL' WHERE id = :id", id=cid)
    within_poll(lambda: _has(client, f"/images/crew/{cid}.svg", "Renamed by SQL"), "crew card")
    assert "Crew: Renamed by SQL" in agent_card(client, agents[0]["id"])


def test_a_run_and_an_agent_change_by_sql_reach_the_cards(client, relayed_setup, outside_sql):
    cid, agents = relayed_setup
    outside_sql(
        "INSERT INTO runs (crew_id, status, tokens_used, created_at)"
        " VALUES (:id, 'failed', 5, CURRENT_TIMESTAMP)",
        id=cid,
    )
    within_poll(lambda: _has(client, f"/images/crew/{cid}.svg", "Total runs: 2"), "run counted")
    outside_sql("UPDATE agents SET llm = 'sql-llm' WHERE id = :id", id=agents[0]["id"])
    path = f"/images/agent/{agents[0]['id']}.svg"
    within_poll(lambda: _has(client, path, "LLM: sql-llm"), "agent card")


def test_a_privacy_flip_by_sql_hides_the_cards(client, relayed_setup, outside_sql):
    cid, agents = relayed_setup
    outside_sql("UPDATE crews SET is_public = false WHERE id = :id", id=cid)

    def gone():
        return (
            client.get(f"/images/crew/{cid}.svg").status_code == 404
            and client.get(f"/images/agent/{agents[1]['id']}.svg").status_code == 404
        )

    within_poll(gone, "cards of a private crew gone")
