"""The cached document types: one entry each, from which keys, TTLs and counters follow.

A new document type is one ``DocumentType`` in ``DOCUMENT_TYPES`` (and its family in
``FAMILIES`` when it counts apart); ``create_app`` refuses to start when a type names a
setting or family that does not exist, so a forgotten TTL is not found by a request.
"""

from dataclasses import dataclass

# What is stored, and served as 404, for an unknown or private id (the README documents
# these bytes).
NOT_FOUND = b"null"

# Counter families: the ``family`` label of the cache's event counters and the unit of
# XFetch's moving average. Each has its default TTL setting and a first guess of the
# seconds one computation takes (until measured).
CREW = "crew"
AGENT = "agent"
CREW_AGENTS = "crew_agents"
STATS = "stats"
# Token images (SVG cards built from the crew's or agent's document).
CREW_IMAGE = "crew_image"
AGENT_IMAGE = "agent_image"


@dataclass(frozen=True)
class Family:
    ttl_setting: str
    compute_estimate: float


FAMILIES = {
    CREW: Family("METADATA_TTL", 0.01),
    AGENT: Family("METADATA_TTL", 0.005),
    CREW_AGENTS: Family("METADATA_TTL", 0.01),
    STATS: Family("STATS_TTL", 0.05),
    CREW_IMAGE: Family("METADATA_TTL", 0.01),
    AGENT_IMAGE: Family("METADATA_TTL", 0.005),
}

LEADERBOARD_TYPES = ("runs", "success-rate")


@dataclass(frozen=True)
class DocumentType:
    """A cached document: its counter family, key template (``{id}`` is the variable part,
    ``CACHE_NAMESPACE`` is prepended), TTL setting, and whether its fills are fenced
    against concurrent invalidations."""

    name: str
    family: str
    key: str
    ttl_setting: str
    fenced: bool = True

    def key_function(self, prefix=""):
        """``key(id)`` for this type: plain concatenation, cheaper than ``str.format``."""
        head, found, tail = (prefix + self.key).partition("{id}")
        if not found:
            return lambda ident=None: head
        return lambda ident: f"{head}{ident}{tail}"

    def pattern(self, prefix=""):
        """The SCAN pattern of every key of this type."""
        head, found, _ = (prefix + self.key).partition("{id}")
        return head + "*" if found else head


DOCUMENT_TYPES = {
    t.name: t
    for t in (
        DocumentType("crew", CREW, "metadata:crew:{id}", "METADATA_TTL"),
        DocumentType("agent", AGENT, "metadata:agent:{id}", "METADATA_TTL"),
        DocumentType("crew_agents", CREW_AGENTS, "metadata:crew:{id}:agents", "METADATA_TTL"),
        DocumentType("crew_image", CREW_IMAGE, "image:crew:{id}", "METADATA_TTL"),
        DocumentType("agent_image", AGENT_IMAGE, "image:agent:{id}", "METADATA_TTL"),
        DocumentType("popular_crews", STATS, "stats:popular_crews", "POPULAR_CREWS_TTL"),
        DocumentType("leaderboard", STATS, "stats:leaderboard:{id}", "STATS_TTL"),
    )
}

# Not documents: the popularity set, and each document's fence and single-flight lock.
# The fence and lock carry the document's full key as a hash tag, so on a Cluster they
# live in the document's slot and one script can touch all three.
VIEWS_KEY = "stats:crew_views"
FENCE_KEY = "fence:{{{key}}}"
LOCK_KEY = "lock:{{{key}}}"
WARMING_KEY = "warming:{deployment}"
# Metadata documents nginx served from Redis (crew7/front), per family: a hash the front
# increments and the app's /metrics reads.
FRONT_HITS_KEY = "front:hits"
# The change log's watermark: the last entry whose invalidations are applied.
WATERMARK_KEY = "changelog:applied"
# Held (SET NX, a short TTL) by the one process replaying after the watermark was lost.
REPLAY_KEY = "changelog:replaying"


def document_key(type_name, ident=None, prefix=""):
    """The Redis key of a document, e.g. ``document_key("crew", 7)``."""
    return DOCUMENT_TYPES[type_name].key_function(prefix)(ident)


def document_type_problems(config):
    """What is wrong with the registry under ``config``: a list of messages naming the
    document type and the missing setting or family (empty when all is well)."""
    problems = []
    for family, spec in FAMILIES.items():
        if spec.ttl_setting not in config:
            problems.append(f"cache family {family!r}: TTL setting {spec.ttl_setting} is missing")
    for t in DOCUMENT_TYPES.values():
        if t.family not in FAMILIES:
            problems.append(f"document type {t.name!r}: no counter family {t.family!r}")
        if t.ttl_setting not in config:
            problems.append(f"document type {t.name!r}: TTL setting {t.ttl_setting} is missing")
    return problems
