"""The API docs page (GET /docs): Swagger UI over /openapi.json from the app's own assets,
under a Content-Security-Policy of the app's origin only; and in a real browser."""

import http.client
import json
import re
import urllib.request
from html.parser import HTMLParser

import pytest

from crew7.docs.views import ASSETS, DOCS_CSP
from crew7.images.views import IMAGE_CSP
from tests.support.app import make_app

# Every place a page can name another resource.
_URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "poster", "srcset"}


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in _URL_ATTRIBUTES and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.fixture
def client(tmp_path, redis_server):
    app = make_app(
        f"sqlite:///{tmp_path / 'crew7.sqlite3'}", redis_server.url, CACHE_CHANGELOG_INTERVAL=0
    )
    return app.test_client()


def _policy(header):
    return {
        part.split()[0]: part.split()[1:] for part in (p.strip() for p in header.split(";")) if part
    }


def test_the_page_loads_only_the_apps_own_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    refs = _References()
    refs.feed(html)
    # No other origin anywhere in the page, not even in text; every reference a path here.
    assert not re.search(r"(?i)\b(https?:)?//", html), html
    assert refs.urls and all(url.startswith("/") for url in refs.urls), refs.urls
    # Scripts are files (the policy refuses inline ones), and each one is served.
    assert refs.inline_scripts == 0
    for url in refs.urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        asset.close()
    assert 'data-openapi-url="/openapi.json"' in html
    assert client.get("/openapi.json").status_code == 200


def test_the_policy_allows_the_apps_origin_only(client):
    r = client.get("/docs")
    assert r.headers["Content-Security-Policy"] == DOCS_CSP
    policy = _policy(DOCS_CSP)
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    for directive, sources in policy.items():
        # Nothing remote, no inline or evaluated script; data: for images only.
        assert not [s for s in sources if "//" in s or s.endswith(":") and s != "data:"]
        assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources, directive
        assert "data:" not in sources or directive == "img-src", directive
    assert policy["script-src"] == ["'self'"] and policy["connect-src"] == ["'self'"]


def test_assets_are_a_fixed_list(client):
    r = client.get("/docs/assets/swagger-ui-bundle.js")
    assert r.status_code == 200 and r.mimetype == "text/javascript"
    assert r.headers["Cache-Control"] == "public, max-age=3600"
    etag = r.headers["ETag"]
    r.close()
    again = client.get("/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    again.close()
    for name in ("LICENSE", "swagger-ui.js", "views.py", "..%2Fviews.py", "oauth2-redirect.html"):
        r = client.get(f"/docs/assets/{name}")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found", name
    for path in ("/docs/", "/docs/index.html", "/docs/assets/", "/docs/assets/docs.js/"):
        assert client.get(path).status_code == 404, path
    assert set(ASSETS) >= {"swagger-ui-bundle.js", "swagger-ui.css", "docs.js"}


def test_the_page_is_not_an_api_operation(client):
    spec = client.get("/openapi.json").get_json()
    assert not [path for path in spec["paths"] if path.startswith("/docs")]


def test_nginx_sends_the_apps_docs_policy_for_the_docs_page_only():
    """deploy/nginx.conf (rendered from crew7/front): the docs policy is DOCS_CSP, on /docs
    and its assets only; Swagger UI's script and styles are compressed like the JSON."""
    from tests.support.nginx import NGINX_CONF

    text = NGINX_CONF.read_text()
    block = re.search(r"map \$uri \$crew7_csp \{\n(.*?)\n    \}", text, re.DOTALL)
    policies = dict(re.findall(r'^\s*(\S+)\s+"(.*?)";$', block.group(1), re.MULTILINE))
    assert policies == {
        "default": "default-src 'none'; frame-ancestors 'none'",
        "~^/images/": IMAGE_CSP,
        "~^/docs(/|$)": DOCS_CSP,
    }
    assert re.search(r"^\s*add_header Content-Security-Policy \$crew7_csp always;$", text, re.M)
    (types,) = re.findall(r"^\s*gzip_types ([^;]*);", text, re.MULTILINE)
    assert {"text/css", "text/javascript", "application/json"} <= set(types.split())


# --- for real: gunicorn, nginx in front of it, a browser ----------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_server):
    """gunicorn (1 worker) serving the app on an empty SQLite file: the page and the
    OpenAPI document read no data."""
    from tests.support.gunicorn import GunicornServer, served_env

    folder = tmp_path_factory.mktemp("docs")
    env = served_env(
        f"sqlite:///{folder / 'crew7.sqlite3'}",
        redis_server.url,
        CACHE_CHANGELOG_INTERVAL=0,
        BEHIND_PROXY=True,
    )
    with GunicornServer(env, workers=1) as server:
        yield server


@pytest.fixture(scope="module")
def front_port(served):
    """nginx with the front's rendered config in front of that gunicorn."""
    from tests.support.nginx import running_nginx

    with running_nginx(f"127.0.0.1:{served.port}") as port:
        yield port


def _get(port, path):
    """(status, headers as received, body) for a gzip-accepting GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        return response.status, response.msg, response.read()
    finally:
        conn.close()


@pytest.mark.gunicorn
@pytest.mark.nginx
def test_the_docs_page_and_its_assets_through_nginx(served, front_port):
    """/docs reaches the app (the API's location and rate limit) under the app's docs
    policy, sent once; the script is compressed; other paths keep the JSON policy."""
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/docs.js"):
        status, headers, data = _get(front_port, path)
        assert status == 200, (path, data[:200])
        assert headers.get_all("Content-Security-Policy") == [DOCS_CSP], path
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"], path
        assert headers["X-Frame-Options"] == "DENY"
    status, headers, data = _get(front_port, "/docs/assets/swagger-ui-bundle.js")
    assert headers["Content-Encoding"] == "gzip" and len(data) < 1_000_000
    json_policy = "default-src 'none'; frame-ancestors 'none'"
    for path, policy in (
        ("/docsx", json_policy),
        ("/openapi.json", json_policy),
        ("/docs/assets/nope.js", DOCS_CSP),
    ):
        status, headers, data = _get(front_port, path)
        assert headers.get_all("Content-Security-Policy") == [policy], path


@pytest.mark.gunicorn
@pytest.mark.parametrize("through", ["gunicorn", pytest.param("nginx", marks=pytest.mark.nginx)])
def test_a_browser_renders_every_operation(served, request, through):
    """Headless Chromium opens /docs (straight from gunicorn, then through nginx and its
    policy), runs Swagger UI and lists every operation; no network needed: every asset
    comes from 127.0.0.1."""
    from tests.support.browser import chromium_binary, dump_dom

    chromium_binary()
    if through == "nginx":
        url = f"http://127.0.0.1:{request.getfixturevalue('front_port')}"
    else:
        url = served.url
    dom = dump_dom(url + "/docs", budget_ms=10_000)
    with urllib.request.urlopen(served.url + "/openapi.json", timeout=10) as answer:
        spec = json.loads(answer.read())
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert "/metadata/crew/{token_id}" in rendered, dom[-3000:]
    assert "/metadata/contract/{collection}" in rendered
    assert rendered == set(spec["paths"])
