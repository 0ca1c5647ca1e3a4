"""The crews API: statuses, validation, ownership and visibility, on both databases."""

import flask
import pytest
from openapi_spec_validator import validate

from tests.support.app import db_scalar


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code
    assert body["error"]["code"] and body["error"]["message"]
    return body["error"]


def new_crew(client, user, **fields):
    data = {"name": "Research Crew", "description": "finds things", **fields}
    r = client.post("/crews", json=data, headers=user["headers"])
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def count(app, table):
    return db_scalar(app, f"SELECT count(*) FROM {table}")


def test_create_and_read_crew(client, alice):
    crew = new_crew(client, alice, process="hierarchical")
    assert crew["owner"] == "alice" and crew["process"] == "hierarchical" and crew["is_public"]
    r = client.get(f"/crews/{crew['id']}")
    assert r.status_code == 200 and r.get_json()["name"] == "Research Crew"
    assert r.get_json()["stats"]["total_runs"] == 0


def test_list_public_crews_paginated(client, alice):
    for n in range(5):
        new_crew(client, alice, name=f"c{n}")
    new_crew(client, alice, name="hidden", is_public=False)
    r = client.get("/crews?per_page=2&page=2")
    body = r.get_json()
    assert r.status_code == 200
    assert [c["name"] for c in body["items"]] == ["c2", "c3"]
    assert body["total"] == 5 and body["pages"] == 3 and body["per_page"] == 2
    assert client.get("/crews?per_page=0").status_code == 422
    assert client.get("/crews?page=abc").status_code == 422


def test_writes_need_a_valid_token(client, app, alice):
    r = client.post("/crews", json={"name": "x"})
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.post("/crews", json={"name": "x"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = client.post("/crews", json={"name": "x"}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert count(app, "crews") == 0


def test_only_owner_changes_crew(client, app, alice, bob):
    crew = new_crew(client, alice)
    cid = crew["id"]
    r = client.patch(f"/crews/{cid}", json={"name": "stolen"}, headers=bob["headers"])
    assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
    assert client.delete(f"/crews/{cid}", headers=bob["headers"]).status_code == 403
    r = client.post(f"/crews/{cid}/agents", json={"name": "a", "role": "r"}, headers=bob["headers"])
    assert r.status_code == 403
    assert client.post(f"/crews/{cid}/runs", json={}, headers=bob["headers"]).status_code == 403
    assert client.get(f"/crews/{cid}").get_json()["name"] == "Research Crew"
    assert count(app, "agents") == 0 and count(app, "runs") == 0
    r = client.patch(f"/crews/{cid}", json={"name": "renamed"}, headers=alice["headers"])
    assert r.status_code == 200 and r.get_json()["name"] == "renamed"


def test_private_crew_is_404_to_everyone_but_owner(client, alice, bob):
    crew = new_crew(client, alice, is_public=False)
    cid = crew["id"]
    agent = client.post(
        f"/crews/{cid}/agents", json={"name": "a", "role": "r"}, headers=alice["headers"]
    ).get_json()
    run = client.post(f"/crews/{cid}/runs", json={}, headers=alice["headers"]).get_json()
    for headers in ({}, bob["headers"]):
        assert client.get(f"/crews/{cid}", headers=headers).status_code == 404
        assert client.get(f"/crews/{cid}/runs", headers=headers).status_code == 404
        assert client.get(f"/agents/{agent['id']}", headers=headers).status_code == 404
    # Changing it is 404 too for a non-owner: its existence is not revealed.
    assert (
        client.patch(f"/crews/{cid}", json={"name": "x"}, headers=bob["headers"]).status_code == 404
    )
    assert client.patch(f"/runs/{run['id']}", json={}, headers=bob["headers"]).status_code == 404
    assert client.delete(f"/agents/{agent['id']}", headers=bob["headers"]).status_code == 404
    assert client.get(f"/crews/{cid}", headers=alice["headers"]).status_code == 200
    assert client.get(f"/agents/{agent['id']}", headers=alice["headers"]).status_code == 200
    assert client.get("/crews").get_json()["total"] == 0


def test_agents_crud(client, app, alice, bob):
    cid = new_crew(client, alice)["id"]
    data = {
        "name": "Ada",
        "role": "Researcher",
        "goal": "find",
        "llm": "gpt-4o",
        "tools": ["web_search", "python"],
    }
    r = client.post(f"/crews/{cid}/agents", json=data, headers=alice["headers"])
    assert r.status_code == 201
    agent = r.get_json()
    assert agent["tools"] == ["web_search", "python"] and agent["crew_id"] == cid
    r = client.patch(f"/agents/{agent['id']}", json={"role": "Writer"}, headers=bob["headers"])
    assert r.status_code == 403
    r = client.patch(f"/agents/{agent['id']}", json={"role": "Writer"}, headers=alice["headers"])
    assert r.status_code == 200 and r.get_json()["role"] == "Writer"
    assert client.delete(f"/agents/{agent['id']}", headers=alice["headers"]).status_code == 204
    assert client.get(f"/agents/{agent['id']}").status_code == 404
    assert count(app, "agents") == 0


def test_runs_record_finish_and_list(client, alice):
    cid = new_crew(client, alice)["id"]
    r = client.post(
        f"/crews/{cid}/runs",
        json={"status": "running", "tokens_used": 10},
        headers=alice["headers"],
    )
    assert r.status_code == 201
    run = r.get_json()
    assert run["status"] == "running" and run["started_at"]
    r = client.patch(
        f"/runs/{run['id']}",
        json={"status": "succeeded", "duration": 12.5},
        headers=alice["headers"],
    )
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "succeeded" and body["finished_at"] and body["duration"] == 12.5
    client.post(
        f"/crews/{cid}/runs", json={"status": "failed", "duration": 3}, headers=alice["headers"]
    )
    page = client.get(f"/crews/{cid}/runs?per_page=1").get_json()
    assert page["total"] == 2 and len(page["items"]) == 1
    stats = client.get(f"/crews/{cid}").get_json()["stats"]
    assert stats["total_runs"] == 2 and stats["succeeded_runs"] == 1 and stats["failed_runs"] == 1
    assert stats["success_rate"] == 50.0 and stats["average_duration"] == pytest.approx(7.75)


def test_delete_crew_removes_everything(client, app, alice):
    cid = new_crew(client, alice)["id"]
    client.post(f"/crews/{cid}/agents", json={"name": "a", "role": "r"}, headers=alice["headers"])
    client.post(f"/crews/{cid}/runs", json={}, headers=alice["headers"])
    assert client.delete(f"/crews/{cid}", headers=alice["headers"]).status_code == 204
    assert client.get(f"/crews/{cid}").status_code == 404
    assert (
        count(app, "crews"),
        count(app, "agents"),
        count(app, "runs"),
        count(app, "crew_stats"),
    ) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 121}, "name"),
        ({"name": "ok", "process": "parallel"}, "process"),
        ({"name": "ok", "is_public": "maybe"}, "is_public"),
        ({"name": "ok", "owner_id": 3}, "owner_id"),
    ],
)
def test_validation_is_422_with_field_messages(client, app, alice, body, field):
    r = client.post("/crews", json=body, headers=alice["headers"])
    assert r.status_code == 422
    err = error_of(r)
    assert err["code"] == "validation_error" and field in err["fields"]
    assert count(app, "crews") == 0


