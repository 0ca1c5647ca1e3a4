"""API input and output. Input schemas reject unknown fields (marshmallow's default)."""

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from crew7.models import PROCESSES, RUN_STATUSES

_name = validate.Length(min=1, max=120)


class CrewCreateSchema(Schema):
    name = fields.String(required=True, validate=_name)
    description = fields.String(validate=validate.Length(max=2000), load_default="")
    is_public = fields.Boolean(load_default=True)
    process = fields.String(validate=validate.OneOf(PROCESSES), load_default="sequential")


class CrewUpdateSchema(Schema):
    name = fields.String(validate=_name)
    description = fields.String(validate=validate.Length(max=2000))
    is_public = fields.Boolean()
    process = fields.String(validate=validate.OneOf(PROCESSES))


class CrewStatsSchema(Schema):
    total_runs = fields.Integer()
    succeeded_runs = fields.Integer()
    failed_runs = fields.Integer()
    success_rate = fields.Float(allow_none=True)
    average_duration = fields.Float(allow_none=True)
    last_run_at = fields.DateTime(allow_none=True)


class CrewSchema(Schema):
    id = fields.Integer()
    owner = fields.Function(lambda crew: crew.owner.name)
    name = fields.String()
    description = fields.String()
    is_public = fields.Boolean()
    process = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    stats = fields.Nested(CrewStatsSchema, allow_none=True)


class AgentCreateSchema(Schema):
    name = fields.String(required=True, validate=_name)
    role = fields.String(required=True, validate=_name)
    goal = fields.String(validate=validate.Length(max=2000), load_default="")
    backstory = fields.String(validate=validate.Length(max=4000), load_default="")
    llm = fields.String(validate=validate.Length(min=1, max=80), load_default="gpt-4o")
    tools = fields.List(
        fields.String(validate=validate.Length(min=1, max=80)),
        validate=validate.Length(max=50),
        load_default=list,
    )


class AgentUpdateSchema(Schema):
    name = fields.String(validate=_name)
    role = fields.String(validate=_name)
    goal = fields.String(validate=validate.Length(max=2000))
    backstory = fields.String(validate=validate.Length(max=4000))
    llm = fields.String(validate=validate.Length(min=1, max=80))
    tools = fields.List(
        fields.String(validate=validate.Length(min=1, max=80)), validate=validate.Length(max=50)
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
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


def _check_run_times(data):
    started, finished = data.get("started_at"), data.get("finished_at")
    if started and finished and finished < started:
        raise ValidationError("must not be before started_at", "finished_at")


class RunCreateSchema(Schema):
    status = fields.String(validate=validate.OneOf(RUN_STATUSES), load_default="queued")
    started_at = fields.NaiveDateTime()
    finished_at = fields.NaiveDateTime()
    duration = fields.Float(validate=validate.Range(min=0, max=10**7))
    tokens_used = fields.Integer(validate=validate.Range(min=0, max=10**12), load_default=0)

    @validates_schema
    def check_times(self, data, **kwargs):
        _check_run_times(data)


class RunUpdateSchema(Schema):
    status = fields.String(validate=validate.OneOf(RUN_STATUSES))
    started_at = fields.NaiveDateTime()
    finished_at = fields.NaiveDateTime()
    duration = fields.Float(validate=validate.Range(min=0, max=10**7))
    tokens_used = fields.Integer(validate=validate.Range(min=0, max=10**12))

    @validates_schema
    def check_times(self, data, **kwargs):
        _check_run_times(data)


class RunSchema(Schema):
    id = fields.Integer()
    crew_id = fields.Integer()
    status = fields.String()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    duration = fields.Float(allow_none=True)
    tokens_used = fields.Integer()
    created_at = fields.DateTime()


class PageQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=10**6))
    # Larger values are capped at PAGE_SIZE_MAX.
    per_page = fields.Integer(load_default=None, validate=validate.Range(min=1, max=10_000))


class _Page(Schema):
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


class CrewPageSchema(_Page):
    items = fields.List(fields.Nested(CrewSchema))


class RunPageSchema(_Page):
    items = fields.List(fields.Nested(RunSchema))


class UserSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    is_admin = fields.Boolean()
