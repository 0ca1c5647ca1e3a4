"""The keys table in docs/cache.md is the cache's registry, checked (no servers)."""

import re
from pathlib import Path

from crew7.services.cache.documents import (
    DOCUMENT_TYPES,
    FENCE_KEY,
    FRONT_HITS_KEY,
    LOCK_KEY,
    REPLAY_KEY,
    VIEWS_KEY,
    WARMING_KEY,
    WATERMARK_KEY,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "cache.md"


def _documented_keys():
    section = DOC.read_text().split("## Keys", 1)[1].split("\n## ", 1)[0]
    return [m for m in re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE) if m != "key"]


def _template(key):
    """One spelling for a key's variable parts: ``{crew_id}``, ``<deployment id>`` -> ``{id}``."""
    key = key.replace("{<document key>}", "{{DOC}}")
    return re.sub(r"\{[a-z_]+\}|<[a-z ]+>", "{id}", key)


def test_every_key_in_the_registry_is_documented_and_nothing_else():
    registry = {t.key for t in DOCUMENT_TYPES.values()}
    registry |= {VIEWS_KEY, WATERMARK_KEY, REPLAY_KEY, WARMING_KEY.replace("{deployment}", "{id}")}
    registry |= {FRONT_HITS_KEY}
    registry |= {FENCE_KEY.format(key="{DOC}"), LOCK_KEY.format(key="{DOC}")}
    documented = {_template(k) for k in _documented_keys()}
    assert documented == registry
