"""Token images as a browser shows them: gunicorn serves a crew's and an agent's card, and
headless Chromium (tests/support/browser.py) renders each URL to a PNG of the card's
size that is not blank, with the name drawn (the name's band is not one colour).

Bounded: each browser run has a timeout; gunicorn is stopped by its pid."""

import json

import pytest

from tests.support.app import database_url_for, fresh_users
from tests.support.browser import chromium_binary, distinct_colours, png_size, screenshot
from tests.support.gunicorn import GunicornServer, served_env
from tests.support.raw_http import request as http
from tests.support.servers import RedisServer

pytestmark = pytest.mark.gunicorn

# The title line of a card (crew7/services/cards.py draws the name at y=396, 38 px).
NAME_BAND = (36, 362, 564, 404)


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    chromium_binary()
    folder = tmp_path_factory.mktemp("crew7-cards")
    own_redis = RedisServer.start()
    gunicorn = None
    try:
        database_url = database_url_for("sqlite", folder, request)
        (alice,) = fresh_users(database_url, own_redis.url, "alice")
        gunicorn = GunicornServer(served_env(database_url, own_redis.url), workers=1)
        auth = {"Authorization": f"Bearer {alice['token']}"}

        def write(method, path, data):
            status, _, answer = http(gunicorn.port, method, path, data, auth)
            assert status in (200, 201), answer
            return json.loads(answer)

        crew = write("POST", "/crews", {"name": "Deep Research Crew", "process": "sequential"})
        agent = write(
            "POST",
            f"/crews/{crew['id']}/agents",
            {"name": "Ada", "role": "Researcher", "tools": ["web_search", "pdf_reader"]},
        )
        for status in ("succeeded", "succeeded", "failed"):
            write("POST", f"/crews/{crew['id']}/runs", {"status": status})
        yield gunicorn.port, crew["id"], agent["id"], folder
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        own_redis.close()


def _band_colours(path, box):
    from PIL import Image  # noqa: PLC0415 (only the picture tests need Pillow)

    with Image.open(path) as image:
        band = image.convert("RGB").crop(box)
        return len(band.getcolors(maxcolors=1 << 20) or [])


@pytest.mark.parametrize("kind", ["crew", "agent", "collection"])
def test_a_card_renders_in_a_browser(served, kind):
    port, crew_id, agent_id, folder = served
    ident = {"crew": crew_id, "agent": agent_id, "collection": "crews"}[kind]
    url = f"http://127.0.0.1:{port}/images/{kind}/{ident}.svg"
    status, headers, _ = http(port, "GET", f"/images/{kind}/{ident}.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    png = screenshot(url, folder / f"{kind}.png", 600, 600)
    assert png_size(png) == (600, 600)
    assert distinct_colours(png) >= 32  # art, text and a gradient, not a blank page
    assert _band_colours(png, NAME_BAND) >= 8  # the name is drawn (antialiased glyphs)
