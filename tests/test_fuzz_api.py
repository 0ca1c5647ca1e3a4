"""Fuzz the HTTP API with schemathesis against the app's own /openapi.json.

The real app runs under gunicorn (2 workers, the test Redis). Two users are created, and
their crews, agents and runs seeded through the API. On each database, ``schemathesis run``
(its CLI, in a subprocess working in a temporary folder) then sends, once per seed in SEEDS,
a bounded set of generated requests with one user's Bearer token: the examples, coverage,
fuzzing and stateful phases, at most MAX_EXAMPLES per operation, every check (no 5xx, documented
status codes, content types and headers, response schemas, invalid input rejected, valid
input accepted, authentication enforced, ...).

Every finding must be explained: by an open app defect in KNOWN_DEFECTS, each reproduced
deterministically below and marked ``xfail(strict=True)`` (once the app is fixed it
passes, which fails the run until the entry goes), or by NOT_DEFECTS, findings that
are the check's limits rather than the app's. The defects the fuzzing found and that
were fixed keep their reproductions as regression tests, on both databases.

Bounded: two schemathesis runs per database, at most MAX_EXAMPLES per operation, each
killed after FUZZ_TIMEOUT (a quiet machine takes about a minute for one); 127.0.0.1
only; gunicorn is stopped by its pid. How long a run takes is not judged here: these
machines are shared.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.support import raw_http
from tests.support.app import database_url_for, fresh_users
from tests.support.ci import missing
from tests.support.gunicorn import GunicornServer, served_env

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

SEEDS = (7, 2026)
MAX_EXAMPLES = 80
FUZZ_TIMEOUT = 300


# --- the server under test -------------------------------------------------------------


@dataclass
class Api:
    url: str
    port: int
    token: str
    workdir: Path
    db_kind: str
    crews: list = field(default_factory=list)
    agents: list = field(default_factory=list)
    runs: list = field(default_factory=list)

    @property
    def auth(self):
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, method, path, body=None, headers=None):
        """One request; returns (status, decoded JSON or raw bytes)."""
        status, got, data = raw_http.request(self.port, method, path, body, headers, timeout=10)
        if got.get("content-type", "").startswith("application/json") and data:
            return status, json.loads(data)
        return status, data

    def create(self, path, body):
        status, data = self.call("POST", path, body, self.auth)
        assert status == 201, (path, status, data)
        return data


@pytest.fixture(scope="module")
def api(db_kind, request, redis_server, tmp_path_factory):
    """gunicorn serving the real app on a fresh database of db_kind, with two users' data."""
    workdir = tmp_path_factory.mktemp("fuzz")
    database_url = database_url_for(db_kind, workdir, request)
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    # The owner owns the documents the metadata operations are pointed at: the fuzzer may
    # delete its own crews, not these.
    fuzzer, owner = fresh_users(database_url, redis_server.url, "fuzzer", "owner")
    token, owner_token = fuzzer["token"], owner["token"]
    env = served_env(database_url, redis_server.url)
    with GunicornServer(env, workers=2) as server:
        target = Api(server.url, server.port, token, workdir, db_kind)
        owner = Api(server.url, server.port, owner_token, workdir, db_kind)
        for who, body in (
            (target, {"name": "Research Crew", "description": "finds things"}),
            (target, {"name": "Private Crew", "is_public": False}),
            (owner, {"name": "Writing Crew", "process": "hierarchical"}),
            (owner, {"name": "Hidden Crew", "is_public": False}),
        ):
            target.crews.append(who.create("/crews", body))
        for crew, who in ((target.crews[0], target), (target.crews[2], owner)):
            target.agents.append(
                who.create(
                    f"/crews/{crew['id']}/agents",
                    {"name": "Scout", "role": "Researcher", "tools": ["web_search"]},
                )
            )
            target.runs.append(
                who.create(
                    f"/crews/{crew['id']}/runs",
                    {"status": "succeeded", "duration": 12.5, "tokens_used": 1200},
                )
            )
        yield target


# --- one schemathesis run ----------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One failed check on one generated request."""

    check: str
    code: str
    operation: str
    title: str
    message: str
    method: str
    uri: str
    body: str | None
    status: int | None
    response: str

    def describe(self):
        lines = [
            f"{self.operation}: {self.check} ({self.code} {self.title})",
            f"  request:  {self.method} {self.uri}"
            + (f"\n            body {self.body}" if self.body is not None else ""),
            f"  response: {self.status} {self.response}",
            textwrap.indent(self.message.strip(), "  | "),
        ]
        return "\n".join(lines)


