"""Public NFT metadata endpoints: the hottest code in the service.

A hit is one Redis round trip; the stored bytes are returned as they are.
"""

import hashlib

from flask import Response, abort, current_app, jsonify, request
from flask_smorest import Blueprint

from crew7.errors import error_response
from crew7.extensions import TOKEN_ID_PATTERN
from crew7.schemas.feed import FeedPageSchema, FeedQuerySchema
from crew7.schemas.metadata import AgentMetadataSchema, CrewMetadataSchema
from crew7.services import feed
from crew7.services import metadata as service
from crew7.services.cache import NOT_FOUND

blp = Blueprint(
    "metadata", __name__, url_prefix="/metadata", description="NFT metadata documents (public)"
)

MAX_BATCH = 100
# Sent by the front (crew7/front) when XFetch fires there: refresh this document early.
# "counted": the front has counted the crew's view already. nginx replaces a client's
# own header of this name, so only the front sets it; a refresh is single-flight anyway.
REFRESH_HEADER = "X-Crew7-Refresh"


def etag_of(body):
    """A strong ETag: the MD5 of the bytes served (a digest, not a signature), which a
    front that serves the same bytes from Redis computes the same way."""
    return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'


def not_modified(if_none_match, etag):
    """Whether an If-None-Match header value names ``etag`` (or is ``*``)."""
    if not if_none_match:
        return False
    return if_none_match.strip() == "*" or etag in (t.strip() for t in if_none_match.split(","))


def document_headers(cache_control, etag):
    """The headers of a document response, before its content type (a fresh list)."""
    return [
        ("Access-Control-Allow-Origin", "*"),
        ("Cache-Control", cache_control),
        ("ETag", etag),
    ]


@blp.record_once
def _derive_headers(state):
    """Each app's Cache-Control, from its METADATA_TTL, built once when it registers."""
    ttl = state.app.config["METADATA_TTL"]
    state.app.extensions["crew7.cache_control"] = (
        f"public, max-age={ttl}, stale-while-revalidate={ttl}, stale-if-error=86400"
    )


def _document_response(body):
    if body == NOT_FOUND:
        abort(404, "no such public token")
    etag = etag_of(body)
    headers = document_headers(current_app.extensions["crew7.cache_control"], etag)
    if not_modified(request.headers.get("If-None-Match"), etag):
        return Response(status=304, headers=headers)
    return Response(body, mimetype="application/json", headers=headers)


def _token_id(raw):
    value = service.parse_token_id(raw)
    if value is None:
        abort(404, "no such public token")
    return value


@blp.get("/crew/<token_id:token_id>")
@blp.alt_response(200, schema=CrewMetadataSchema, description="The crew's document")
def crew_metadata(token_id):
    """A crew's NFT metadata (decimal id, or ERC-1155's 64-hex-digit form)."""
    refresh = request.headers.get(REFRESH_HEADER)
    body = service.serve_crew(
        _token_id(token_id), count_view=refresh != "counted", refresh=bool(refresh)
    )
    return _document_response(body)


@blp.get("/agent/<token_id:token_id>")
@blp.alt_response(200, schema=AgentMetadataSchema, description="The agent's document")
def agent_metadata(token_id):
    """An agent's NFT metadata."""
    refresh = bool(request.headers.get(REFRESH_HEADER))
    body = service.serve_agent(_token_id(token_id), refresh=refresh)
    return _document_response(body)


@blp.get("/crew/<token_id:token_id>/agents")
@blp.alt_response(200, schema=AgentMetadataSchema(many=True), description="Agents' documents")
def crew_agents_metadata(token_id):
    """The documents of a crew's agents, as a list."""
    refresh = bool(request.headers.get(REFRESH_HEADER))
    body = service.serve_crew_agents(_token_id(token_id), refresh=refresh)
    return _document_response(body)


_ONE_ID = f"({TOKEN_ID_PATTERN})"


@blp.get("/crews")
@blp.doc(
    parameters=[
        {
            "name": "ids",
            "in": "query",
            "required": True,
            "description": (
                f"Comma-separated crew ids, at least 1 and at most {MAX_BATCH}: each decimal "
                "without sign or leading zero, or 64 lowercase hex digits (ERC-1155)"
            ),
            "schema": {
                "type": "string",
                "pattern": f"^{_ONE_ID}(,{_ONE_ID}){{0,{MAX_BATCH - 1}}}$",
            },
        }
    ],
    responses={
        "200": {
            "description": "Documents in request order; null for an unknown or private id",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {
                            "nullable": True,
                            "allOf": [{"$ref": "#/components/schemas/CrewMetadata"}],
                        },
                    }
                }
            },
        }
    },
)
def crews_metadata():
    """Many crews' documents in request order; null for an unknown or private id."""
    raw = request.args.get("ids", "")
    parts = raw.split(",") if raw else []
    if not parts:
        abort(400, "ids is required: a comma-separated list of crew ids")
    if len(parts) > MAX_BATCH:
        abort(400, f"at most {MAX_BATCH} ids per request")
    for part in parts:
        if not service.is_token_id(part):
            abort(400, f"malformed id {part[:80]!r}")
    ids = [service.parse_token_id(part) for part in parts]
    body = service.serve_crews(ids)
    return _document_response(body)


@blp.get("/updates")
@blp.arguments(FeedQuerySchema, location="query", error_status_code=400)
@blp.response(200, FeedPageSchema)
@blp.alt_response(
    410,
    description="The cursor is older than the retention: start again "
    "from error.oldest_cursor (null when nothing is kept)",
)
def metadata_updates(args):
    """Changes to public documents in commit order, as ERC-4906 events, after a cursor
    (see the README's "Change feed")."""
    try:
        page = feed.read_feed(args.get("after"), args["limit"])
    except feed.BadCursor:
        abort(400, "malformed cursor: pass a cursor the feed returned")
    except feed.CursorExpired as exc:
        return error_response(
            410,
            "cursor older than the feed's retention: start again from oldest_cursor",
            extra={"oldest_cursor": exc.oldest},
        )
    response = jsonify(events=page.events, next_cursor=page.next_cursor, has_more=page.has_more)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "no-store"
    return response
