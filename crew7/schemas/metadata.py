"""NFT metadata documents (ERC-721 metadata JSON with OpenSea's attributes)."""

from marshmallow import Schema, fields, validate

DISPLAY_TYPES = ("number", "boost_number", "boost_percentage", "date")


class AttributeSchema(Schema):
    trait_type = fields.String(required=True)
    value = fields.Raw(required=True)
    display_type = fields.String(validate=validate.OneOf(DISPLAY_TYPES))
    max_value = fields.Float()


class NFTMetadataSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    image = fields.Url(required=True)
    external_url = fields.Url(required=True)
    attributes = fields.List(fields.Nested(AttributeSchema), required=True)


class CrewMetadataSchema(NFTMetadataSchema):
    """A crew's document."""


class AgentMetadataSchema(NFTMetadataSchema):
    """An agent's document."""


class ErrorSchema(Schema):
    error = fields.Dict(
        metadata={"description": "status, code, message and, for validation errors, fields"}
    )
