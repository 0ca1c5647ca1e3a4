"""The change feed's pure parts: an entry's events, contiguous ranges, cursors."""

import pytest

from crew7.services.feed import BadCursor, Position, entry_events, parse_cursor, ranges


def test_ranges_group_contiguous_ids():
    assert ranges([]) == []
    assert ranges([7]) == [(7, 7)]
    assert ranges([5, 3, 4, 9, 10, 12, 4]) == [(3, 5), (9, 10), (12, 12)]


def test_a_crew_entry_is_the_crew_then_its_agents_by_range():
    assert entry_events("crew", 2, "3,4,5,9") == [
        {"event": "MetadataUpdate", "token_type": "crew", "token_id": 2},
        {
            "event": "BatchMetadataUpdate",
            "token_type": "agent",
            "from_token_id": 3,
            "to_token_id": 5,
        },
        {"event": "MetadataUpdate", "token_type": "agent", "token_id": 9},
    ]
    assert entry_events("crew", 2, None) == [
        {"event": "MetadataUpdate", "token_type": "crew", "token_id": 2}
    ]


def test_other_entries():
    assert entry_events("agent", 8, None) == [
        {"event": "MetadataUpdate", "token_type": "agent", "token_id": 8}
    ]
    assert entry_events("crew_document", 2, None)[0]["token_type"] == "crew"
    assert entry_events("crew_agents", 2, None) == entry_events("stats", None, None) == []


def test_cursors_round_trip_and_reject_what_the_feed_never_hands_out():
    position = Position(12, 345, 2, 1_700_000_000)
    assert parse_cursor(position.cursor()) == position
    for raw in ("", "1.2.3", "a.b.c.d", "01.2.3.4", "1.2.3.4.5", " 1.2.3.4", "1.2.3.4\n", None):
        with pytest.raises(BadCursor):
            parse_cursor(raw)
    with pytest.raises(BadCursor):  # beyond PostgreSQL's bigint
        parse_cursor(f"{2**63}.2.3.4")
    assert parse_cursor(f"{10**18 - 1}.2.3.4").xid == 10**18 - 1