@dataclass
class FuzzRun:
    findings: list
    summary: dict
    output: str


def _decode_content(response):
    content = response.get("content") or {}
    if "$base64" in content:
        text = base64.b64decode(content["$base64"]).decode("utf-8", "replace")
    else:
        text = content.get("string", "")
    return text[:300]


def parse_findings(ndjson_path):
    """Every failed or errored check in schemathesis' NDJSON event stream, deduplicated."""
    findings = {}
    for line in Path(ndjson_path).read_text().splitlines():
        event = json.loads(line)
        scenario = event.get("ScenarioFinished")
        if not scenario:
            continue
        recorder = scenario["recorder"]
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check["status"] == "success":
                    continue
                failure = (check.get("failure_info") or {}).get("failure") or {}
                case = ((recorder.get("cases") or {}).get(case_id) or {}).get("value") or {}
                interaction = (recorder.get("interactions") or {}).get(case_id) or {}
                request = interaction.get("request") or {}
                response = interaction.get("response") or {}
                finding = Finding(
                    check=check["name"],
                    code=failure.get("code", check["status"]),
                    operation=failure.get("operation", recorder["label"]),
                    title=failure.get("title", check["status"]),
                    message=failure.get("message", ""),
                    method=request.get("method") or case.get("method", "?"),
                    uri=request.get("uri") or case.get("path", "?"),
                    body=json.dumps(case["body"]) if "body" in case else None,
                    status=response.get("status_code"),
                    response=_decode_content(response),
                )
                key = (finding.check, finding.operation, finding.message)
                findings.setdefault(key, finding)
    return list(findings.values())


def _schemathesis_config(api):
    """Values, drawn half of the time, for the path parameters no operation produces: the
    leaderboard kinds, and ids of the other user's documents (the fuzzer can't delete them).
    """
    crew, hidden, agent = api.crews[2]["id"], api.crews[3]["id"], api.agents[1]["id"]
    token_ids = [str(crew), f"{crew:064x}", str(agent), f"{agent:064x}", str(hidden)]
    return textwrap.dedent(
        f"""\
        [dictionaries.leaderboard_kinds]
        values = ["runs", "success-rate"]

        [dictionaries.token_ids]
        values = {json.dumps(token_ids)}

        [parameters]
        "path.kind" = {{ dictionary = "leaderboard_kinds", probability = 0.5 }}
        "path.token_id" = {{ dictionary = "token_ids", probability = 0.5 }}
        """
    )


@pytest.fixture(scope="module", params=SEEDS, ids=lambda seed: f"seed{seed}")
def fuzz_run(api, request):
    seed = request.param
    if importlib.util.find_spec("schemathesis") is None:
        missing("schemathesis", "pip install -e '.[dev]'")
    workdir = api.workdir / f"schemathesis-{seed}"
    workdir.mkdir()
    config = workdir / "schemathesis.toml"
    config.write_text(_schemathesis_config(api))
    ndjson, summary = workdir / "events.ndjson", workdir / "summary.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {api.token}",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--output-sanitize",
        "false",
        "--no-color",
        "--report",
        "ndjson,json",
        "--report-ndjson-path",
        str(ndjson),
        "--report-json-path",
        str(summary),
    ]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    result = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FUZZ_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode not in (0, 1) or not summary.exists() or not ndjson.exists():
        pytest.fail(f"schemathesis exited with {result.returncode}:\n{output[-4000:]}")
    return FuzzRun(
        findings=parse_findings(ndjson),
        summary=json.loads(summary.read_text()),
        output=output,
    )


# --- what the findings are ---------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    name: str
    reason: str
    checks: tuple
    matches: object  # Finding -> bool
    reproduced_by: str = ""  # for an open defect: the test that shows it

    def covers(self, finding):
        return finding.check in self.checks and self.matches(finding)


def _path_ids(finding):
    path = finding.uri.split("://", 1)[-1].partition("/")[2].partition("?")[0]
    return [int(part) for part in path.split("/") if part.isdigit()]


INT32_MAX = 2**31 - 1  # PostgreSQL INTEGER; SQLite and BIGINT go to 2**63 - 1

# Open app defects. Each has a reproduction marked xfail(strict=True) (see _xfail).
# Every defect the fuzzing found so far is fixed; each has a regression test below.
KNOWN_DEFECTS = []

