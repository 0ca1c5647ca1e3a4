"""Contract-level metadata from settings: defaults, overrides, and a bad setting named."""

import json

import pytest

from crew7.config import ConfigError
from crew7.schemas.contract import ContractMetadataSchema
from crew7.services.contract import (
    FIELDS,
    contract_metadata,
    default_contract_metadata,
    render_contract_documents,
)

ADDRESS = "0x" + "aB" * 20


def _config(**settings):
    return {
        "BASE_URL": "https://app.example",
        "CONTRACT_CREWS": {},
        "CONTRACT_AGENTS": {},
        **settings,
    }


def test_defaults_name_the_collection_and_point_at_base_url():
    crews = contract_metadata(_config(), "crews")
    assert crews == default_contract_metadata("crews", "https://app.example/")
    assert crews["name"] == "crew7 Crews"
    assert crews["image"] == "https://app.example/images/collection/crews.svg"
    assert crews["external_link"] == "https://app.example/crews"
    agents = contract_metadata(_config(), "agents")
    assert agents["name"] == "crew7 Agents" and agents["external_link"].endswith("/agents")
    # Optional fields unset are absent, not null.
    for document in (crews, agents):
        assert list(document) == ["name", "description", "image", "external_link"]
        assert ContractMetadataSchema().validate(document) == {}


def test_every_field_can_be_set_and_keeps_the_documented_order():
    settings = {
        "fee_recipient": ADDRESS,
        "seller_fee_basis_points": 250,
        "collaborators": [ADDRESS, "0x" + "0" * 40],
        "external_link": "https://crew7.example/c",
        "featured_image": "https://cdn.example/f.png",
        "banner_image": "http://cdn.example/b.png",
        "image": "https://cdn.example/i.png",
        "description": "All the crews.",
        "name": "Crews",
    }
    document = contract_metadata(_config(CONTRACT_CREWS=settings), "crews")
    assert list(document) == list(FIELDS)
    assert document == settings
    assert ContractMetadataSchema().validate(document) == {}
    # The other collection keeps its defaults.
    assert contract_metadata(_config(CONTRACT_CREWS=settings), "agents")["name"] == "crew7 Agents"


@pytest.mark.parametrize(
    "settings, expected",
    [
        # Unset: a required field keeps its default, an optional one is left out.
        ({"name": None, "banner_image": None, "fee_recipient": ""}, {}),
        ({"collaborators": [], "seller_fee_basis_points": None}, {}),
        # From the environment: a number as text, addresses as one comma-separated string.
        ({"seller_fee_basis_points": "0"}, {"seller_fee_basis_points": 0}),
        (
            {"seller_fee_basis_points": "10000", "fee_recipient": ADDRESS},
            {"seller_fee_basis_points": 10000, "fee_recipient": ADDRESS},
        ),
        ({"collaborators": f"{ADDRESS}, {ADDRESS}"}, {"collaborators": [ADDRESS, ADDRESS]}),
    ],
)
def test_unset_fields_and_environment_spellings(settings, expected):
    document = contract_metadata(_config(CONTRACT_AGENTS=settings), "agents")
    assert document == {**default_contract_metadata("agents", "https://app.example"), **expected}


@pytest.mark.parametrize(
    "settings, named",
    [
        ("royalties", "CONTRACT_CREWS="),
        ({"royalty": 5}, "unknown field 'royalty'"),
        ({"seller_fee_basis_points": 10001, "fee_recipient": ADDRESS}, "seller_fee_basis_points"),
        ({"seller_fee_basis_points": -1, "fee_recipient": ADDRESS}, "seller_fee_basis_points"),
        ({"seller_fee_basis_points": 2.5, "fee_recipient": ADDRESS}, "expected an integer"),
        ({"seller_fee_basis_points": True, "fee_recipient": ADDRESS}, "expected an integer"),
        ({"seller_fee_basis_points": "2.5%", "fee_recipient": ADDRESS}, "expected an integer"),
        ({"seller_fee_basis_points": 250}, "needs a fee_recipient"),
        ({"fee_recipient": "0x" + "a" * 39}, "fee_recipient"),
        ({"fee_recipient": "ab" * 20}, "fee_recipient"),
        ({"fee_recipient": "0x" + "g" * 40}, "fee_recipient"),
        ({"collaborators": ["0x1"]}, "collaborators"),
        ({"collaborators": 5}, "collaborators"),
        ({"image": "ftp://cdn.example/i.png"}, "'image'"),
        ({"image": "javascript:alert(1)"}, "'image'"),
        ({"external_link": "https://"}, "'external_link'"),
        ({"banner_image": "/relative.png"}, "'banner_image'"),
        ({"featured_image": 7}, "'featured_image'"),
        ({"name": ""}, "'name'"),
        ({"name": "x" * 201}, "'name'"),
        ({"description": 5}, "'description'"),
    ],
)
def test_a_bad_setting_is_named(settings, named):
    with pytest.raises(ConfigError) as raised:
        contract_metadata(_config(CONTRACT_CREWS=settings), "crews")
    message = str(raised.value)
    assert message.startswith("invalid setting CONTRACT_CREWS"), message
    assert named in message, message


def test_rendered_bytes_are_compact_json_in_utf8():
    config = _config(CONTRACT_CREWS={"name": "Équipes"})
    documents = render_contract_documents(config)
    assert set(documents) == {"crews", "agents"}
    assert documents["crews"].startswith('{"name":"Équipes","description":'.encode())
    assert json.loads(documents["agents"]) == contract_metadata(config, "agents")
