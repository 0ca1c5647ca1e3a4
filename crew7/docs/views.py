"""``GET /docs``: Swagger UI rendering /openapi.json, every asset served by the app.

Swagger UI's files come from the pinned ``flask-swagger-ui`` package (its ``dist``
folder; its blueprint is not used: that page starts Swagger UI from an inline script),
the starter script from ``static/``. Nothing is loaded from another origin, and the
page's Content-Security-Policy allows the app's own origin only.
"""

from importlib.resources import files

from flask import Blueprint, Response, abort, send_from_directory, url_for
from markupsafe import escape

bp = Blueprint("docs", __name__)

# Everything from the app's own origin; beyond that Swagger UI needs only data: images
# (the icons in its CSS). Its components set styles through the DOM, which the policy
# allows without 'unsafe-inline'. nginx sends the same policy for /docs
# (crew7/front/nginx.conf.in, @docs_csp@).
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SWAGGER_UI_DIST = files("flask_swagger_ui").joinpath("dist")
STATIC = files(__package__).joinpath("static")
# Asset name -> the folder it is served from; any other name is 404.
ASSETS = {
    "swagger-ui-bundle.js": SWAGGER_UI_DIST,
    "swagger-ui.css": SWAGGER_UI_DIST,
    "index.css": SWAGGER_UI_DIST,
    "favicon-32x32.png": SWAGGER_UI_DIST,
    "favicon-16x16.png": SWAGGER_UI_DIST,
    "docs.js": STATIC,
}
ASSET_MAX_AGE = 3600

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>crew7 API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="stylesheet" href="{index_css}">
  <link rel="icon" type="image/png" sizes="32x32" href="{icon32}">
  <link rel="icon" type="image/png" sizes="16x16" href="{icon16}">
</head>
<body data-openapi-url="{openapi}">
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{starter}"></script>
</body>
</html>
"""


def _asset(name):
    return escape(url_for("docs.asset", name=name))


@bp.get("/docs")
def docs_page():
    """The Swagger UI page for this app's OpenAPI document."""
    page = _PAGE.format(
        css=_asset("swagger-ui.css"),
        index_css=_asset("index.css"),
        icon32=_asset("favicon-32x32.png"),
        icon16=_asset("favicon-16x16.png"),
        bundle=_asset("swagger-ui-bundle.js"),
        starter=_asset("docs.js"),
        openapi=escape(url_for("api-docs.openapi_json")),
    )
    return Response(
        page,
        mimetype="text/html",
        headers={
            "Content-Security-Policy": DOCS_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


@bp.get("/docs/assets/<name>")
def asset(name):
    """One of Swagger UI's files, or the page's starter script."""
    folder = ASSETS.get(name)
    if folder is None:
        abort(404)
    response = send_from_directory(str(folder), name, max_age=ASSET_MAX_AGE)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