# Findings that are the limits of a check, not defects of the app.
NOT_DEFECTS = [
    Explanation(
        name="run-times-out-of-order",
        reason=(
            "a run whose finished_at is before its started_at is refused (422): a rule "
            "between two fields, which OpenAPI 3.0 cannot express, so schemathesis "
            "generates such pairs as valid data"
        ),
        checks=("positive_data_acceptance",),
        matches=lambda f: f.status == 422 and "must not be before started_at" in f.response,
    ),
    Explanation(
        name="feed-cursor-expired",
        reason=(
            "a change-feed cursor spelled right but stamped before the retention (one the "
            "feed handed out long ago, or made up) is 410 with the oldest cursor: which "
            "cursors are still valid depends on the clock, which a pattern cannot express"
        ),
        checks=("positive_data_acceptance",),
        matches=lambda f: f.status == 410 and '"oldest_cursor"' in f.response,
    ),
]


def explanation(finding):
    return next((e for e in KNOWN_DEFECTS + NOT_DEFECTS if e.covers(finding)), None)


def _xfail(name):
    (defect,) = [d for d in KNOWN_DEFECTS if d.name == name]
    return pytest.mark.xfail(strict=True, reason=f"app defect {name}: {defect.reason}")


# --- the fuzz run --------------------------------------------------------------------------


def test_fuzz_covers_every_operation_without_errors(fuzz_run):
    summary = fuzz_run.summary
    operations = summary["operations"]
    assert operations["total"] >= 18 and operations["selected"] == operations["total"], operations
    assert operations["tested"] == operations["selected"], operations
    assert operations["errored"] == 0, operations
    assert summary["errors"] == [], fuzz_run.output[-4000:]
    assert summary["complete"] and summary["stop_reason"] == "completed", summary["stop_reason"]
    assert not summary["warnings"]["missing_test_data"], summary["warnings"]


def test_fuzz_finds_nothing_unexplained(fuzz_run):
    unexplained = [f for f in fuzz_run.findings if explanation(f) is None]
    report = "\n\n".join(f.describe() for f in unexplained)
    assert not unexplained, f"{len(unexplained)} new failures found by schemathesis:\n\n{report}"


def _finding(check, status, response):
    return Finding(
        check=check,
        code="",
        operation="POST /crews/{crew_id}/runs",
        title="",
        message="",
        method="POST",
        uri="http://127.0.0.1/crews/1/runs",
        body=None,
        status=status,
        response=response,
    )


def test_explanations_cover_only_their_own_findings():
    """An explanation that covered too much would hide new findings from the run."""
    names = [e.name for e in KNOWN_DEFECTS + NOT_DEFECTS]
    assert len(names) == len(set(names)), names
    for defect in KNOWN_DEFECTS:
        reproduction = globals().get(defect.reproduced_by)
        marks = getattr(reproduction, "pytestmark", [])
        assert any(m.name == "xfail" and m.kwargs.get("strict") for m in marks), defect.name
    out_of_order = "finished_at must not be before started_at"
    explained = _finding("positive_data_acceptance", 422, out_of_order)
    assert explanation(explained).name == "run-times-out-of-order"
    for unexplained in (
        _finding("positive_data_acceptance", 500, out_of_order),
        _finding("not_a_server_error", 422, out_of_order),
        _finding("positive_data_acceptance", 422, "name is required"),
    ):
        assert explanation(unexplained) is None, unexplained.describe()


@pytest.fixture(scope="module")
def spec(api):
    status, document = api.call("GET", "/openapi.json")
    assert status == 200
    return document


# --- open defects, reproduced ----------------------------------------------------------------


def _admits(schema, value):
    """Whether a documented string schema accepts value (the keywords used here)."""
    if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
        return False
    return "pattern" not in schema or re.search(schema["pattern"], value) is not None


