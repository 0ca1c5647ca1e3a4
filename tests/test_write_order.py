"""Who may write is settled before what they sent is looked at.

Every write answers, in this order: 401 without a valid token; 404 for an object the
caller cannot see, 403 for one they see but do not own; 400 without a body, 415 for
another media type; only then 422 for a body that fails validation. A caller who is
not the owner never learns anything about the body's rules, and nothing changes.
"""

import pytest

from tests.test_input import error_of, snapshot

# (method, path template, an invalid body); {id} is filled from the target object.
WRITES = [
    ("PATCH", "/crews/{crew}", {"name": ""}),
    ("DELETE", "/crews/{crew}", None),
    ("POST", "/crews/{crew}/agents", {"name": "", "role": "r"}),
    ("PATCH", "/agents/{agent}", {"name": ""}),
    ("DELETE", "/agents/{agent}", None),
    ("POST", "/crews/{crew}/runs", {"status": "nope"}),
    ("PATCH", "/runs/{run}", {"status": "nope"}),
]
WRITE_IDS = [f"{m} {p}" for m, p, _ in WRITES]


def make_objects(client, user, is_public):
    h = user["headers"]
    crew = client.post("/crews", json={"name": "c", "is_public": is_public}, headers=h).get_json()
    agent = client.post(
        f"/crews/{crew['id']}/agents", json={"name": "a", "role": "r"}, headers=h
    ).get_json()
    run = client.post(f"/crews/{crew['id']}/runs", json={}, headers=h).get_json()
    return {"crew": crew["id"], "agent": agent["id"], "run": run["id"]}


@pytest.fixture
def objects(client, alice):
    return {
        "public": make_objects(client, alice, True),
        "private": make_objects(client, alice, False),
        "unknown": {"crew": 999_999, "agent": 999_999, "run": 999_999},
    }


def send(client, method, path, body, headers, how):
    """One write with body sent how: 'invalid' JSON, 'none' at all, or as a 'form'."""
    if how == "invalid":
        return client.open(path, method=method, json=body, headers=headers)
    if how == "none":
        return client.open(path, method=method, headers=headers)
    return client.open(
        path,
        method=method,
        data="name=x",
        content_type="application/x-www-form-urlencoded",
        headers=headers,
    )


CALLERS = {
    "anonymous": lambda users: {},
    "bad token": lambda users: {"Authorization": "Bearer c7_nope"},
    "malformed header": lambda users: {"Authorization": "Token abc"},
}


@pytest.mark.parametrize("how", ["invalid", "none", "form"])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_create_crew_authenticates_first(client, app, alice, caller, how):
    before = snapshot(app)
    r = send(client, "POST", "/crews", {"name": ""}, CALLERS[caller](None), how)
    assert error_of(r, 401)["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(app) == before


def test_create_crew_body_checks_for_a_user(client, app, alice):
    before = snapshot(app)
    assert error_of(send(client, "POST", "/crews", {}, alice["headers"], "none"), 400)
    assert error_of(send(client, "POST", "/crews", {}, alice["headers"], "form"), 415)
    r = send(client, "POST", "/crews", {"name": ""}, alice["headers"], "invalid")
    assert "name" in error_of(r, 422)["fields"]
    assert snapshot(app) == before


CASES = [
    (method, template, body, how)
    for method, template, body in WRITES
    for how in (("invalid", "none", "form") if body is not None else ("none",))
]


@pytest.mark.parametrize(
    ("method", "template", "body", "how"), CASES, ids=[f"{m} {p} {h}" for m, p, _, h in CASES]
)
def test_writes_answer_in_order(client, app, alice, bob, objects, method, template, body, how):
    before = snapshot(app)
    expected = {}
    got = {}
    for visibility, ids in objects.items():
        path = template.format(**ids)
        for caller, headers in (
            ("anonymous", {}),
            ("bad token", {"Authorization": "Bearer c7_nope"}),
            ("bob", bob["headers"]),
            ("alice", alice["headers"]),
        ):
            if visibility == "unknown" or (visibility == "private" and caller == "bob"):
                want = 404
            elif caller == "bob":
                want = 403
            elif caller == "alice" and body is not None:
                want = {"invalid": 422, "none": 400, "form": 415}[how]
            elif caller == "alice":
                continue  # a DELETE by the owner succeeds: not this test's business
            else:
                want = 401
            if caller in ("anonymous", "bad token"):
                want = 401
            r = send(client, method, path, body, headers, how)
            key = f"{caller} -> {visibility}"
            expected[key], got[key] = want, r.status_code
            if r.status_code >= 400:
                error_of(r, r.status_code)
    assert got == expected
    assert snapshot(app) == before


def test_a_query_is_validated_only_for_a_visible_crew(client, app, alice, bob, objects):
    private, public = objects["private"]["crew"], objects["public"]["crew"]
    for headers, crew, status in (
        ({}, private, 404),
        (bob["headers"], private, 404),
        (bob["headers"], 999_999, 404),
        ({}, public, 422),
        (alice["headers"], private, 422),
    ):
        r = client.get(f"/crews/{crew}/runs?page=abc", headers=headers)
        assert error_of(r, status), (headers, crew)
