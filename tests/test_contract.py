"""Contract-level metadata (GET /metadata/contract/<collection>): built once per app from
the settings, served with the token documents' headers, through Flask and gunicorn."""

import json
from xml.etree import ElementTree

import pytest
import redis

from crew7 import ConfigError
from crew7.images.views import IMAGE_CSP
from crew7.metadata.views import etag_of
from crew7.services import contract as contract_service
from tests.support.app import make_app
from tests.support.helpers import commands_between, commandstats
from tests.support.raw_http import request

ADDRESS = "0x" + "Cd" * 20
ROYALTY = {"seller_fee_basis_points": 250, "fee_recipient": ADDRESS}


@pytest.fixture
def contract_app(tmp_path, redis_server):
    """``contract_app(**settings)``: an app on an empty SQLite file (the documents read no
    database) and the session's Redis."""

    def build(**settings):
        return make_app(
            f"sqlite:///{tmp_path / 'crew7.sqlite3'}",
            redis_server.url,
            CACHE_CHANGELOG_INTERVAL=0,
            **settings,
        )

    return build


def _document(response):
    assert response.status_code == 200, response.get_data()[:300]
    assert response.content_type == "application/json"
    return json.loads(response.get_data())


def test_documents_from_the_defaults_and_the_settings(contract_app):
    app = contract_app(BASE_URL="https://crew7.example/", CONTRACT_AGENTS=ROYALTY)
    client = app.test_client()
    crews = _document(client.get("/metadata/contract/crews"))
    assert crews == {
        "name": "crew7 Crews",
        "description": crews["description"],
        "image": "https://crew7.example/images/collection/crews.svg",
        "external_link": "https://crew7.example/crews",
    }
    agents = _document(client.get("/metadata/contract/agents"))
    assert agents["name"] == "crew7 Agents"
    assert agents["seller_fee_basis_points"] == 250 and agents["fee_recipient"] == ADDRESS
    # Unset optional fields are absent, never null.
    assert None not in crews.values() and "banner_image" not in agents


