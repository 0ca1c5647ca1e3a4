"""Hostile input: every case is a JSON 4xx that changes nothing, alike on both databases."""

import io
import json
import urllib.parse

import pytest
from sqlalchemy import text

from tests.support.helpers import seed_crew


def error_of(response, status):
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == status and body["error"]["message"], body
    return body["error"]


def send_json_text(client, method, path, text, user):
    """text as the body, sent as JSON (Content-Type: application/json) by user."""
    return client.open(
        path, method=method, data=text, content_type="application/json", headers=user["headers"]
    )


def post_chunked(client, path, data, user):
    """data POSTed as JSON by user with Transfer-Encoding: chunked (no Content-Length)."""
    return client.post(
        path,
        input_stream=io.BytesIO(data),
        content_type="application/json",
        headers={**user["headers"], "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def snapshot(app):
    """Every row of the tables the API writes, to show that a refused request changed nothing."""
    from crew7.extensions import db

    with app.app_context():
        return {
            table: db.session.execute(text(f"SELECT * FROM {table} ORDER BY id")).all()
            for table in ("users", "crews", "agents", "runs")
        }


def quote(raw):
    return urllib.parse.quote(raw, safe="")


# --- ids: ASCII, one canonical spelling ---------------------------------------------------


def fullwidth(number):
    return "".join(chr(0xFF10 + int(d)) for d in str(number))


def arabic_indic(number):
    return "".join(chr(0x0660 + int(d)) for d in str(number))


def id_aliases(number):
    """Spellings that Python's int() reads as number but that are not its canonical form."""
    return [
        fullwidth(number),
        arabic_indic(number),
        "0" + str(number),
        "00" + str(number),
        "+" + str(number),
        " " + str(number),
        str(number) + "\n",
        str(number) + " ",
        "".join(chr(0x1D7CE + int(d)) for d in str(number)),
    ]


NON_DECIMAL_DIGITS = [
    "\N{SUPERSCRIPT TWO}",
    "\N{CIRCLED DIGIT ONE}",
    "\N{VULGAR FRACTION ONE HALF}",
]


@pytest.fixture
def world(client, alice):
    crew, agents = seed_crew(client, alice, agents=1)
    run = client.post(
        f"/crews/{crew['id']}/runs", json={"status": "running"}, headers=alice["headers"]
    ).get_json()
    return {"crew": crew["id"], "agent": agents[0]["id"], "run": run["id"]}


def test_metadata_ids_have_one_spelling(client, app, alice, world):
    cid, aid = world["crew"], world["agent"]
    lettered = cid
    while not any(c in "abcdef" for c in format(lettered, "x")):
        lettered = seed_crew(client, alice, agents=0)[0]["id"]
    assert client.get(f"/metadata/crew/{lettered:064x}").status_code == 200
    before = snapshot(app)
    spellings = {
        f"/metadata/crew/{quote(alias)}": 404
        for alias in id_aliases(cid) + NON_DECIMAL_DIGITS + [format(lettered, "064X")]
    }
    spellings.update(
        {f"/metadata/agent/{quote(alias)}": 404 for alias in id_aliases(aid) + NON_DECIMAL_DIGITS}
    )
    spellings.update(
        {f"/metadata/crew/{quote(alias)}/agents": 404 for alias in id_aliases(cid)[:3]}
    )
    got = {path: client.get(path).status_code for path in spellings}
    assert got == spellings
    for path in spellings:
        error_of(client.get(path), 404)
    # The canonical spellings are served.
    assert client.get(f"/metadata/crew/{cid}").status_code == 200
    assert client.get(f"/metadata/crew/{cid:064x}").status_code == 200
    assert snapshot(app) == before


def test_metadata_batch_refuses_non_canonical_ids(client, world):
    cid = world["crew"]
    for alias in id_aliases(cid) + NON_DECIMAL_DIGITS + [format(0xAB, "064X"), "0"]:
        r = client.get(f"/metadata/crews?ids={cid},{quote(alias)}")
        assert error_of(r, 400)["code"] == "bad_request", alias
    r = client.get(f"/metadata/crews?ids={cid},{cid:064x},{0xAB:064x}")
    assert r.status_code == 200
    assert [d and d["name"] for d in r.get_json()] == ["Research Crew"] * 2 + [None]


def api_paths(world, spell):
    crew, agent, run = spell(world["crew"]), spell(world["agent"]), spell(world["run"])
    return [
        ("GET", f"/crews/{crew}", None),
        ("GET", f"/crews/{crew}/runs", None),
        ("PATCH", f"/crews/{crew}", {"name": "renamed"}),
        ("DELETE", f"/crews/{crew}", None),
        ("POST", f"/crews/{crew}/agents", {"name": "a", "role": "r"}),
        ("POST", f"/crews/{crew}/runs", {}),
        ("GET", f"/agents/{agent}", None),
        ("PATCH", f"/agents/{agent}", {"name": "renamed"}),
        ("DELETE", f"/agents/{agent}", None),
        ("PATCH", f"/runs/{run}", {"status": "failed"}),
    ]


@pytest.mark.parametrize("alias", range(len(id_aliases(1)) + len(NON_DECIMAL_DIGITS)))
def test_api_ids_have_one_spelling(client, app, alice, world, alias):
    def spell(number):
        return quote((id_aliases(number) + NON_DECIMAL_DIGITS)[alias])

    before = snapshot(app)
    for method, path, body in api_paths(world, spell):
        r = client.open(path, method=method, json=body, headers=alice["headers"])
        assert error_of(r, 404)["code"] == "not_found", (method, path)
    assert snapshot(app) == before


def test_id_patterns_in_the_openapi_document(client):
    import re

    from crew7.services.metadata import is_token_id

    spec = client.get("/openapi.json").get_json()
    (ids,) = spec["paths"]["/metadata/crews"]["get"]["parameters"]
    assert "100" in ids["description"]
    # ECMA-262's $ is the end of input; Python's also matches before a final newline.
    batch = re.compile(ids["schema"]["pattern"].removesuffix("$") + r"\Z")
    one = spec["paths"]["/metadata/crew/{token_id}"]["parameters"][0]["schema"]
    single = re.compile(one["pattern"].removesuffix("$") + r"\Z")
    samples = [*id_aliases(12), *NON_DECIMAL_DIGITS, "0", "1", "12", "9" * 19, "9" * 20]
    samples += ["a" * 64, "A" * 64, "a" * 63, "0" * 64, "g" * 64, "1.5", "-1", ""]
    for sample in samples:
        documented = batch.search(sample) is not None
        assert documented == (single.search(sample) is not None), sample
        assert documented == is_token_id(sample), sample
    crew_id = spec["paths"]["/crews/{crew_id}"]["parameters"][0]["schema"]
    assert crew_id == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


# --- bodies ---------------------------------------------------------------------------------


def test_deeply_nested_json_is_400(client, app, alice, world):
    before = snapshot(app)
    for payload in (
        "[" * 1000 + "]" * 1000,
        '{"name": ' + "[" * 1000 + "]" * 1000 + "}",
        '{"a":' * 1000 + "1" + "}" * 1000,
    ):
        for method, path in (
            ("POST", "/crews"),
            ("PATCH", f"/crews/{world['crew']}"),
            ("POST", f"/crews/{world['crew']}/runs"),
        ):
            r = send_json_text(client, method, path, payload, alice)
            assert error_of(r, 400)["code"] == "bad_request", (method, path)
    assert snapshot(app) == before


EXTREME_DATETIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999-00:01",
]


@pytest.mark.parametrize("value", EXTREME_DATETIMES)
@pytest.mark.parametrize("field", ["started_at", "finished_at"])
def test_datetimes_beyond_the_calendar_are_422(client, app, alice, world, value, field):
    before = snapshot(app)
    for method, path in (
        ("POST", f"/crews/{world['crew']}/runs"),
        ("PATCH", f"/runs/{world['run']}"),
    ):
        r = client.open(path, method=method, json={field: value}, headers=alice["headers"])
        assert field in error_of(r, 422)["fields"], (method, r.get_json())
    assert snapshot(app) == before


TEXT_FIELDS = [
    ("POST", "/crews", {"name": "ok"}, "name"),
    ("POST", "/crews", {"name": "ok"}, "description"),
    ("PATCH", "/crews/{crew}", {}, "name"),
    ("PATCH", "/crews/{crew}", {}, "description"),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}, "name"),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}, "role"),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}, "goal"),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}, "backstory"),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}, "llm"),
    ("POST", "/crews/{crew}/agents", {"name": "a", "role": "r"}, "tools"),
    ("PATCH", "/agents/{agent}", {}, "name"),
    ("PATCH", "/agents/{agent}", {}, "role"),
    ("PATCH", "/agents/{agent}", {}, "goal"),
    ("PATCH", "/agents/{agent}", {}, "backstory"),
    ("PATCH", "/agents/{agent}", {}, "llm"),
    ("PATCH", "/agents/{agent}", {}, "tools"),
]

