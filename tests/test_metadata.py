"""NFT metadata through the Redis read-through cache."""

import json
import time

import pytest

from tests.support.app import make_user
from tests.support.helpers import attrs, body, commands_between, commandstats, seed_crew

pytestmark = pytest.mark.topologies

RUNS = [
    {"status": "succeeded", "duration": 10, "started_at": "2026-03-01T10:00:00"},
    {"status": "succeeded", "duration": 20, "started_at": "2026-03-02T10:00:00"},
    {"status": "failed", "duration": 30, "started_at": "2026-03-03T10:00:00"},
    {"status": "running", "started_at": "2026-03-04T10:00:00"},
]


def test_crew_document_follows_the_standard(client, alice):
    crew, _ = seed_crew(client, alice, agents=2, runs=RUNS, process="hierarchical")
    r = client.get(f"/metadata/crew/{crew['id']}")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "public" in r.headers["Cache-Control"] and "max-age=300" in r.headers["Cache-Control"]
    doc = body(r)
    assert doc["name"] == "Research Crew" and doc["description"] == "finds things"
    assert doc["image"] == f"https://app.crew7.ai/images/crew/{crew['id']}.svg"  # no CDN_URL
    assert doc["external_url"] == f"https://app.crew7.ai/crews/{crew['id']}"
    a = attrs(doc)
    assert a["Agents"] == {"trait_type": "Agents", "value": 2, "display_type": "number"}
    assert a["Process"]["value"] == "hierarchical" and "display_type" not in a["Process"]
    assert a["Total Runs"]["value"] == 4
    assert a["Success Rate"]["value"] == pytest.approx(66.7)
    assert a["Success Rate"]["display_type"] == "boost_percentage"
    assert a["Average Run Duration"]["value"] == 20
    assert a["Last Run"] == {
        "trait_type": "Last Run",
        "value": 1772618400,
        "display_type": "date",
    }  # 2026-03-04T10:00:00Z in unix seconds
    assert a["Created"]["display_type"] == "date"
    assert abs(a["Created"]["value"] - time.time()) < 300
    for attr in doc["attributes"]:
        if "display_type" in attr:
            assert isinstance(attr["value"], int | float)
            assert attr["display_type"] in ("number", "boost_number", "boost_percentage", "date")


def test_agent_documents(client, alice):
    crew, agents = seed_crew(client, alice, agents=2)
    doc = body(client.get(f"/metadata/agent/{agents[1]['id']}"))
    a = attrs(doc)
    assert doc["name"] == "Agent 1"
    assert a["Role"]["value"] == "Researcher" and a["LLM"]["value"] == "gpt-4o"
    assert a["Tools"] == {"trait_type": "Tools", "value": 2, "display_type": "number"}
    assert a["Crew"]["value"] == "Research Crew"
    listed = body(client.get(f"/metadata/crew/{crew['id']}/agents"))
    assert [d["name"] for d in listed] == ["Agent 0", "Agent 1"]


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5", "99999999999999999999", "ff", "0x1"])
def test_malformed_or_unknown_ids_are_json_404(client, raw):
    r = client.get(f"/metadata/crew/{raw}")
    assert r.status_code == 404 and body(r)["error"]["code"] == "not_found"


def test_hex_token_ids(client, alice):
    crew, agents = seed_crew(client, alice, agents=1)
    hex_id = format(crew["id"], "064x")
    assert body(client.get(f"/metadata/crew/{hex_id}"))["name"] == "Research Crew"
    assert body(client.get(f"/metadata/crew/{hex_id.upper()}"))["name"] == "Research Crew"
    assert client.get(f"/metadata/agent/{format(agents[0]['id'], '064x')}").status_code == 200


def test_private_crews_are_not_served(client, alice):
    crew, agents = seed_crew(client, alice, agents=1, is_public=False)
    assert client.get(f"/metadata/crew/{crew['id']}").status_code == 404
    assert client.get(f"/metadata/agent/{agents[0]['id']}").status_code == 404
    assert client.get(f"/metadata/crew/{crew['id']}/agents").status_code == 404
    # Not even to its owner: metadata documents are public by definition.
    assert client.get(f"/metadata/crew/{crew['id']}", headers=alice["headers"]).status_code == 404


def test_miss_then_hit_one_round_trip(client, alice, cache, redis_client):
    crew, _ = seed_crew(client, alice)
    url = f"/metadata/crew/{crew['id']}"
    first = client.get(url)
    assert cache.counters.computations == 1 and cache.counters.misses == 1
    before = commandstats(redis_client)
    second = client.get(url)
    sent = commands_between(redis_client, before, commandstats(redis_client))
    assert second.get_data() == first.get_data()
    assert cache.counters.computations == 1 and cache.counters.hits == 1
    # One EVALSHA: GET + PTTL + the popularity count (ZSCORE, ZINCRBY) in one call.
    assert sent.get("evalsha") == 1
    assert set(sent) <= {"evalsha", "get", "pttl", "zscore", "zcard", "zincrby"}, sent


