"""The change feed's query and page (``GET /metadata/updates``, ``crew7.services.feed``)."""

from marshmallow import Schema, fields, validate

from crew7.schemas.api import QueryInteger
from crew7.services.feed import CURSOR_PATTERN, MAX_LIMIT

DEFAULT_LIMIT = 100


class FeedQuerySchema(Schema):
    # The pattern is the spelling only: a cursor older than the retention is 410.
    after = fields.String(
        validate=validate.Regexp(CURSOR_PATTERN, error="malformed cursor"),
        metadata={
            "description": "A cursor from an earlier page (next_cursor or an event's cursor); "
            "omitted: from the oldest change kept"
        },
    )
    limit = QueryInteger(
        load_default=DEFAULT_LIMIT,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Events per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"},
    )


class FeedEventSchema(Schema):
    cursor = fields.String(metadata={"description": "Resume after this event"})
    event = fields.String(
        validate=validate.OneOf(["MetadataUpdate", "BatchMetadataUpdate"]),
        metadata={"description": "The ERC-4906 event"},
    )
    token_type = fields.String(validate=validate.OneOf(["crew", "agent"]))
    token_id = fields.Integer(metadata={"description": "MetadataUpdate: the token"})
    from_token_id = fields.Integer(metadata={"description": "BatchMetadataUpdate: first token"})
    to_token_id = fields.Integer(metadata={"description": "BatchMetadataUpdate: last token"})
    at = fields.String(metadata={"description": "When the change was written (RFC 3339, UTC)"})


class FeedPageSchema(Schema):
    events = fields.List(fields.Nested(FeedEventSchema))
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "Pass as `after` next time (null: nothing yet, start over)"},
    )
    has_more = fields.Boolean(metadata={"description": "More events wait: ask again at once"})
