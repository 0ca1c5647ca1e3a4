"""The invalidation rules, as data: which change affects which documents (no servers)."""

import pytest

from crew7.invalidation import VIEWS, affected
from crew7.models import Agent, Crew, Run, User
from crew7.services.cache import AGENT, AGENT_IMAGE, CREW, CREW_AGENTS, CREW_IMAGE, STATS

# A token image goes wherever its document goes.
CREW_DOCS = {(CREW, 1), (CREW_AGENTS, 1), (CREW_IMAGE, 1)}
AGENTS = {(AGENT, 5), (AGENT, 6), (AGENT_IMAGE, 5), (AGENT_IMAGE, 6)}
AGENT_3 = {(AGENT, 3), (AGENT_IMAGE, 3)}
CREW_1 = {(CREW, 1), (CREW_IMAGE, 1)}


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
        ("insert", set(), AGENT_3 | CREW_1 | {(CREW_AGENTS, 1)}),
        ("delete", set(), AGENT_3 | CREW_1 | {(CREW_AGENTS, 1)}),
        ("update", {"tools"}, AGENT_3 | {(CREW_AGENTS, 1)}),
        ("update", {"updated_at"}, set()),
    ],
)
def test_agent_changes(change, fields, expected):
    assert affected(Agent(id=3, crew_id=1), change, frozenset(fields)) == expected


@pytest.mark.parametrize(
    ("change", "fields", "expected"),
    [
        ("insert", set(), CREW_1),
        ("delete", set(), CREW_1),
        ("update", {"status", "finished_at"}, CREW_1),
        ("update", {"finished_at"}, set()),  # no document shows it
    ],
)
def test_run_changes(change, fields, expected):
    assert affected(Run(id=9, crew_id=1), change, frozenset(fields)) == expected


def test_users_affect_no_document():
    for change in ("insert", "update", "delete"):
        assert affected(User(id=1), change, frozenset({"name"})) == set()