def test_keys_values_and_ttls(client, alice, redis_client, app):
    crew, agents = seed_crew(client, alice, agents=1)
    cid, aid = crew["id"], agents[0]["id"]
    client.get(f"/metadata/crew/{cid}")
    client.get(f"/metadata/agent/{aid}")
    client.get(f"/metadata/crew/{cid}/agents")
    client.get("/stats/popular-crews")
    client.get("/stats/leaderboard/runs")
    stored = redis_client.get(f"metadata:crew:{cid}")
    assert json.loads(stored)["name"] == "Research Crew"  # JSON text, not pickle
    assert not stored.startswith(b"!") and b"\x80" not in stored[:2]
    assert json.loads(redis_client.get(f"metadata:agent:{aid}"))["name"] == "Agent 0"
    assert isinstance(json.loads(redis_client.get(f"metadata:crew:{cid}:agents")), list)
    assert 295 <= redis_client.ttl(f"metadata:crew:{cid}") <= 300
    assert 295 <= redis_client.ttl(f"metadata:agent:{aid}") <= 300
    assert 595 <= redis_client.ttl("stats:popular_crews") <= 600
    assert 175 <= redis_client.ttl("stats:leaderboard:runs") <= 180


def test_ttls_and_namespace_are_settings(app_factory, redis_client):
    app = app_factory(METADATA_TTL=42, CACHE_NAMESPACE="c7:")
    client = app.test_client()
    user = make_user(app, "carol")
    crew, _ = seed_crew(client, user, agents=0)
    client.get(f"/metadata/crew/{crew['id']}")
    assert redis_client.get(f"metadata:crew:{crew['id']}") is None
    assert 40 <= redis_client.ttl(f"c7:metadata:crew:{crew['id']}") <= 42
    assert "max-age=42" in client.get(f"/metadata/crew/{crew['id']}").headers["Cache-Control"]


def test_served_bytes_are_the_stored_bytes(client, alice, redis_client):
    crew, _ = seed_crew(client, alice)
    key = f"metadata:crew:{crew['id']}"
    client.get(f"/metadata/crew/{crew['id']}")
    # Whatever is stored is served as it is: no decode and re-encode on a hit.
    redis_client.set(key, b'{"name":"from redis" }', keepttl=True)
    assert client.get(f"/metadata/crew/{crew['id']}").get_data() == b'{"name":"from redis" }'


def test_batch(client, alice, bob, cache, redis_client, redis_topology):
    a, _ = seed_crew(client, alice, agents=1)
    b, _ = seed_crew(client, alice, agents=0, name="Second")
    hidden, _ = seed_crew(client, bob, agents=0, is_public=False)
    ids = [b["id"], 999999, a["id"], hidden["id"]]
    r = client.get("/metadata/crews?ids=" + ",".join(map(str, ids)))
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    docs = body(r)
    assert [d and d["name"] for d in docs] == ["Second", None, "Research Crew", None]
    before = commandstats(redis_client)
    again = client.get("/metadata/crews?ids=" + ",".join(map(str, ids)))
    sent = commands_between(redis_client, before, commandstats(redis_client))
    assert again.get_data() == r.get_data()
    if redis_topology == "cluster":
        assert set(sent) <= {"mget", "zincrby"}, sent
        assert sent.get("mget", 0) <= len(ids)  # one MGET per slot the ids fall in
    else:
        # The whole batch, view counts included, in one command (MGET inside the script).
        assert sent.get("evalsha") == 1 and set(sent) <= {
            "evalsha",
            "mget",
            "zscore",
            "zcard",
            "zincrby",
        }, sent


@pytest.mark.parametrize(
    "query", ["", "ids=", "ids=1,,2", "ids=a,b", "ids=1.5", "ids=" + ",".join(["1"] * 101)]
)
def test_batch_bad_requests(client, query):
    r = client.get(f"/metadata/crews?{query}")
    assert r.status_code == 400 and body(r)["error"]["code"] == "bad_request"


def test_builder_api(app, client, alice, cache):
    from crew7.extensions import db
    from crew7.models import Crew
    from crew7.services.metadata import crew_to_nft_metadata

    crew_id = seed_crew(client, alice, agents=1)[0]["id"]
    with app.app_context():
        crew = db.session.get(Crew, crew_id)
        fresh = crew_to_nft_metadata(crew, use_cache=False)
        assert cache.counters.computations == 0 and cache.get(cache.crew_key(crew_id)) is None
        cached = crew_to_nft_metadata(crew)
        assert cached == fresh and cache.counters.computations == 1
        assert crew_to_nft_metadata(crew) == fresh and cache.counters.hits == 1
        other = crew_to_nft_metadata(crew, base_url="https://x.test", cdn_url="https://c.test")
        assert other["image"].startswith("https://c.test/") and cache.counters.hits == 1
        assert other["external_url"] == f"https://x.test/crews/{crew_id}"


def test_scripts_are_reloaded_after_redis_forgets_them(client, alice, cache, redis_client):
    crew, _ = seed_crew(client, alice, agents=0)
    url = f"/metadata/crew/{crew['id']}"
    first = client.get(url).get_data()
    redis_client.script_flush()  # as after a restart
    assert client.get(url).get_data() == first
    assert cache.counters.hits == 1 and cache.counters.redis_errors == 0
