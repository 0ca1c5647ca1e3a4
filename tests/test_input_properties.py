"""Properties of hostile input, on both databases, through the Flask test client.

Whatever the path id or the JSON body: no 5xx; every 4xx is the one JSON error shape;
a refused request changes no row; only an id's canonical spelling is ever served.
Bounded and reproducible: a fixed number of examples, derandomized, no example database.
"""

import json
import re
import urllib.parse
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_input import snapshot

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def check_answer(response):
    """No 5xx, and a 4xx in the one error shape."""
    status = response.status_code
    assert status < 500, (status, response.get_data()[:300])
    if status >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and set(body) == {"error"}, response.get_data()[:300]
        error = body["error"]
        assert error["status"] == status and error["code"] and error["message"], error
        assert set(error) <= {"status", "code", "message", "fields"}, error


@pytest.fixture
def world(client, alice, bob):
    """Alice's public crew (agent, run), her private crew, and Bob's public crew."""
    from tests.test_write_order import make_objects

    return {
        "public": make_objects(client, alice, True),
        "private": make_objects(client, alice, False),
        "other": make_objects(client, bob, True),
    }


# --- path ids ---------------------------------------------------------------------------------

digits_of_every_script = st.text(
    st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=12
)
hostile_ids = st.one_of(
    digits_of_every_script,
    st.integers(-(2**70), 2**70).map(str),
    st.from_regex(r"[+\- 0]{0,3}[0-9]{1,25}[ \t\n]{0,2}", fullmatch=True),
    # A "/" would be decoded into the path and route elsewhere: not an id any more.
    st.text(st.characters(codec=None, exclude_characters="/"), max_size=40),
    st.text("0123456789abcdefABCDEF", min_size=62, max_size=66),
    st.text("0123456789abcdefABCDEF", min_size=1, max_size=130),
    st.sampled_from(
        ["", ".", "..", "0", "0x1", "1e3", "1.0", "1_000", "-0", "\N{CIRCLED DIGIT ONE}"]
    ),
)
# Already percent-encoded, to reach the app as raw bytes of any kind.
encoded_ids = st.one_of(
    st.sampled_from(
        ["%00", "%2F", "%2e%2e", "1%00", "1%0A", "%C2%B2", "%EF%BC%91", "%FF", "%C0%AF"]
    ),
    st.binary(min_size=1, max_size=12)
    .filter(lambda b: b"/" not in b)
    .map(lambda b: urllib.parse.quote_from_bytes(b, safe="")),
)

PATH_ROUTES = [
    ("GET", "/crews/{}", None),
    ("GET", "/crews/{}/runs", None),
    ("GET", "/agents/{}", None),
    ("PATCH", "/crews/{}", {"name": "renamed"}),
    ("DELETE", "/crews/{}", None),
    ("POST", "/crews/{}/agents", {"name": "a", "role": "r"}),
    ("PATCH", "/agents/{}", {"name": "renamed"}),
    ("DELETE", "/agents/{}", None),
    ("POST", "/crews/{}/runs", {}),
    ("PATCH", "/runs/{}", {"status": "failed"}),
    ("GET", "/metadata/crew/{}", None),
    ("GET", "/metadata/agent/{}", None),
    ("GET", "/metadata/crew/{}/agents", None),
    ("GET", "/metadata/crews?ids={}", None),
    ("GET", "/metadata/crews?ids=1,{}", None),
]
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CANONICAL_API_ID = re.compile(r"[1-9][0-9]*")
CANONICAL_TOKEN_ID = re.compile(r"[1-9][0-9]{0,18}|[0-9a-f]{64}")


def test_hostile_path_ids(client, app, alice, world):
    @SETTINGS
    @given(
        route=st.sampled_from(PATH_ROUTES),
        raw=st.one_of(
            hostile_ids.map(lambda s: (s, urllib.parse.quote(s, safe="", errors="surrogatepass"))),
            encoded_ids.map(lambda e: (urllib.parse.unquote(e, errors="replace"), e)),
        ),
        caller=st.sampled_from(["anonymous", "alice"]),
    )
    def hostile_path_id(route, raw, caller):
        method, template, body = route
        decoded, encoded = raw
        headers = alice["headers"] if caller == "alice" else {}
        before = snapshot(app)
        response = client.open(template.format(encoded), method=method, json=body, headers=headers)
        check_answer(response)
        if response.status_code < 400:
            # Served: only under an id's one spelling.
            pattern = CANONICAL_TOKEN_ID if "/metadata/" in template else CANONICAL_API_ID
            parts = decoded.split(",") if "ids=" in template else [decoded]
            assert all(pattern.fullmatch(part) for part in parts), (template, decoded)
        else:
            assert snapshot(app) == before

    hostile_path_id()