def test_headers_etag_and_304_as_for_the_token_documents(contract_app):
    app = contract_app(METADATA_TTL=120)
    client = app.test_client()
    r = client.get("/metadata/contract/crews")
    assert r.headers["ETag"] == etag_of(r.get_data())
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Cache-Control"] == (
        "public, max-age=120, stale-while-revalidate=120, stale-if-error=86400"
    )
    etag = r.headers["ETag"]
    for sent in (etag, f'"other", {etag}', "*"):
        again = client.get("/metadata/contract/crews", headers={"If-None-Match": sent})
        assert again.status_code == 304 and again.get_data() == b"", sent
        assert again.headers["ETag"] == etag
        assert again.headers["Access-Control-Allow-Origin"] == "*"
    other = client.get("/metadata/contract/crews", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and other.get_data() == r.get_data()
    # Each collection its own bytes, hence its own ETag.
    assert client.get("/metadata/contract/agents").headers["ETag"] != etag


def test_built_once_per_app_without_redis(contract_app, redis_server, monkeypatch):
    app = contract_app()
    client = app.test_client()
    first = client.get("/metadata/contract/agents").get_data()

    def fail(config):
        raise AssertionError("rebuilt on a request")

    monkeypatch.setattr(contract_service, "render_contract_documents", fail)
    monitor = redis.Redis.from_url(redis_server.url)
    before = commandstats(monitor)
    for _ in range(5):
        assert client.get("/metadata/contract/agents").get_data() == first
    assert commands_between(monitor, before, commandstats(monitor)) == {}
    monitor.close()


@pytest.mark.parametrize(
    "path",
    [
        "/metadata/contract/tokens",
        "/metadata/contract/Crews",
        "/metadata/contract/crews/",
        "/metadata/contract/crews/1",
        "/metadata/contract/",
        "/metadata/contract",
    ],
)
def test_unknown_collections_are_the_apis_json_404(contract_app, path):
    r = contract_app().test_client().get(path)
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "not_found" and "Location" not in r.headers


def test_a_bad_setting_fails_the_start_naming_it(contract_app):
    with pytest.raises(ConfigError, match=r"CONTRACT_CREWS\['fee_recipient'\]"):
        contract_app(CONTRACT_CREWS={"seller_fee_basis_points": 5, "fee_recipient": "0x12"})
    with pytest.raises(ConfigError, match="CONTRACT_AGENTS: unknown field 'royalties'"):
        contract_app(CONTRACT_AGENTS={"royalties": 5})


def test_environment_settings_stay_with_their_app(contract_app, monkeypatch):
    # One field at a time (Flask writes it into the setting's mapping), then the next app
    # built without it must not inherit it from the mapping the first one changed.
    monkeypatch.setenv("CREW7_CONTRACT_CREWS__name", "Env Crews")
    monkeypatch.setenv("CREW7_CONTRACT_AGENTS", json.dumps(ROYALTY))
    first = contract_app().test_client()
    assert _document(first.get("/metadata/contract/crews"))["name"] == "Env Crews"
    assert _document(first.get("/metadata/contract/agents"))["fee_recipient"] == ADDRESS
    monkeypatch.delenv("CREW7_CONTRACT_CREWS__name")
    monkeypatch.delenv("CREW7_CONTRACT_AGENTS")
    second = contract_app().test_client()
    assert _document(second.get("/metadata/contract/crews"))["name"] == "crew7 Crews"
    assert "fee_recipient" not in _document(second.get("/metadata/contract/agents"))


def test_documented_in_openapi(contract_app):
    spec = contract_app().test_client().get("/openapi.json").get_json()
    operation = spec["paths"]["/metadata/contract/{collection}"]
    (parameter,) = operation["parameters"]
    assert parameter["schema"] == {"type": "string", "enum": ["crews", "agents"]}
    schema = spec["components"]["schemas"]["ContractMetadata"]
    assert set(schema["required"]) == {"name", "description", "image", "external_link"}
    assert set(schema["properties"]) == set(contract_service.FIELDS)
    assert schema["properties"]["seller_fee_basis_points"]["maximum"] == 10_000


@pytest.mark.gunicorn
def test_through_gunicorn_every_worker_serves_the_same_bytes(tmp_path, redis_server):
    from tests.support.gunicorn import GunicornServer, served_env

    env = served_env(
        f"sqlite:///{tmp_path / 'crew7.sqlite3'}",
        redis_server.url,
        CACHE_CHANGELOG_INTERVAL=0,
        CONTRACT_CREWS=json.dumps({"name": "Served Crews", **ROYALTY}),
    )
    env["CREW7_CONTRACT_AGENTS__seller_fee_basis_points"] = "0"
    with GunicornServer(env, workers=2) as server:
        answers = [request(server.port, "GET", "/metadata/contract/crews") for _ in range(8)]
        for status, headers, data in answers:
            assert status == 200, data[:300]
            assert data == answers[0][2] and headers["etag"] == etag_of(data)
            assert headers["access-control-allow-origin"] == "*"
            assert headers["cache-control"].startswith("public, max-age=300,")
        document = json.loads(answers[0][2])
        assert document["name"] == "Served Crews" and document["fee_recipient"] == ADDRESS
        status, headers, data = request(
            server.port,
            "GET",
            "/metadata/contract/crews",
            headers={"If-None-Match": headers["etag"]},
        )
        assert status == 304 and data == b""
        status, _, data = request(server.port, "GET", "/metadata/contract/agents")
        assert status == 200 and json.loads(data)["seller_fee_basis_points"] == 0
        status, _, data = request(server.port, "GET", "/metadata/contract/nope")
        assert status == 404 and json.loads(data)["error"]["code"] == "not_found"


@pytest.mark.gunicorn
@pytest.mark.nginx
def test_through_the_front_the_apps_bytes_and_headers(tmp_path, redis_server):
    """nginx's /metadata/ location hands these paths to the app (the front's Redis hit
    path serves token documents only): the same bytes, ETag and 304, plus nginx's headers."""
    from tests.support.gunicorn import GunicornServer, served_env
    from tests.support.nginx import running_nginx

    env = served_env(
        f"sqlite:///{tmp_path / 'crew7.sqlite3'}", redis_server.url, CACHE_CHANGELOG_INTERVAL=0
    )
    with (
        GunicornServer(env, workers=1) as server,
        running_nginx(f"127.0.0.1:{server.port}") as port,
    ):
        direct = request(server.port, "GET", "/metadata/contract/agents")
        status, headers, data = request(port, "GET", "/metadata/contract/agents")
        assert status == 200 and data == direct[2]
        assert headers["etag"] == direct[1]["etag"]
        assert headers["access-control-allow-origin"] == "*"
        assert headers["cache-control"] == direct[1]["cache-control"]
        assert headers["x-content-type-options"] == "nosniff"
        status, headers, data = request(
            port, "GET", "/metadata/contract/agents", headers={"If-None-Match": headers["etag"]}
        )
        assert status == 304 and data == b""
        status, headers, data = request(port, "GET", "/metadata/contract/nope")
        assert status == 404 and json.loads(data)["error"]["code"] == "not_found"


def test_the_default_image_is_the_collections_card(contract_app):
    """The default ``image`` is served here: an SVG card of the collection's document,
    its text escaped, with the token images' headers and 304s; other names are 404s."""
    app = contract_app(
        BASE_URL="https://crew7.example/",
        CONTRACT_AGENTS={"name": "<script>x</script>", "description": "]]> &amp; <svg/>"},
    )
    client = app.test_client()
    for collection in ("crews", "agents"):
        document = _document(client.get(f"/metadata/contract/{collection}"))
        path = f"/images/collection/{collection}.svg"
        assert document["image"] == f"https://crew7.example{path}"
        answer = client.get(path)
        assert answer.status_code == 200 and answer.content_type == "image/svg+xml"
        assert answer.headers["Content-Security-Policy"] == IMAGE_CSP
        svg = ElementTree.fromstring(answer.get_data())
        texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
        assert document["name"] in texts
        assert not [e for e in svg.iter() if e.tag.endswith("script")]
        again = client.get(path, headers={"If-None-Match": answer.headers["ETag"]})
        assert again.status_code == 304 and again.headers["ETag"] == answer.headers["ETag"]
    for path in ("/images/collection/users.svg", "/images/collection/crews.png"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.is_json, path
