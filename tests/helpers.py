"""Small helpers shared by the tests."""

import json


def commandstats(redis_client):
    """Calls per Redis command so far (INFO commandstats)."""
    info = redis_client.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in info.items()}


def commands_between(redis_client, before, after):
    """Commands sent between two snapshots, without the INFO calls themselves."""
    out = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    out.pop("info", None)
    return out


def attrs(document):
    return {a["trait_type"]: a for a in document["attributes"]}


def seed_crew(client, user, agents=2, runs=(), **fields):
    """Create a crew with agents and runs through the API; returns (crew, [agents])."""
    data = {"name": "Research Crew", "description": "finds things", **fields}
    crew = client.post("/crews", json=data, headers=user["headers"]).get_json()
    made = []
    for n in range(agents):
        r = client.post(
            f"/crews/{crew['id']}/agents",
            json={
                "name": f"Agent {n}",
                "role": "Researcher",
                "llm": "gpt-4o",
                "tools": ["web_search"] * (n + 1),
            },
            headers=user["headers"],
        )
        made.append(r.get_json())
    for run in runs:
        client.post(f"/crews/{crew['id']}/runs", json=run, headers=user["headers"])
    return crew, made


def body(response):
    return json.loads(response.get_data())
