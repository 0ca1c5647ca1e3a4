"""Every change that affects a document invalidates it after commit, whoever makes it."""

import pytest

from tests.support.helpers import attrs, body, seed_crew

pytestmark = pytest.mark.topologies


@pytest.fixture
def crew_setup(client, alice):
    crew, agents = seed_crew(client, alice, agents=2)
    cid = crew["id"]
    warm(client, cid, agents)
    return cid, agents


def warm(client, cid, agents):
    client.get(f"/metadata/crew/{cid}")
    client.get(f"/metadata/crew/{cid}/agents")
    for a in agents:
        client.get(f"/metadata/agent/{a['id']}")


def cached(redis_client, cid, agents):
    keys = [f"metadata:crew:{cid}", f"metadata:crew:{cid}:agents"] + [
        f"metadata:agent:{a['id']}" for a in agents
    ]
    return {k.removeprefix("metadata:"): redis_client.exists(k) == 1 for k in keys}


def test_patch_crew_invalidates_crew_agents_list_and_agents(
    client, alice, crew_setup, redis_client
):
    cid, agents = crew_setup
    assert all(cached(redis_client, cid, agents).values())
    r = client.patch(f"/crews/{cid}", json={"name": "Renamed"}, headers=alice["headers"])
    assert r.status_code == 200
    assert not any(cached(redis_client, cid, agents).values())
    assert body(client.get(f"/metadata/crew/{cid}"))["name"] == "Renamed"
    assert attrs(body(client.get(f"/metadata/agent/{agents[0]['id']}")))["Crew"]["value"] == (
        "Renamed"
    )


def test_noop_patch_invalidates_nothing(client, alice, crew_setup, redis_client):
    cid, agents = crew_setup
    r = client.patch(f"/crews/{cid}", json={"name": "Research Crew"}, headers=alice["headers"])
    assert r.status_code == 200 and body(r)["name"] == "Research Crew"
    r = client.patch(f"/crews/{cid}", json={}, headers=alice["headers"])
    assert r.status_code == 200 and body(r)["name"] == "Research Crew"
    assert all(cached(redis_client, cid, agents).values())


def test_turning_private_stops_serving_at_once(client, alice, crew_setup):
    cid, agents = crew_setup
    client.patch(f"/crews/{cid}", json={"is_public": False}, headers=alice["headers"])
    assert client.get(f"/metadata/crew/{cid}").status_code == 404
    assert client.get(f"/metadata/crew/{cid}/agents").status_code == 404
    assert client.get(f"/metadata/agent/{agents[0]['id']}").status_code == 404
    assert body(client.get(f"/metadata/crews?ids={cid}")) == [None]
    client.patch(f"/crews/{cid}", json={"is_public": True}, headers=alice["headers"])
    assert client.get(f"/metadata/crew/{cid}").status_code == 200


def test_agent_changes(client, alice, crew_setup, redis_client):
    cid, agents = crew_setup
    a0, a1 = agents
    client.patch(f"/agents/{a0['id']}", json={"llm": "claude"}, headers=alice["headers"])
    state = cached(redis_client, cid, agents)
    assert state == {
        f"crew:{cid}": True,  # the crew's document has no per-agent fields
        f"crew:{cid}:agents": False,
        f"agent:{a0['id']}": False,
        f"agent:{a1['id']}": True,
    }
    assert attrs(body(client.get(f"/metadata/agent/{a0['id']}")))["LLM"]["value"] == "claude"
    # Adding and deleting agents change the crew's agent count.
    r = client.post(
        f"/crews/{cid}/agents", json={"name": "n", "role": "r"}, headers=alice["headers"]
    )
    new = r.get_json()
    assert attrs(body(client.get(f"/metadata/crew/{cid}")))["Agents"]["value"] == 3
    assert len(body(client.get(f"/metadata/crew/{cid}/agents"))) == 3
    client.delete(f"/agents/{a1['id']}", headers=alice["headers"])
    assert attrs(body(client.get(f"/metadata/crew/{cid}")))["Agents"]["value"] == 2
    assert client.get(f"/metadata/agent/{a1['id']}").status_code == 404
    assert client.get(f"/metadata/agent/{new['id']}").status_code == 200


