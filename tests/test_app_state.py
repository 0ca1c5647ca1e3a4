"""Each app keeps its own state: two apps in one process with different settings."""

import json
import threading

from tests.support.app import make_app


def test_two_apps_keep_their_own_api_document_and_headers(database_url, redis_server):
    first = make_app(database_url, redis_server.url, API_TITLE="first", METADATA_TTL=11)
    second = make_app(database_url, redis_server.url, API_TITLE="second", METADATA_TTL=22)
    for app, title in ((first, "first"), (second, "second")):
        spec = json.loads(app.test_client().get("/openapi.json").get_data())
        assert spec["info"]["title"] == title
        assert "/metadata/crew/{token_id}" in spec["paths"]
    assert first.extensions["crew7.api"] is not second.extensions["crew7.api"]
    assert first.extensions["crew7.cache_control"].startswith("public, max-age=11,")
    assert second.extensions["crew7.cache_control"].startswith("public, max-age=22,")


def test_creating_an_app_starts_no_warming(database_url, redis_server):
    before = {t.name for t in threading.enumerate()}
    make_app(database_url, redis_server.url, TESTING=False, CACHE_WARM_ON_START=True)
    assert "crew7-cache-warming" not in {t.name for t in threading.enumerate()} - before