def test_ids_and_counts_in_the_documented_range_are_served(api, request):
    crew = api.create("/crews", {"name": "Counting Crew"})
    big = INT32_MAX + 1
    statuses = {
        f"{method} {path}": api.call(method, path, body, api.auth)[0]
        for method, path, body in (
            ("GET", f"/crews/{big}", None),
            ("GET", f"/crews/{2**63 - 1}", None),
            ("GET", f"/crews/{big}/runs", None),
            ("GET", f"/agents/{big}", None),
            ("PATCH", f"/runs/{big}", {"status": "failed"}),
            ("DELETE", f"/crews/{big}", None),
            ("GET", f"/metadata/crew/{big}", None),
            ("GET", f"/metadata/agent/{big}", None),
        )
    }
    status, documents = api.call("GET", f"/metadata/crews?ids={big}")
    statuses["GET /metadata/crews?ids=<2**31>"] = status
    status, run = api.call("POST", f"/crews/{crew['id']}/runs", {"tokens_used": big}, api.auth)
    statuses["POST /crews/{crew_id}/runs tokens_used=2**31"] = status
    assert statuses == {
        **{key: 404 for key in statuses},
        "GET /metadata/crews?ids=<2**31>": 200,
        # Above the documented maximum (2**31 - 1): a validation error, not a 500.
        "POST /crews/{crew_id}/runs tokens_used=2**31": 422,
    }
    assert documents == [None]


def test_out_of_range_ids_are_not_found(api):
    statuses = {
        f"{method} {path}": api.call(method, path, body, api.auth)[0]
        for n in (0, 2**63)
        for method, path, body in (
            ("GET", f"/crews/{n}", None),
            ("GET", f"/crews/{n}/runs", None),
            ("PATCH", f"/crews/{n}", {"name": "x"}),
            ("DELETE", f"/crews/{n}", None),
            ("GET", f"/agents/{n}", None),
            ("PATCH", f"/agents/{n}", {"name": "x"}),
            ("DELETE", f"/agents/{n}", None),
            ("PATCH", f"/runs/{n}", {"status": "failed"}),
            ("POST", f"/crews/{n}/agents", {"name": "x", "role": "y"}),
            ("POST", f"/crews/{n}/runs", {"status": "queued"}),
        )
    }
    assert {k: s for k, s in statuses.items() if s != 404} == {}


def test_metadata_batch_accepts_every_documented_id(api, spec):
    (ids,) = [
        p for p in spec["paths"]["/metadata/crews"]["get"]["parameters"] if p["name"] == "ids"
    ]
    refused = {}
    for value in ("9999999999999999999", "f" * 64, f"{2**63:064x}"):
        assert api.call("GET", f"/metadata/crew/{value}")[0] == 404, value
        status, body = api.call("GET", f"/metadata/crews?ids={value}")
        if _admits(ids["schema"], value) and status != 200:
            refused[value] = (status, body)
    assert not refused, (ids["schema"], refused)


# --- defects the fuzzing found and that were fixed: regression tests ---------------------------


def test_response_datetimes_carry_an_offset(api):
    crew = api.create("/crews", {"name": "Dated Crew"})
    agent = api.create(f"/crews/{crew['id']}/agents", {"name": "Clock", "role": "Timer"})
    run = api.create(f"/crews/{crew['id']}/runs", {"status": "succeeded", "duration": 1.0})
    _, fetched = api.call("GET", f"/crews/{crew['id']}")
    values = {
        "crew.created_at": crew["created_at"],
        "crew.updated_at": crew["updated_at"],
        "agent.created_at": agent["created_at"],
        "agent.updated_at": agent["updated_at"],
        "run.created_at": run["created_at"],
        "run.finished_at": run["finished_at"],
        "crew.stats.last_run_at": fetched["stats"]["last_run_at"],
    }
    naive = {k: v for k, v in values.items() if datetime.fromisoformat(v).tzinfo is None}
    assert not naive, f"documented as date-time (RFC 3339) but without an offset: {naive}"


def test_runs_accept_rfc3339_datetimes(api):
    crew = api.create("/crews", {"name": "Timed Crew"})
    status, run = api.call(
        "POST",
        f"/crews/{crew['id']}/runs",
        {"status": "running", "started_at": "2026-01-02T03:04:05+02:00"},
        api.auth,
    )
    assert status == 201, run
    assert datetime.fromisoformat(run["started_at"]) == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    status, body = api.call(
        "PATCH",
        f"/runs/{run['id']}",
        {"status": "succeeded", "finished_at": "2026-01-02T01:05:05Z"},
        api.auth,
    )
    assert status == 200, body
    assert body["duration"] is None or body["duration"] >= 0


