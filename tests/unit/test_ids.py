"""Ids in URLs: one spelling per id, for path ids and for metadata token ids."""

import pytest
from werkzeug.exceptions import NotFound
from werkzeug.routing import Map, Rule

from crew7.extensions import MAX_ID, IdConverter
from crew7.services.metadata import is_token_id, parse_token_id

HEX_ONE = "0" * 63 + "1"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1", 1),
        ("42", 42),
        (str(MAX_ID), MAX_ID),
        (HEX_ONE, 1),
        (f"{MAX_ID:064x}", MAX_ID),
        # Well-formed, but no crew or agent can have it.
        (str(MAX_ID + 1), None),
        ("9" * 19, None),
        ("0" * 64, None),
        (f"{MAX_ID + 1:064x}", None),
        # Malformed: another spelling of an id, or not an id.
        ("0", None),
        ("01", None),
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1 ", None),
        ("1.0", None),
        ("\u0661", None),  # ARABIC-INDIC DIGIT ONE: int() accepts it
        ("9" * 20, None),
        (HEX_ONE.upper()[:-1] + "A", None),
        ("0x1", None),
        ("0" * 63, None),
        ("", None),
    ],
)
def test_parse_token_id(raw, expected):
    assert parse_token_id(raw) == expected


def test_is_token_id_is_about_spelling_only():
    assert is_token_id(str(MAX_ID + 1)) and is_token_id("0" * 64)
    assert not is_token_id("01") and not is_token_id("1a")


@pytest.fixture
def urls():
    return Map([Rule("/crews/<id:crew_id>", endpoint="crew")], converters={"id": IdConverter})


@pytest.mark.parametrize(
    "path, expected",
    [("/crews/7", 7), (f"/crews/{MAX_ID}", MAX_ID), (f"/crews/{MAX_ID + 1}", 0)],
)
def test_path_ids_route_and_out_of_range_becomes_zero(urls, path, expected):
    assert urls.bind("localhost").match(path) == ("crew", {"crew_id": expected})


@pytest.mark.parametrize(
    "path", ["/crews/0", "/crews/07", "/crews/-7", "/crews/+7", "/crews/\u0667"]
)
def test_other_spellings_route_nowhere(urls, path):
    with pytest.raises(NotFound):
        urls.bind("localhost").match(path)


def test_path_ids_build_canonically(urls):
    assert urls.bind("localhost").build("crew", {"crew_id": 7}) == "/crews/7"