def test_run_validation(client, app, alice):
    cid = new_crew(client, alice)["id"]
    for body in (
        {"status": "done"},
        {"duration": -1},
        {"tokens_used": "many"},
        {"started_at": "2026-01-02T00:00:00", "finished_at": "2026-01-01T00:00:00"},
    ):
        r = client.post(f"/crews/{cid}/runs", json=body, headers=alice["headers"])
        assert r.status_code == 422, body
    assert count(app, "runs") == 0


def test_malformed_json_is_400(client, app, alice):
    r = client.post(
        "/crews", data="{not json", content_type="application/json", headers=alice["headers"]
    )
    assert r.status_code == 400 and error_of(r)["code"] == "bad_request"
    assert count(app, "crews") == 0


def test_404_405_413(client, alice):
    r = client.get("/nowhere")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = client.put("/crews")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]
    big = {"name": "x", "description": "y" * 70_000}
    r = client.post("/crews", json=big, headers=alice["headers"])
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


def test_500_is_json_without_traceback(app, client):
    def boom():
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", "boom", boom)
    r = client.get("/boom")
    assert r.status_code == 500
    err = error_of(r)
    assert "secret" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)
    assert err["code"] == "internal_error"


def test_openapi_document_is_valid(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.get_json()
    validate(spec)
    for path in (
        "/crews",
        "/crews/{crew_id}",
        "/crews/{crew_id}/agents",
        "/agents/{agent_id}",
        "/crews/{crew_id}/runs",
        "/runs/{run_id}",
        "/metadata/crew/{token_id}",
        "/metadata/crews",
        "/stats/leaderboard/{kind}",
    ):
        assert path in spec["paths"], path
    assert "bearerAuth" in spec["components"]["securitySchemes"]


def test_health(client, app, redis_server):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json()["checks"] == {"database": "ok", "redis": "ok"}


def test_bench_routes_only_with_the_setting(app_factory, redis_client):
    plain = app_factory()
    assert plain.test_client().get("/bench/static").status_code == 404
    app = app_factory(BENCH_ROUTES=True)
    client = app.test_client()
    r = client.get("/bench/static")
    assert r.status_code == 200 and r.get_json()["name"] == "baseline"
    assert client.get("/bench/redis-get/1").status_code == 404
    redis_client.set("metadata:crew:1", b'{"name":"x"}')
    assert client.get("/bench/redis-get/1").get_data() == b'{"name":"x"}'


def test_writes_need_a_json_body(client, app, alice):
    cid = new_crew(client, alice)["id"]
    r = client.post(f"/crews/{cid}/runs", headers=alice["headers"])
    assert r.status_code == 400 and "body" in error_of(r)["message"]
    r = client.patch(f"/crews/{cid}", headers=alice["headers"])
    assert r.status_code == 400
    r = client.post(
        "/crews",
        data="name=x",
        headers=alice["headers"],
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"
    assert count(app, "runs") == 0 and count(app, "crews") == 1


@pytest.mark.parametrize(
    "path",
    [
        "/crews/9223372036854775808",
        "/agents/99999999999999999999",
        "/crews/0",
        "/runs/18446744073709551616",
    ],
)
def test_ids_beyond_the_database_range_are_404(client, alice, path):
    r = (
        client.get(path)
        if not path.startswith("/runs")
        else client.patch(path, json={}, headers=alice["headers"])
    )
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


@pytest.mark.parametrize(
    "body", [{"name": "x", "is_public": 1}, {"name": "x", "is_public": "true"}, {"name": 5}]
)
def test_json_types_are_strict(client, app, alice, body):
    r = client.post("/crews", json=body, headers=alice["headers"])
    assert r.status_code == 422
    assert count(app, "crews") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"tokens_used": "5"},
        {"tokens_used": True},
        {"tokens_used": 1.5},
        {"duration": "3"},
        {"duration": False},
    ],
)
def test_run_numbers_are_strict(client, app, alice, body):
    cid = new_crew(client, alice)["id"]
    assert client.post(f"/crews/{cid}/runs", json=body, headers=alice["headers"]).status_code == 422
    assert count(app, "runs") == 0