# As JSON text, so the escapes reach the parser as a client would send them.
UNSTORABLE = {
    "nul": '"bad\\u0000name"',
    "lone high surrogate": '"bad\\ud800name"',
    "lone low surrogate": '"\\udfff"',
    "reversed pair": '"\\udc00\\ud800"',
}


@pytest.mark.parametrize("kind", list(UNSTORABLE))
def test_text_a_database_cannot_store_is_422(client, app, alice, world, kind):
    before = snapshot(app)
    for method, template, base, field in TEXT_FIELDS:
        path = template.format(**world)
        value = UNSTORABLE[kind]
        if field == "tools":
            value = f'["ok", {value}]'
        payload = json.dumps(base)[:-1] + (", " if base else "") + f'"{field}": {value}}}'
        r = send_json_text(client, method, path, payload, alice)
        assert field in error_of(r, 422)["fields"], (method, path, field, r.get_json())
    assert snapshot(app) == before


def test_the_text_rule_is_documented(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    strings = {
        f"{name}.{prop}": spec.get("items", spec)
        for name, schema in schemas.items()
        if name.endswith(("Create", "Update"))
        for prop, spec in schema["properties"].items()
        if spec.get("type") == "string" or spec.get("items", {}).get("type") == "string"
    }
    assert len(strings) >= 15, strings
    undocumented = {k: v for k, v in strings.items() if "format" not in v and "pattern" not in v}
    assert not undocumented
    for key, spec in strings.items():
        if "pattern" in spec:
            assert spec["pattern"] == "^[^\\u0000]*$", key


def test_valid_unicode_text_is_stored_as_sent(client, alice):
    name = "Crew \N{GRINNING FACE} \u00e9\u0301 \u4e2d\u6587 \ufeff\ufffd"
    r = client.post("/crews", json={"name": name}, headers=alice["headers"])
    assert r.status_code == 201 and r.get_json()["name"] == name
    assert client.get(f"/crews/{r.get_json()['id']}").get_json()["name"] == name


def test_chunked_body_over_the_limit_is_413(client, app, alice):
    before = snapshot(app)
    big = json.dumps({"name": "x", "description": "y" * 70_000}).encode()
    r = post_chunked(client, "/crews", big, alice)
    assert error_of(r, 413)["code"] == "payload_too_large"
    assert snapshot(app) == before
    # One that fits the limit exactly is read whole.
    exact = json.dumps({"name": "x", "description": ""}).encode()
    exact = exact[:-2] + b"y" * (app.config["MAX_CONTENT_LENGTH"] - len(exact)) + exact[-2:]
    r = post_chunked(client, "/crews", exact, alice)
    assert error_of(r, 422)["fields"] == {"description": ["Longer than maximum length 2000."]}


# --- redirects never name a host the client sent ---------------------------------------------

ODD_PATHS = [
    "//crews",
    "/metadata//crew/1",
    "/metadata/crew//1",
    "//metadata/crews?ids=1",
    "/crews//1",
    "/crews/1//runs",
    "/crews/",
    "/crews/1/",
    "/openapi.json/",
    "/healthz/",
    "//evil.example/",
    "///evil.example//crews",
    "/stats/",
    "/metadata/",
    "/metrics/",
]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"])
def test_no_redirect_names_the_client_host(client, method):
    for path in ODD_PATHS:
        for headers in (
            {"Host": "evil.example"},
            {"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        ):
            # As the server hands it on: the test client would read "//x/..." as a host.
            raw_path, _, query = path.partition("?")
            r = client.open(
                "/",
                method=method,
                headers=headers,
                environ_overrides={"PATH_INFO": raw_path, "QUERY_STRING": query},
            )
            location = r.headers.get("Location", "")
            assert "evil" not in location, (method, path, r.status_code, location)
            assert "Location" not in r.headers and r.status_code < 500, (method, path)
            # Not an alias either: a 404 of its own, except that werkzeug reads leading
            # slashes as one (the same resource, still no redirect).
            assert r.status_code == 404 or raw_path.startswith("//"), (method, path)
            if method != "HEAD" and r.status_code >= 400:
                error_of(r, r.status_code)


def test_no_rule_ends_with_a_slash(app):
    # werkzeug redirects a request without the slash to such a rule, naming the request's Host.
    assert [r.rule for r in app.url_map.iter_rules() if r.rule.endswith("/")] == []


# --- the same through the real gunicorn --------------------------------------------------------


@pytest.fixture
def served(database_url, redis_server):
    """gunicorn (1 worker, gunicorn.conf.py) serving the app on this test's database."""
    from tests.support.app import fresh_users
    from tests.support.gunicorn import GunicornServer, served_env

    (alice,) = fresh_users(database_url, redis_server.url, "alice")
    with GunicornServer(served_env(database_url, redis_server.url), workers=1) as server:
        yield server, alice["headers"]


def raw_request(port, method, path, body=None, headers=None, chunked=False):
    from tests.support.raw_http import request

    return request(port, method, path, body, headers, timeout=10, chunked=chunked)


@pytest.mark.gunicorn
def test_through_gunicorn(served):
    server, auth = served
    json_auth = {**auth, "Content-Type": "application/json"}
    status, _, data = raw_request(server.port, "POST", "/crews", b'{"name": "Served"}', json_auth)
    assert status == 201, data
    crew = json.loads(data)["id"]
    # The documented batch maximum, every id in its longest form, fits gunicorn's request line.
    ids = [f"{crew:064x}"] + [f"{n:064x}" for n in range(10**6, 10**6 + 99)]
    status, headers, data = raw_request(server.port, "GET", "/metadata/crews?ids=" + ",".join(ids))
    assert status == 200, data[:300]
    documents = json.loads(data)
    assert len(documents) == 100 and documents[0]["name"] == "Served"
    status, headers, data = raw_request(
        server.port, "GET", "/metadata/crews?ids=" + "%2C".join(ids)
    )
    assert status == 200, data[:300]
    # One more is the app's JSON 400, not gunicorn's HTML.
    status, headers, data = raw_request(
        server.port, "GET", "/metadata/crews?ids=" + ",".join(ids + [ids[-1]])
    )
    assert status == 400 and json.loads(data)["error"]["code"] == "bad_request"
    # Bodies: too deep, too long (chunked), unstorable text.
    deep = b"[" * 1000 + b"]" * 1000
    status, _, data = raw_request(server.port, "POST", "/crews", deep, json_auth)
    assert status == 400 and json.loads(data)["error"]["code"] == "bad_request"
    big = json.dumps({"name": "x", "description": "y" * 70_000}).encode()
    status, _, data = raw_request(server.port, "POST", "/crews", big, json_auth, chunked=True)
    assert status == 413 and json.loads(data)["error"]["code"] == "payload_too_large"
    for body in (b'{"name": "a\\u0000b"}', b'{"name": "\\ud800"}'):
        status, _, data = raw_request(server.port, "POST", "/crews", body, json_auth)
        assert status == 422 and "name" in json.loads(data)["error"]["fields"], data
    start = b'{"status": "running", "started_at": "0001-01-01T00:00:00+14:00"}'
    status, _, data = raw_request(server.port, "POST", f"/crews/{crew}/runs", start, json_auth)
    assert status == 422 and "started_at" in json.loads(data)["error"]["fields"], data
    # No redirect names the Host the client sent.
    for path in ODD_PATHS:
        status, headers, _ = raw_request(server.port, "GET", path, headers={"Host": "evil.example"})
        assert "evil" not in headers.get("location", "") and not 300 <= status < 400, path
    status, _, data = raw_request(server.port, "GET", f"/crews/{crew}")
    assert status == 200 and json.loads(data)["name"] == "Served"


# --- the known cases, one line each: `pytest tests/test_input.py -k known_case -v` ----------

CHUNKED_OVER_LIMIT = {
    "input_stream": lambda: io.BytesIO(json.dumps({"name": "x", "d": "y" * 70_000}).encode()),
    "headers": {"Transfer-Encoding": "chunked"},
    "environ_overrides": {"wsgi.input_terminated": True},
}
# name: (caller, method, path, raw JSON body or None, expected status)
KNOWN_CASES = {
    "metadata superscript two": (None, "GET", "/metadata/crew/%C2%B2", None, 404),
    "metadata circled one": (None, "GET", "/metadata/crew/%E2%91%A0", None, 404),
    "metadata fullwidth id": (None, "GET", "/metadata/crew/{fullwidth}", None, 404),
    "metadata arabic-indic id": (None, "GET", "/metadata/crew/{arabic}", None, 404),
    "metadata leading zero": (None, "GET", "/metadata/crew/0{crew}", None, 404),
    "metadata uppercase hex": (None, "GET", "/metadata/crew/{HEX}", None, 404),
    "metadata lowercase hex": (None, "GET", "/metadata/crew/{hex}", None, 200),
    "metadata canonical decimal": (None, "GET", "/metadata/crew/{crew}", None, 200),
    "batch leading zero": (None, "GET", "/metadata/crews?ids=0{crew}", None, 400),
    "batch fullwidth id": (None, "GET", "/metadata/crews?ids={fullwidth}", None, 400),
    "batch uppercase hex": (None, "GET", "/metadata/crews?ids={HEX}", None, 400),
    "batch space after comma": (None, "GET", "/metadata/crews?ids={crew},%20{crew}", None, 400),
    "api fullwidth crew id": (None, "GET", "/crews/{fullwidth}", None, 404),
    "api arabic-indic crew id": (None, "GET", "/crews/{arabic}", None, 404),
    "api leading zero crew id": (None, "GET", "/crews/0{crew}", None, 404),
    "api leading zero PATCH run": ("alice", "PATCH", "/runs/0{run}", '{"status": "failed"}', 404),
    "body nested 1000 deep": ("alice", "POST", "/crews", "[" * 1000 + "]" * 1000, 400),
    "integer of 5,000 digits": (
        "alice",
        "POST",
        "/crews/{crew}/runs",
        '{"tokens_used": 1' + "0" * 5000 + "}",
        400,
    ),
    "started_at year 1 +14:00": (
        "alice",
        "POST",
        "/crews/{crew}/runs",
        '{"started_at": "0001-01-01T00:00:00+14:00"}',
        422,
    ),
    "finished_at year 9999 -14:00": (
        "alice",
        "PATCH",
        "/runs/{run}",
        '{"finished_at": "9999-12-31T23:59:59-14:00"}',
        422,
    ),
    "lone surrogate in name": ("alice", "POST", "/crews", '{"name": "\\ud800"}', 422),
    "NUL in name": ("alice", "POST", "/crews", '{"name": "a\\u0000b"}', 422),
    "NUL in a tool": (
        "alice",
        "POST",
        "/crews/{crew}/agents",
        '{"name": "a", "role": "r", "tools": ["\\u0000"]}',
        422,
    ),
    "chunked body over 64 KiB": ("alice", "POST", "/crews", CHUNKED_OVER_LIMIT, 413),
    "merged slashes, foreign Host": (None, "GET", "/metadata//crew/{crew}", None, 404),
    "anonymous invalid create": (None, "POST", "/crews", '{"name": ""}', 401),
    "anonymous no body": (None, "POST", "/crews/{crew}/runs", None, 401),
    "other user, public crew, invalid": ("bob", "PATCH", "/crews/{crew}", '{"name": ""}', 403),
    "other user, public crew, no body": ("bob", "PATCH", "/crews/{crew}", None, 403),
    "other user, private crew, invalid": ("bob", "PATCH", "/crews/{hidden}", '{"name": ""}', 404),
    "owner, no body": ("alice", "PATCH", "/crews/{crew}", None, 400),
    "owner, form body": ("alice", "PATCH", "/crews/{crew}", "name=x", 415),
    "owner, invalid": ("alice", "PATCH", "/crews/{crew}", '{"name": ""}', 422),
}


@pytest.mark.parametrize("case", list(KNOWN_CASES))
def test_known_case(client, app, alice, bob, case):
    caller, method, template, body, expected = KNOWN_CASES[case]
    crew = seed_crew(client, alice, agents=0)[0]["id"]
    while not any(c in "abcdef" for c in format(crew, "x")):
        crew = seed_crew(client, alice, agents=0)[0]["id"]
    hidden = seed_crew(client, alice, agents=0, is_public=False)[0]["id"]
    run = client.post(f"/crews/{crew}/runs", json={}, headers=alice["headers"]).get_json()["id"]
    path = template.format(
        crew=crew,
        hidden=hidden,
        run=run,
        fullwidth=quote(fullwidth(crew)),
        arabic=quote(arabic_indic(crew)),
        hex=format(crew, "064x"),
        HEX=format(crew, "064X"),
    )
    headers = {"Host": "evil.example"}
    if caller:
        headers.update({"alice": alice, "bob": bob}[caller]["headers"])
    kwargs = {}
    if isinstance(body, dict):
        kwargs = {**body, "input_stream": body["input_stream"]()}
        headers.update(kwargs.pop("headers"))
        kwargs["content_type"] = "application/json"
    elif body is not None:
        kwargs = {"data": body.encode()}
        kwargs["content_type"] = "application/json" if body[:1] in "[{" else "text/plain"
    before = snapshot(app)
    r = client.open(path, method=method, headers=headers, **kwargs)
    assert r.status_code == expected, r.get_data()[:300]
    assert "evil" not in r.headers.get("Location", "")
    if expected >= 400:
        error_of(r, expected)
        assert snapshot(app) == before


@pytest.mark.parametrize(
    "value",
    ["\N{FULLWIDTH DIGIT ONE}", "\N{ARABIC-INDIC DIGIT ONE}", "+1", " 1", "1_0", "01", "1.0"],
)
def test_query_numbers_are_ascii_decimal(client, alice, value):
    crew = seed_crew(client, alice, agents=0)[0]["id"]
    for path in ("/crews", f"/crews/{crew}/runs"):
        for name in ("page", "per_page"):
            r = client.get(f"{path}?{name}={quote(value)}")
            assert name in error_of(r, 422)["fields"], (path, name, value)
    assert client.get("/crews?page=1&per_page=10").status_code == 200


def test_numbers_too_long_to_parse_are_400(client, app, alice, world):
    before = snapshot(app)
    for number in ("1" + "0" * 5000, "-" + "9" * 4301, "1e999999", "1." + "0" * 5000):
        body = '{"tokens_used": ' + number + "}"
        r = send_json_text(client, "POST", f"/crews/{world['crew']}/runs", body, alice)
        assert r.status_code in (400, 422), (number[:10], r.status_code)
        error_of(r, r.status_code)
    assert snapshot(app) == before
