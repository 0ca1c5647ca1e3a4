"""Change-log entries expanded into keys, as the relay does (no servers)."""

import pytest

from crew7 import changelog_triggers
from crew7.services.cache.documents import DOCUMENT_TYPES, LEADERBOARD_TYPES
from crew7.services.changelog_entries import KINDS, crews_needing_agents, expand

KEY_OF = {name: t.key_function("") for name, t in DOCUMENT_TYPES.items()}
STATS_KEYS = ["stats:popular_crews"] + [f"stats:leaderboard:{t}" for t in LEADERBOARD_TYPES]


def keys(entries, agents=None):
    return expand(entries, agents or {}, KEY_OF, STATS_KEYS)


def test_a_crew_entry_covers_its_document_list_and_each_agent():
    got, views = keys([("crew", 7)], {7: [70, 71], 8: [80]})
    assert got == {
        "metadata:crew:7",
        "metadata:crew:7:agents",
        "metadata:agent:70",
        "metadata:agent:71",
        "image:crew:7",
        "image:agent:70",
        "image:agent:71",
    }
    assert views == []


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (("crew_document", 7), {"metadata:crew:7", "image:crew:7"}),
        (("crew_agents", 7), {"metadata:crew:7:agents"}),
        (("agent", 70), {"metadata:agent:70", "image:agent:70"}),
        (("stats", None), set(STATS_KEYS)),
        (("views", 7), set()),
    ],
)
def test_each_kind(entry, expected):
    assert keys([entry])[0] == expected


def test_a_deleted_crew_leaves_the_popularity_set_and_the_rankings():
    got, views = keys([("crew", 7), ("stats", None), ("views", 7), ("agent", 70)])
    assert views == ["7"]
    assert set(STATS_KEYS) <= got and "metadata:agent:70" in got


def test_a_batch_is_deduplicated_and_unknown_kinds_are_skipped():
    entries = [("crew_document", 1)] * 50 + [("crew_agents", 1), ("future_kind", 3)]
    assert keys(entries)[0] == {"metadata:crew:1", "image:crew:1", "metadata:crew:1:agents"}


def test_only_crew_entries_need_the_agents_looked_up():
    entries = [("crew", 1), ("crew_document", 2), ("agent", 3), ("stats", None), ("crew", 4)]
    assert crews_needing_agents(entries) == {1, 4}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_triggers_write_only_kinds_the_relay_knows(dialect):
    import re

    sql = "\n".join(changelog_triggers.create_statements(dialect))
    written = set(re.findall(r"(?:SELECT |VALUES \()'([a-z_]+)'", sql))
    assert written == KINDS
