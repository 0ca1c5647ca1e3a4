"""The cache change log's entries: what each kind names, and the keys it expands into.

Pure: no database, no Redis (``tests/unit/test_changelog_expansion.py``).
"""

import logging

from crew7.services.cache import AGENT, AGENT_IMAGE, CREW, CREW_AGENTS, CREW_IMAGE

log = logging.getLogger("crew7.services.changelog")

# kind -> the document families it invalidates for ref_id (see crew7.changelog_triggers)
EXPANSION = {
    # "crew": and each of the crew's agents (AGENTS_OF_A_CREW), looked up when relayed
    "crew": (CREW, CREW_AGENTS, CREW_IMAGE),
    "crew_document": (CREW, CREW_IMAGE),
    "crew_agents": (CREW_AGENTS,),
    "agent": (AGENT, AGENT_IMAGE),
}
# What a ``crew`` entry invalidates for each of the crew's agents: a token image goes
# with its document (crew7.invalidation).
AGENTS_OF_A_CREW = (AGENT, AGENT_IMAGE)
KINDS = frozenset(EXPANSION) | {"stats", "views"}


def crews_needing_agents(entries):
    """The crews whose agents' documents the entries name (``crew`` entries)."""
    return {ref for kind, ref in entries if kind == "crew" and ref is not None}


def expand(entries, agents_of_crew, key_of, stats_keys):
    """The keys to invalidate and the crews to drop from the popularity set.

    ``entries``: ``(kind, ref_id)`` pairs; ``agents_of_crew``: ``{crew_id: [agent ids]}``
    (as they are when relayed); ``key_of``: ``{family: key function}``; ``stats_keys``:
    the stats documents' keys. Unknown kinds are skipped (logged): an older process may
    relay entries a newer schema writes.
    """
    keys, views = set(), set()
    for kind, ref in entries:
        if kind == "stats":
            keys.update(stats_keys)
        elif kind == "views":
            views.add(str(ref))
        elif kind in EXPANSION:
            keys.update(key_of[family](ref) for family in EXPANSION[kind])
            if kind == "crew":
                for a in agents_of_crew.get(ref, ()):
                    keys.update(key_of[family](a) for family in AGENTS_OF_A_CREW)
        else:
            log.warning("cache change log: unknown entry kind %r skipped", kind)
    return keys, sorted(views)
