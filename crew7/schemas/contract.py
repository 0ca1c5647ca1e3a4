"""Contract-level metadata (OpenSea's ``contractURI`` document, ERC-7572)."""

from marshmallow import Schema, fields, validate

_ADDRESS = validate.Regexp("^0x[0-9a-fA-F]{40}$")
_HTTP = {"http", "https"}


class ContractMetadataSchema(Schema):
    """A collection's document. Optional fields are absent when unset, never null."""

    name = fields.String(required=True)
    description = fields.String(required=True)
    image = fields.Url(required=True, schemes=_HTTP)
    banner_image = fields.Url(schemes=_HTTP)
    featured_image = fields.Url(schemes=_HTTP)
    external_link = fields.Url(required=True, schemes=_HTTP)
    collaborators = fields.List(
        fields.String(validate=_ADDRESS),
        metadata={"description": "Addresses allowed to edit the collection on a marketplace"},
    )
    seller_fee_basis_points = fields.Integer(
        validate=validate.Range(min=0, max=10_000),
        metadata={"description": "Royalty on secondary sales, in hundredths of a percent"},
    )
    fee_recipient = fields.String(
        validate=_ADDRESS, metadata={"description": "Address that receives the royalty"}
    )
