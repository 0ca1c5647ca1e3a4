"""Contract-level metadata: the document a collection's ``contractURI()`` points at
(ERC-7572, in OpenSea's format), one per collection, crews and agents.

It depends on settings only (``CONTRACT_CREWS``, ``CONTRACT_AGENTS``, ``BASE_URL``), so
it is built once per app at start-up, where a bad setting fails the start naming it, and
served as the same bytes until the settings change. Fields left unset are omitted, never
``null``.
"""

import json
import re
from urllib.parse import urlparse

from crew7.config import ConfigError

# Collection -> the setting that overrides its document's fields.
COLLECTIONS = {"crews": "CONTRACT_CREWS", "agents": "CONTRACT_AGENTS"}
URL_FIELDS = ("image", "banner_image", "featured_image", "external_link")
REQUIRED_FIELDS = ("name", "description", "image", "external_link")
# Every field, in the order a document lists them.
FIELDS = (
    "name",
    "description",
    "image",
    "banner_image",
    "featured_image",
    "external_link",
    "collaborators",
    "seller_fee_basis_points",
    "fee_recipient",
)
MAX_FEE_BASIS_POINTS = 10_000  # 100%
MAX_TEXT = {"name": 200, "description": 2000}
ADDRESS_RE = re.compile("0x[0-9a-fA-F]{40}")

_DESCRIPTIONS = {
    "crews": "Crews of AI agents on crew7. Each token is a crew: its agents, its process "
    "and the record of its runs (totals, success rate, durations).",
    "agents": "AI agents on crew7. Each token is an agent of a crew: its role, its goal, "
    "the model it runs on and its tools.",
}


def default_contract_metadata(collection, base_url):
    """The collection's document before its setting: name, description, and an image and
    a link under ``base_url``."""
    base_url = base_url.rstrip("/")
    return {
        "name": f"crew7 {collection.capitalize()}",
        "description": _DESCRIPTIONS[collection],
        "image": f"{base_url}/images/collection/{collection}.svg",
        "external_link": f"{base_url}/{collection}",
    }


def contract_metadata(config, collection):
    """The collection's document: the defaults, then its setting's fields, checked.

    A field set to None (or, for an optional field, "" or an empty list) is unset: a
    required one keeps its default, an optional one is left out. Raises ConfigError
    naming the setting and the field.
    """
    setting = COLLECTIONS[collection]
    overrides = config.get(setting) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"invalid setting {setting}={overrides!r}: expected a mapping of "
            f"contract metadata fields ({', '.join(FIELDS)})"
        )
    unknown = sorted(str(name) for name in set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"invalid setting {setting}: unknown field {unknown[0]!r} "
            f"(expected some of {', '.join(FIELDS)})"
        )
    document = default_contract_metadata(collection, str(config["BASE_URL"]))
    for name in FIELDS:
        value = overrides.get(name)
        unset = value is None or (name not in REQUIRED_FIELDS and value in ("", []))
        if unset:
            continue
        document[name] = _check_field(f"{setting}[{name!r}]", name, value)
    fee = document.get("seller_fee_basis_points", 0)
    if fee and "fee_recipient" not in document:
        raise ConfigError(
            f"invalid setting {setting}: seller_fee_basis_points={fee} needs a fee_recipient"
        )
    return {name: document[name] for name in FIELDS if name in document}


def _check_field(label, name, value):
    if name in MAX_TEXT:
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT[name]:
            raise ConfigError(
                f"invalid setting {label}={value!r}: expected text of 1 to {MAX_TEXT[name]} "
                "characters"
            )
        return value
    if name in URL_FIELDS:
        parsed = urlparse(value) if isinstance(value, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"invalid setting {label}={value!r}: expected an http(s) URL")
        return value
    if name == "seller_fee_basis_points":
        return _basis_points(label, value)
    if name == "fee_recipient":
        return _address(label, value)
    # collaborators: a list of addresses, or one comma-separated string of them.
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"invalid setting {label}={value!r}: expected a list of addresses")
    return [_address(label, item.strip() if isinstance(item, str) else item) for item in items]


def _basis_points(label, value):
    if isinstance(value, str) and re.fullmatch("[0-9]{1,5}", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"invalid setting {label}={value!r}: expected an integer")
    if not 0 <= value <= MAX_FEE_BASIS_POINTS:
        raise ConfigError(
            f"invalid setting {label}={value!r}: basis points from 0 to {MAX_FEE_BASIS_POINTS}"
        )
    return value


def _address(label, value):
    if not isinstance(value, str) or not ADDRESS_RE.fullmatch(value):
        raise ConfigError(
            f"invalid setting {label}={value!r}: expected an address, 0x and 40 hex digits"
        )
    return value


def check_contract_settings(config):
    """Build every collection's document once, so that a bad setting fails the start."""
    for collection in COLLECTIONS:
        contract_metadata(config, collection)


def render_contract_documents(config):
    """{collection: the document's bytes as served}, encoded as the token documents are."""
    return {
        collection: json.dumps(
            contract_metadata(config, collection), separators=(",", ":"), ensure_ascii=False
        ).encode()
        for collection in COLLECTIONS
    }