def test_timestamps_are_rfc3339_in_utc(client, alice):
    crew = new_crew(client, alice)
    assert crew["created_at"].endswith("+00:00")
    r = client.post(
        f"/crews/{crew['id']}/runs",
        headers=alice["headers"],
        json={"status": "running", "started_at": "2026-03-01T12:00:00+02:00"},
    )
    assert r.status_code == 201
    assert r.get_json()["started_at"] == "2026-03-01T10:00:00+00:00"
    r = client.post(
        f"/crews/{crew['id']}/runs",
        headers=alice["headers"],
        json={"status": "running", "started_at": "2026-03-01T12:00:00"},
    )
    assert r.get_json()["started_at"] == "2026-03-01T12:00:00+00:00"  # no offset: UTC


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
@pytest.mark.parametrize(
    "path", ["/crews/0", "/crews/2147483648", "/agents/2147483648", "/runs/2147483648"]
)
def test_out_of_range_ids_are_404_on_every_method(client, alice, method, path):
    body = {"status": "failed"} if path.startswith("/runs") else {"name": "x"}
    r = getattr(client, method)(path, json=body, headers=alice["headers"])
    if r.status_code == 405:  # only where the route has no such method at all
        assert path.startswith("/runs") and method != "patch"
    else:
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_sub_resources_of_out_of_range_ids_are_404(client, alice):
    assert client.get("/crews/0/runs").status_code == 404
    r = client.post("/crews/2147483648/runs", json={}, headers=alice["headers"])
    assert r.status_code == 404


def test_large_token_counts_are_validated(client, app, alice):
    cid = new_crew(client, alice)["id"]
    r = client.post(f"/crews/{cid}/runs", json={"tokens_used": 2**31}, headers=alice["headers"])
    assert r.status_code == 422 and count(app, "runs") == 0


def test_no_cookie_sessions(app, client, alice):
    r = client.get("/crews")
    assert "Set-Cookie" not in r.headers
    r = client.post("/crews", json={"name": "c"}, headers=alice["headers"])
    assert r.status_code == 201 and "Set-Cookie" not in r.headers
    # A session cookie a client sends is neither read nor renewed.
    client.set_cookie("session", "eyJ4IjoxfQ.ZZZZZZ.signature")
    r = client.get("/crews")
    assert r.status_code == 200 and "Set-Cookie" not in r.headers
    # No session is opened: Flask falls back to its null session, which refuses writes.
    with app.test_request_context("/crews", headers={"Cookie": "session=x"}):
        assert app.session_interface.open_session(app, flask.request) is None
        assert app.session_interface.is_null_session(flask.session)
        with pytest.raises(RuntimeError, match="session is unavailable"):
            flask.session["user"] = "alice"