# --- bodies -----------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def rfc3339(draw):
    moment = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    zone = draw(st.sampled_from(["", "Z", "offset"]))
    if zone == "offset":
        return moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()
    return moment.isoformat() + zone


def field_values(field):
    texts = st.one_of(
        any_text,
        st.text(max_size=200),
        st.sampled_from(
            ["", "x", "\x00", "a\x00b", "\ud800", "\udfff\ud800", "x" * 121, "x" * 4001]
        ),
    )
    if field in ("started_at", "finished_at"):
        special = st.sampled_from(
            ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00", ""]
        )
        return st.one_of(rfc3339(), special, json_values)
    if field in ("duration", "tokens_used"):
        return st.one_of(
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=True, allow_infinity=True),
            json_values,
        )
    if field == "is_public":
        return st.one_of(st.booleans(), json_values)
    if field == "tools":
        return st.one_of(st.lists(texts, max_size=60), json_values)
    if field == "status":
        return st.one_of(st.sampled_from(["queued", "running", "succeeded", "failed"]), texts)
    if field == "process":
        return st.one_of(st.sampled_from(["sequential", "hierarchical"]), texts)
    return st.one_of(texts, json_values)


CREW_FIELDS = ["name", "description", "is_public", "process"]
AGENT_FIELDS = ["name", "role", "goal", "backstory", "llm", "tools"]
RUN_FIELDS = ["status", "started_at", "finished_at", "duration", "tokens_used"]
BODY_ROUTES = [
    ("POST", "/crews", CREW_FIELDS),
    ("PATCH", "/crews/{crew}", CREW_FIELDS),
    ("POST", "/crews/{crew}/agents", AGENT_FIELDS),
    ("POST", "/crews/{crew}/runs", RUN_FIELDS),
    ("PATCH", "/runs/{run}", RUN_FIELDS),
]


@st.composite
def bodies(draw, fields):
    kind = draw(st.sampled_from(["object", "object", "object", "value", "deep", "long", "raw"]))
    if kind == "long":
        # More digits than Python's int() converts (4,300), or than a float holds.
        digits = "9" * draw(st.integers(300, 6000))
        number = draw(st.sampled_from([digits, "-" + digits, "1e" + digits[:7], "0." + digits]))
        return json.dumps({draw(st.sampled_from(fields)): 0}).replace("0}", number + "}")
    if kind == "object":
        chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=len(fields)))
        data = {name: draw(field_values(name)) for name in chosen}
        if draw(st.booleans()):
            data.update(draw(st.dictionaries(any_text, json_values, max_size=2)))
        return json.dumps(data)
    if kind == "value":
        return json.dumps(draw(json_values))
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = "1" if opener.startswith("{") else ""
        nested = opener * depth + inner + closer * depth
        return nested if draw(st.booleans()) else json.dumps({fields[0]: None})[:-5] + nested + "}"
    return draw(st.text(max_size=60))


@pytest.mark.parametrize(
    ("method", "template", "fields"), BODY_ROUTES, ids=[f"{m} {p}" for m, p, _ in BODY_ROUTES]
)
def test_hostile_bodies(client, app, alice, world, method, template, fields):
    path = template.format(**world["public"])

    @SETTINGS
    @given(payload=bodies(fields))
    def hostile_body(payload):
        before = snapshot(app)
        response = client.open(
            path,
            method=method,
            data=payload.encode("utf-8", "surrogatepass"),
            content_type="application/json",
            headers=alice["headers"],
        )
        check_answer(response)
        if response.status_code >= 400:
            assert snapshot(app) == before
        else:
            assert response.status_code in (200, 201), response.status_code
            # What was accepted is text both databases store, and reads back as answered.
            echoed = response.get_json()
            assert not any(UNSTORABLE.search(text) for text in strings_in(echoed)), echoed
            kind = "runs" if "runs" in template else "agents" if "agents" in template else "crews"
            back = client.get(f"/{kind}/{echoed['id']}", headers=alice["headers"])
            if kind != "runs":
                assert back.status_code == 200
                assert {k: v for k, v in back.get_json().items() if k != "stats"} == {
                    k: v for k, v in echoed.items() if k != "stats"
                }

    hostile_body()
