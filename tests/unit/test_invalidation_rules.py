"""The invalidation rules, as data: which change affects which documents (no servers)."""

import pytest

from crew7.invalidation import VIEWS, affected
from crew7.models import Agent, Crew, Run, User
from crew7.services.cache import AGENT, CREW, CREW_AGENTS, STATS

CREW_DOCS = {(CREW, 1), (CREW_AGENTS, 1)}
AGENTS = {(AGENT, 5), (AGENT, 6)}


@pytest.mark.parametrize(
    ("change", "fields", "expected"),
    [
        ("insert", set(), CREW_DOCS),
        ("update", {"description"}, CREW_DOCS | AGENTS),
        ("update", {"process"}, CREW_DOCS | AGENTS),
        ("update", {"name"}, CREW_DOCS | AGENTS | {(STATS, None)}),
        ("update", {"is_public"}, CREW_DOCS | AGENTS | {(STATS, None)}),
        ("update", {"updated_at", "created_at"}, set()),
        ("delete", set(), CREW_DOCS | AGENTS | {(STATS, None), (VIEWS, 1)}),
    ],
)
def test_crew_changes(change, fields, expected):
    assert affected(Crew(id=1), change, frozenset(fields), [5, 6]) == expected


@pytest.mark.parametrize(
    ("change", "fields", "expected"),
    [
        ("insert", set(), {(AGENT, 3), (CREW_AGENTS, 1), (CREW, 1)}),
        ("delete", set(), {(AGENT, 3), (CREW_AGENTS, 1), (CREW, 1)}),
        ("update", {"tools"}, {(AGENT, 3), (CREW_AGENTS, 1)}),
        ("update", {"updated_at"}, set()),
    ],
)
def test_agent_changes(change, fields, expected):
    assert affected(Agent(id=3, crew_id=1), change, frozenset(fields)) == expected


@pytest.mark.parametrize(
    ("change", "fields", "expected"),
    [
        ("insert", set(), {(CREW, 1)}),
        ("delete", set(), {(CREW, 1)}),
        ("update", {"status", "finished_at"}, {(CREW, 1)}),
        ("update", {"finished_at"}, set()),  # no document shows it
    ],
)
def test_run_changes(change, fields, expected):
    assert affected(Run(id=9, crew_id=1), change, frozenset(fields)) == expected


def test_users_affect_no_document():
    for change in ("insert", "update", "delete"):
        assert affected(User(id=1), change, frozenset({"name"})) == set()
