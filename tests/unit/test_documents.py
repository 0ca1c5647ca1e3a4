"""The metadata documents, built from plain objects: no database, no cache."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from crew7.services.metadata import build_agent_document, build_crew_document

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
LAST_RUN = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def _crew(**fields):
    values = {
        "id": 7,
        "name": "Research Crew",
        "description": "finds things",
        "process": "sequential",
        "created_at": CREATED,
    }
    return SimpleNamespace(**{**values, **fields})


def _attrs(document):
    return {a["trait_type"]: a for a in document["attributes"]}


def test_crew_document(config_app):
    stats = SimpleNamespace(
        total_runs=4, success_rate=75.0, average_duration=2.5, last_run_at=LAST_RUN
    )
    doc = build_crew_document(_crew(), stats, agent_count=3)
    assert doc["name"] == "Research Crew" and doc["description"] == "finds things"
    assert doc["image"] == "https://cdn.example/crews/7.png"
    assert doc["external_url"] == "https://app.example/crews/7"
    attrs = _attrs(doc)
    assert attrs["Agents"] == {"trait_type": "Agents", "value": 3, "display_type": "number"}
    assert attrs["Process"]["value"] == "sequential"
    assert attrs["Total Runs"]["value"] == 4
    assert attrs["Success Rate"]["value"] == 75.0
    assert attrs["Success Rate"]["max_value"] == 100
    assert attrs["Average Run Duration"]["value"] == 2.5
    assert attrs["Last Run"] == {
        "trait_type": "Last Run",
        "value": int(LAST_RUN.timestamp()),
        "display_type": "date",
    }
    assert attrs["Created"]["value"] == int(CREATED.timestamp())


def test_crew_without_runs_or_description(config_app):
    doc = build_crew_document(_crew(description=None), None, agent_count=0)
    assert doc["description"] == "Research Crew: a crew of AI agents on crew7."
    attrs = _attrs(doc)
    assert "Last Run" not in attrs
    assert [attrs[t]["value"] for t in ("Total Runs", "Success Rate", "Average Run Duration")] == [
        0,
        0,
        0,
    ]


def test_urls_can_be_given_per_call(config_app):
    doc = build_crew_document(
        _crew(), None, 0, base_url="https://other.example/", cdn_url="https://img.example/"
    )
    assert doc["image"] == "https://img.example/crews/7.png"
    assert doc["external_url"] == "https://other.example/crews/7"


def test_without_a_cdn_images_are_served_here(config_app):
    config_app.config["CDN_URL"] = ""
    assert build_crew_document(_crew(), None, 0)["image"] == "https://app.example/images/crew/7.svg"
    doc = build_agent_document(_agent(), _crew())
    assert doc["image"] == "https://app.example/images/agent/11.svg"
    other = build_crew_document(_crew(), None, 0, base_url="https://other.example/")
    assert other["image"] == "https://other.example/images/crew/7.svg"


def _agent(**fields):
    values = {
        "id": 11,
        "name": "Scout",
        "role": "Researcher",
        "goal": None,
        "backstory": None,
        "llm": "gpt-4o",
        "tools": ["web_search", "scrape"],
    }
    return SimpleNamespace(**{**values, **fields})


def test_agent_document(config_app):
    doc = build_agent_document(_agent(goal="find papers"), _crew())
    assert doc["name"] == "Scout" and doc["description"] == "find papers"
    assert doc["image"] == "https://cdn.example/agents/11.png"
    assert doc["external_url"] == "https://app.example/agents/11"
    attrs = _attrs(doc)
    assert attrs["Role"]["value"] == "Researcher" and attrs["LLM"]["value"] == "gpt-4o"
    assert attrs["Tools"] == {"trait_type": "Tools", "value": 2, "display_type": "number"}
    assert attrs["Crew"]["value"] == "Research Crew"
    assert attrs["Crew ID"] == {"trait_type": "Crew ID", "value": 7, "display_type": "number"}


@pytest.mark.parametrize(
    "goal, backstory, expected",
    [
        ("a goal", "a story", "a goal"),
        (None, "a story", "a story"),
        (None, None, "Researcher in Research Crew"),
    ],
)
def test_agent_description_falls_back(config_app, goal, backstory, expected):
    doc = build_agent_document(_agent(goal=goal, backstory=backstory), _crew())
    assert doc["description"] == expected


def test_agent_without_tools(config_app):
    assert _attrs(build_agent_document(_agent(tools=None), _crew()))["Tools"]["value"] == 0
