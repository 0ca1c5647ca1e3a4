"""Small helpers shared by the tests."""

import json


def commandstats(redis_client):
    """Calls per Redis command so far (INFO commandstats), summed over a Cluster's nodes."""
    if hasattr(redis_client, "get_nodes"):  # a Cluster: every node's counts
        info = redis_client.info("commandstats", target_nodes=redis_client.ALL_NODES)
    else:
        info = redis_client.info("commandstats")
    per_node = [info] if any(k.startswith("cmdstat_") for k in info) else list(info.values())
    out = {}
    for node in per_node:
        for name, v in node.items():
            if name.startswith("cmdstat_"):
                key = name.removeprefix("cmdstat_")
                out[key] = out.get(key, 0) + v["calls"]
    return out


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


def redis_env(settings):
    """App settings as the environment variables a gunicorn server reads."""
    return {f"CREW7_{k}" if k != "REDIS_URL" else k: str(v) for k, v in settings.items()}