def test_runs_change_the_aggregates(client, alice, crew_setup, redis_client):
    cid, agents = crew_setup
    r = client.post(f"/crews/{cid}/runs", json={"status": "running"}, headers=alice["headers"])
    run_id = r.get_json()["id"]
    assert not redis_client.exists(f"metadata:crew:{cid}")
    assert redis_client.exists(f"metadata:agent:{agents[0]['id']}")  # runs don't touch agents
    assert attrs(body(client.get(f"/metadata/crew/{cid}")))["Total Runs"]["value"] == 1
    client.patch(
        f"/runs/{run_id}", json={"status": "succeeded", "duration": 4}, headers=alice["headers"]
    )
    a = attrs(body(client.get(f"/metadata/crew/{cid}")))
    assert a["Success Rate"]["value"] == 100.0 and a["Average Run Duration"]["value"] == 4


def test_delete_crew(client, alice, crew_setup, redis_client):
    cid, agents = crew_setup
    client.delete(f"/crews/{cid}", headers=alice["headers"])
    assert not any(cached(redis_client, cid, agents).values())
    assert client.get(f"/metadata/crew/{cid}").status_code == 404
    assert client.get(f"/metadata/agent/{agents[0]['id']}").status_code == 404


def test_new_crew_is_visible_despite_negative_cache(client, alice):
    # The next id is remembered as unknown, then a crew is created with it.
    crew, _ = seed_crew(client, alice, agents=0)
    next_id = crew["id"] + 1
    assert client.get(f"/metadata/crew/{next_id}").status_code == 404
    made, _ = seed_crew(client, alice, agents=0, name="Fresh")
    assert made["id"] == next_id
    assert body(client.get(f"/metadata/crew/{next_id}"))["name"] == "Fresh"


def test_changes_outside_the_api_invalidate(app, client, alice, crew_setup):
    """A script or CLI command that commits through the session invalidates too."""
    from crew7.extensions import db
    from crew7.models import Crew, Run

    cid, _ = crew_setup
    with app.app_context():
        crew = db.session.get(Crew, cid)
        crew.description = "changed by a script"
        db.session.add(Run(crew_id=cid, status="failed", duration=1.0))
        db.session.commit()
    doc = body(client.get(f"/metadata/crew/{cid}"))
    assert doc["description"] == "changed by a script"
    assert attrs(doc)["Total Runs"]["value"] == 1


def test_rolled_back_changes_invalidate_nothing(app, alice, crew_setup, redis_client):
    from crew7.extensions import db
    from crew7.models import Crew

    cid, agents = crew_setup
    with app.app_context():
        db.session.get(Crew, cid).name = "never committed"
        db.session.flush()
        db.session.rollback()
    assert all(cached(redis_client, cid, agents).values())


def test_cli_cache_clear(app, runner, crew_setup, redis_client):
    cid, agents = crew_setup
    result = runner.invoke(args=["cache-clear", "--crew", str(cid)])
    assert result.exit_code == 0, result.output
    assert not any(cached(redis_client, cid, agents).values())
    result = runner.invoke(args=["cache-clear"])
    assert result.exit_code != 0


def test_invalidate_all_uses_scan_not_flush(app, client, alice, crew_setup, redis_client):
    cid, agents = crew_setup
    redis_client.set("unrelated:key", "kept")
    result = app.test_cli_runner().invoke(args=["cache-clear", "--all"])
    assert result.exit_code == 0 and "invalidated" in result.output
    assert not any(cached(redis_client, cid, agents).values())
    assert redis_client.get("unrelated:key") == b"kept"
