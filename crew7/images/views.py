"""Token images: ``GET /images/crew/<id>.svg`` and ``/images/agent/<id>.svg``, and the
collections' own, ``/images/collection/<crews|agents>.svg``.

The ``image`` of every document points here unless ``CDN_URL`` is set; so does the
contract-level documents' unless their setting names another. Ids, errors,
ETag, Cache-Control, CORS and 304s are the metadata documents' (crew7/metadata/views.py);
an SVG also gets a policy that lets it run nothing.
"""

from flask import Response, abort, current_app, request
from flask_smorest import Blueprint

from crew7.metadata.views import REFRESH_HEADER, document_headers, etag_of, not_modified
from crew7.services import images as service
from crew7.services.cache import NOT_FOUND
from crew7.services.cards import collection_card
from crew7.services.contract import COLLECTIONS, contract_metadata
from crew7.services.metadata import parse_token_id

blp = Blueprint("images", __name__, url_prefix="/images", description="Token images (public)")

IMAGE_CONTENT_TYPE = "image/svg+xml"
# No scripts, no fetches: inline style attributes and data: images at most. The nginx
# front sends the same value for /images/ (crew7/front).
IMAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_SVG_RESPONSES = {
    "200": {
        "description": "The token's card",
        "content": {IMAGE_CONTENT_TYPE: {"schema": {"type": "string"}}},
    },
    "304": {"description": "Not modified (If-None-Match names the current ETag)"},
}


def image_headers(cache_control, etag):
    """The headers of an image response, before its content type (a fresh list)."""
    return document_headers(cache_control, etag) + [
        ("Content-Security-Policy", IMAGE_CSP),
        ("X-Content-Type-Options", "nosniff"),
    ]


def _image_response(body, etag=None):
    if body == NOT_FOUND:
        abort(404, "no such public token")
    etag = etag or etag_of(body)
    headers = image_headers(current_app.extensions["crew7.cache_control"], etag)
    if not_modified(request.headers.get("If-None-Match"), etag):
        return Response(status=304, headers=headers)
    # As it is, with no charset parameter: XML declares its own (UTF-8 by default).
    return Response(body, content_type=IMAGE_CONTENT_TYPE, headers=headers)


def _token_id(raw):
    value = parse_token_id(raw)
    if value is None:
        abort(404, "no such public token")
    return value


@blp.get("/crew/<token_id:token_id>.svg")
@blp.doc(responses=_SVG_RESPONSES)
def crew_image(token_id):
    """A crew's token image: an SVG card of its document (decimal id, or 64 hex digits)."""
    refresh = bool(request.headers.get(REFRESH_HEADER))
    return _image_response(service.serve_crew_image(_token_id(token_id), refresh=refresh))


@blp.get("/agent/<token_id:token_id>.svg")
@blp.doc(responses=_SVG_RESPONSES)
def agent_image(token_id):
    """An agent's token image: an SVG card of its document."""
    refresh = bool(request.headers.get(REFRESH_HEADER))
    return _image_response(service.serve_agent_image(_token_id(token_id), refresh=refresh))


_COLLECTION_IMAGES = "crew7.collection_images"


@blp.record_once
def _draw_collection_images(state):
    """Each app's collection cards and their ETags, drawn once when it registers (they
    depend on settings only, as the contract-level documents do)."""
    images = {}
    for collection in COLLECTIONS:
        card = collection_card(contract_metadata(state.app.config, collection), collection)
        body = card.encode()
        images[collection] = (body, etag_of(body))
    state.app.extensions[_COLLECTION_IMAGES] = images


@blp.get(f"/collection/<any({', '.join(COLLECTIONS)}):collection>.svg")
@blp.doc(responses=_SVG_RESPONSES)
def collection_image(collection):
    """A collection's image (crews or agents): the contract-level document's default."""
    body, etag = current_app.extensions[_COLLECTION_IMAGES][collection]
    return _image_response(body, etag)