def test_path_ids_beyond_64_bits_are_client_errors(api):
    statuses = {
        f"{method} {path}": api.call(method, path, body, api.auth)[0]
        for method, path, body in (
            ("GET", f"/crews/{2**63}", None),
            ("GET", f"/crews/{2**63}/runs", None),
            ("GET", f"/agents/{2**63}", None),
            ("PATCH", f"/crews/{2**63}", {"name": "x"}),
            ("PATCH", f"/agents/{2**63}", {"name": "x"}),
            ("PATCH", f"/runs/{2**63}", {"status": "failed"}),
            ("POST", f"/crews/{2**63}/agents", {"name": "x", "role": "y"}),
            ("POST", f"/crews/{2**63}/runs", {"status": "queued"}),
            ("DELETE", f"/agents/{2**63}", None),
            ("DELETE", f"/crews/{2**63}", None),
            ("GET", f"/metadata/crew/{2**63}", None),
        )
    }
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    # In a batch, a well-formed id that no crew can have is a null, like an unknown one.
    assert api.call("GET", f"/metadata/crews?ids={2**63}") == (200, [None])


def test_metadata_batch_answers_match_the_documented_items(api, spec):
    crew = api.create("/crews", {"name": "Listed Crew"})
    status, documents = api.call("GET", f"/metadata/crews?ids={crew['id']},999999")
    assert status == 200, documents
    assert isinstance(documents[0], dict) and documents[1] is None
    operation = spec["paths"]["/metadata/crews"]["get"]
    items = operation["responses"]["200"]["content"]["application/json"]["schema"]["items"]
    alternatives = [items, *items.get("anyOf", []), *items.get("oneOf", [])]
    assert any(s.get("nullable") for s in alternatives), items


def test_metadata_batch_ids_are_documented_as_the_app_parses_them(api, spec):
    (ids,) = [
        p for p in spec["paths"]["/metadata/crews"]["get"]["parameters"] if p["name"] == "ids"
    ]
    rejected_yet_documented = {}
    for value in ("", "abc", "1,,2", ",".join(["1"] * 101)):
        status, body = api.call("GET", f"/metadata/crews?ids={value}")
        assert status == 400, (value, body)
        if _admits(ids["schema"], value):
            rejected_yet_documented[value[:20]] = body["error"]["message"]
    assert not rejected_yet_documented, (ids["schema"], rejected_yet_documented)
    crew = api.create("/crews", {"name": "Hex Crew"})
    for value in (str(crew["id"]), f"{crew['id']:064x}", f"{crew['id']},{crew['id']:064x}"):
        assert _admits(ids["schema"], value), value
        assert api.call("GET", f"/metadata/crews?ids={value}")[0] == 200, value


def test_required_request_bodies_are_required(api, spec):
    crew = api.create("/crews", {"name": "Bodyless Crew"})
    agent = api.create(f"/crews/{crew['id']}/agents", {"name": "Void", "role": "Nobody"})
    run = api.create(f"/crews/{crew['id']}/runs", {})
    accepted = {}
    for method, template, path in (
        ("POST", "/crews", "/crews"),
        ("PATCH", "/crews/{crew_id}", f"/crews/{crew['id']}"),
        ("POST", "/crews/{crew_id}/agents", f"/crews/{crew['id']}/agents"),
        ("PATCH", "/agents/{agent_id}", f"/agents/{agent['id']}"),
        ("POST", "/crews/{crew_id}/runs", f"/crews/{crew['id']}/runs"),
        ("PATCH", "/runs/{run_id}", f"/runs/{run['id']}"),
    ):
        status = api.call(method, path, headers=api.auth)[0]
        required = spec["paths"][template][method.lower()]["requestBody"].get("required", False)
        if required and status < 400:
            accepted[f"{method} {template}"] = status
    assert not accepted, f"documented as required, yet no body is accepted: {accepted}"


def test_input_types_are_the_documented_ones(api):
    crew = api.create("/crews", {"name": "Typed Crew"})
    statuses = {
        "crew is_public=0": api.call("POST", "/crews", {"name": "x", "is_public": 0}, api.auth)[0],
        "crew is_public='yes'": api.call(
            "PATCH", f"/crews/{crew['id']}", {"is_public": "yes"}, api.auth
        )[0],
        "run tokens_used='5'": api.call(
            "POST", f"/crews/{crew['id']}/runs", {"tokens_used": "5"}, api.auth
        )[0],
        "run duration='1.5'": api.call(
            "POST", f"/crews/{crew['id']}/runs", {"duration": "1.5"}, api.auth
        )[0],
    }
    assert set(statuses.values()) == {422}, statuses
