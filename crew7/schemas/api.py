"""API input and output. Input schemas reject unknown fields (marshmallow's default), and
every input string is a ``Text``."""

import re
from datetime import UTC

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from crew7.models import PROCESSES, RUN_STATUSES

_name = validate.Length(min=1, max=120)

# PostgreSQL refuses NUL in text (SQLite would store it); a surrogate on its own, which a
# JSON escape can spell, has no UTF-8 encoding at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Text(fields.String):
    """A JSON string that both databases store as sent: one rule for every input string."""

    default_error_messages = {
        "nul": "Must not contain the NUL character (\\u0000).",
        "surrogate": "Must not contain unpaired surrogates (\\ud800-\\udfff): not valid Unicode.",
    }

    def __init__(self, **kwargs):
        # Documented: no NUL. Lone surrogates are not Unicode at all; a pattern naming them
        # is not a valid regex for many validators (Rust's regex, hence schemathesis).
        metadata = {"pattern": "^[^\\u0000]*$", **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        result = super()._deserialize(value, attr, data, **kwargs)
        found = _UNSTORABLE.search(result)
        if found:
            raise self.make_error("nul" if found.group() == "\x00" else "surrogate")
        return result


class UTCDateTime(fields.DateTime):
    """RFC 3339 in and out. Input with an offset is converted to UTC (none means UTC);
    values are stored naive in UTC and sent with their offset."""

    default_error_messages = {
        "out_of_range": "Must fall between years 1 and 9999 once converted to UTC.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        result = super()._deserialize(value, attr, data, **kwargs)
        if result.tzinfo is not None:
            try:
                result = result.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:
                raise self.make_error("out_of_range") from None
        return result

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return super()._serialize(value, attr, obj, **kwargs)


class StrictBoolean(fields.Boolean):
    """JSON true or false only (not 1, "yes" or "true")."""

    def __init__(self, **kwargs):
        super().__init__(truthy={True}, falsy={False}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictInteger(fields.Integer):
    """A JSON integer (not "5", 5.5 or true)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictFloat(fields.Float):
    """A JSON number (not "5" or true)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class CrewCreateSchema(Schema):
    name = Text(required=True, validate=_name)
    description = Text(validate=validate.Length(max=2000), load_default="")
    is_public = StrictBoolean(load_default=True)
    process = Text(validate=validate.OneOf(PROCESSES), load_default="sequential")


class CrewUpdateSchema(Schema):
    name = Text(validate=_name)
    description = Text(validate=validate.Length(max=2000))
    is_public = StrictBoolean()
    process = Text(validate=validate.OneOf(PROCESSES))


class CrewStatsSchema(Schema):
    total_runs = fields.Integer()
    succeeded_runs = fields.Integer()
    failed_runs = fields.Integer()
    success_rate = fields.Float(allow_none=True)
    average_duration = fields.Float(allow_none=True)
    last_run_at = UTCDateTime(allow_none=True)


class CrewSchema(Schema):
    id = fields.Integer()
    owner = fields.Function(lambda crew: crew.owner.name)
    name = fields.String()
    description = fields.String()
    is_public = fields.Boolean()
    process = fields.String()
    created_at = UTCDateTime()
    updated_at = UTCDateTime()
    stats = fields.Nested(CrewStatsSchema, allow_none=True)


class AgentCreateSchema(Schema):
    name = Text(required=True, validate=_name)
    role = Text(required=True, validate=_name)
    goal = Text(validate=validate.Length(max=2000), load_default="")
    backstory = Text(validate=validate.Length(max=4000), load_default="")
    llm = Text(validate=validate.Length(min=1, max=80), load_default="gpt-4o")
    tools = fields.List(
        Text(validate=validate.Length(min=1, max=80)),
        validate=validate.Length(max=50),
        load_default=list,
    )


class AgentUpdateSchema(Schema):
    name = Text(validate=_name)
    role = Text(validate=_name)
    goal = Text(validate=validate.Length(max=2000))
    backstory = Text(validate=validate.Length(max=4000))
    llm = Text(validate=validate.Length(min=1, max=80))
    tools = fields.List(
        Text(validate=validate.Length(min=1, max=80)), validate=validate.Length(max=50)
    )


class AgentSchema(Schema):
    id = fields.Integer()
    crew_id = fields.Integer()
    name = fields.String()
    role = fields.String()
    goal = fields.String()
    backstory = fields.String()
    llm = fields.String()
    tools = fields.List(fields.String())
    created_at = UTCDateTime()
    updated_at = UTCDateTime()


def _check_run_times(data):
    started, finished = data.get("started_at"), data.get("finished_at")
    if started and finished and finished < started:
        raise ValidationError("must not be before started_at", "finished_at")


class RunCreateSchema(Schema):
    status = Text(validate=validate.OneOf(RUN_STATUSES), load_default="queued")
    started_at = UTCDateTime()
    finished_at = UTCDateTime()
    duration = StrictFloat(validate=validate.Range(min=0, max=10**7))
    tokens_used = StrictInteger(validate=validate.Range(min=0, max=2**31 - 1), load_default=0)

    @validates_schema
    def check_times(self, data, **kwargs):
        _check_run_times(data)


class RunUpdateSchema(Schema):
    status = Text(validate=validate.OneOf(RUN_STATUSES))
    started_at = UTCDateTime()
    finished_at = UTCDateTime()
    duration = StrictFloat(validate=validate.Range(min=0, max=10**7))
    tokens_used = StrictInteger(validate=validate.Range(min=0, max=2**31 - 1))

    @validates_schema
    def check_times(self, data, **kwargs):
        _check_run_times(data)


class RunSchema(Schema):
    id = fields.Integer()
    crew_id = fields.Integer()
    status = fields.String()
    started_at = UTCDateTime(allow_none=True)
    finished_at = UTCDateTime(allow_none=True)
    duration = fields.Float(allow_none=True)
    tokens_used = fields.Integer()
    created_at = UTCDateTime()


class QueryInteger(fields.Integer):
    """A number in a query string, in ASCII decimal without sign or leading zero: int()
    alone would also read "１", "+1", " 1" and "1_0"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not re.fullmatch("0|[1-9][0-9]*", value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class PageQuerySchema(Schema):
    page = QueryInteger(load_default=1, validate=validate.Range(min=1, max=10**6))
    # Larger values are capped at PAGE_SIZE_MAX.
    per_page = QueryInteger(load_default=None, validate=validate.Range(min=1, max=10_000))


class _Page(Schema):
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


class CrewPageSchema(_Page):
    items = fields.List(fields.Nested(CrewSchema))


class RunPageSchema(_Page):
    items = fields.List(fields.Nested(RunSchema))
