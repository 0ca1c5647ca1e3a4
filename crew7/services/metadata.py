"""Metadata documents: models in, OpenSea / ERC-721 JSON out.

One vocabulary for the pipeline: ``build_*`` makes a document (a dict) from models;
``render_*`` gives its bytes exactly as they are cached and served, or None for an
unknown or private id (``render_crews`` and friends do many at once); ``serve_*`` reads
them through the cache (``NOT_FOUND`` when there is no such public document). The
builders read a constant number of rows whatever a crew's history: run aggregates come
from ``crew_stats``.
"""

import calendar
import json

from flask import current_app
from sqlalchemy import func, select

from crew7.extensions import MAX_ID, TOKEN_ID_RE, db
from crew7.models import Agent, Crew, CrewStats
from crew7.schemas.metadata import AgentMetadataSchema, CrewMetadataSchema
from crew7.services.cache import (
    AGENT,
    CREW,
    CREW_AGENTS,
    NOT_FOUND,
    CacheUnavailable,
    get_cache_service,
)

_crew_schema = CrewMetadataSchema()
_agent_schema = AgentMetadataSchema()


def _unix(dt):
    return calendar.timegm(dt.utctimetuple()) if dt is not None else None


def _encode(document):
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _urls(base_url, cdn_url):
    cfg = current_app.config
    return (base_url or cfg["BASE_URL"]).rstrip("/"), (cdn_url or cfg["CDN_URL"]).rstrip("/")


def _image_url(base, cdn, kind, ident):
    """``<CDN_URL>/<kind>s/<id>.png`` when a CDN is configured, else this service's card."""
    if cdn:
        return f"{cdn}/{kind}s/{ident}.png"
    return f"{base}/images/{kind}/{ident}.svg"


def _is_default(base_url, cdn_url):
    cfg = current_app.config
    return (base_url is None or base_url.rstrip("/") == cfg["BASE_URL"]) and (
        cdn_url is None or cdn_url.rstrip("/") == cfg["CDN_URL"]
    )


def is_token_id(raw):
    """Decimal without sign or leading zero (up to 19 ASCII digits), or the 64 lowercase hex
    digits ERC-1155 ``{id}`` URIs produce: one spelling per token."""
    return TOKEN_ID_RE.fullmatch(raw) is not None


def parse_token_id(raw):
    """The id a token id names, or None when it is malformed or no crew or agent can have it."""
    if not is_token_id(raw):
        return None
    value = int(raw, 16) if len(raw) == 64 else int(raw)
    return value if 0 < value <= MAX_ID else None


# -- building -------------------------------------------------------------------


def build_crew_document(crew, stats, agent_count, base_url=None, cdn_url=None):
    """The document of a crew, from the crew, its aggregates and its agent count."""
    base, cdn = _urls(base_url, cdn_url)
    attributes = [
        {"trait_type": "Agents", "value": agent_count, "display_type": "number"},
        {"trait_type": "Process", "value": crew.process},
        {
            "trait_type": "Total Runs",
            "value": stats.total_runs if stats else 0,
            "display_type": "number",
        },
        {
            "trait_type": "Success Rate",
            "value": (stats.success_rate if stats and stats.success_rate is not None else 0),
            "display_type": "boost_percentage",
            "max_value": 100,
        },
        {
            "trait_type": "Average Run Duration",
            "value": (stats.average_duration if stats and stats.average_duration else 0),
            "display_type": "number",
        },
    ]
    if stats is not None and stats.last_run_at is not None:
        attributes.append(
            {"trait_type": "Last Run", "value": _unix(stats.last_run_at), "display_type": "date"}
        )
    attributes.append(
        {"trait_type": "Created", "value": _unix(crew.created_at), "display_type": "date"}
    )
    return _crew_schema.dump(
        {
            "name": crew.name,
            "description": crew.description or f"{crew.name}: a crew of AI agents on crew7.",
            "image": _image_url(base, cdn, "crew", crew.id),
            "external_url": f"{base}/crews/{crew.id}",
            "attributes": attributes,
        }
    )


def build_agent_document(agent, crew, base_url=None, cdn_url=None):
    """The document of an agent of ``crew``."""
    base, cdn = _urls(base_url, cdn_url)
    tools = agent.tools or []
    return _agent_schema.dump(
        {
            "name": agent.name,
            "description": agent.goal or agent.backstory or f"{agent.role} in {crew.name}",
            "image": _image_url(base, cdn, "agent", agent.id),
            "external_url": f"{base}/agents/{agent.id}",
            "attributes": [
                {"trait_type": "Role", "value": agent.role},
                {"trait_type": "LLM", "value": agent.llm},
                {"trait_type": "Tools", "value": len(tools), "display_type": "number"},
                {"trait_type": "Crew", "value": crew.name},
                {"trait_type": "Crew ID", "value": crew.id, "display_type": "number"},
            ],
        }
    )


# -- loading (constant number of rows) ---------------------------------------------


def _load_public_crew(crew_id):
    row = db.session.execute(
        select(Crew, CrewStats).outerjoin(CrewStats).where(Crew.id == crew_id)
    ).first()
    if row is None or not row[0].is_public:
        return None, None
    return row[0], row[1]


def _agent_count(crew_id):
    return db.session.scalar(
        select(func.count()).select_from(Agent).where(Agent.crew_id == crew_id)
    )


def agent_ids_of_crew(crew_id, session=None):
    """The ids of a crew's agents (in ``session``, the request's by default): what
    invalidating a whole crew needs."""
    session = db.session if session is None else session
    return list(session.scalars(select(Agent.id).where(Agent.crew_id == crew_id)))


def crew_document(crew_id):
    """The crew's document, or None when it is unknown or private."""
    crew, stats = _load_public_crew(crew_id)
    if crew is None:
        return None
    return build_crew_document(crew, stats, _agent_count(crew_id))


def render_crew(crew_id):
    """The crew's document as bytes, or None when it is unknown or private."""
    document = crew_document(crew_id)
    return None if document is None else _encode(document)


def render_crews(crew_ids):
    """Many crews' documents in one query: ``{crew_id: bytes}``, None for unknown or
    private ones; the same bytes ``render_crew`` gives for each."""
    ids = list(crew_ids)
    counts = (
        select(Agent.crew_id, func.count().label("agents"))
        .where(Agent.crew_id.in_(ids))
        .group_by(Agent.crew_id)
        .subquery()
    )
    rows = db.session.execute(
        select(Crew, CrewStats, counts.c.agents)
        .outerjoin(CrewStats)
        .outerjoin(counts, counts.c.crew_id == Crew.id)
        .where(Crew.id.in_(ids), Crew.is_public.is_(True))
    )
    out = dict.fromkeys(ids)
    for crew, stats, agents in rows:
        out[crew.id] = _encode(build_crew_document(crew, stats, agents or 0))
    return out


def render_agents(agent_ids):
    """Many agents' documents: ``{agent_id: bytes or None}``. Two indexed queries (the
    agents by id, then their public crews): a join lets SQLite walk every public crew."""
    ids = list(agent_ids)
    agents = list(db.session.scalars(select(Agent).where(Agent.id.in_(ids))))
    crew_ids = {a.crew_id for a in agents}
    crews = {
        c.id: c
        for c in db.session.scalars(
            select(Crew).where(Crew.id.in_(crew_ids), Crew.is_public.is_(True))
        )
    }
    out = dict.fromkeys(ids)
    for agent in agents:
        crew = crews.get(agent.crew_id)
        if crew is not None:
            out[agent.id] = _encode(build_agent_document(agent, crew))
    return out


def render_crews_agents(crew_ids):
    """Many crews' agents lists in one query: ``{crew_id: bytes or None}``."""
    ids = list(crew_ids)
    crews = {
        c.id: c for c in db.session.scalars(select(Crew).where(Crew.id.in_(ids), Crew.is_public))
    }
    lists = {crew_id: [] for crew_id in crews}
    if crews:
        agents = db.session.scalars(
            select(Agent).where(Agent.crew_id.in_(list(crews))).order_by(Agent.id)
        )
        for agent in agents:
            lists[agent.crew_id].append(build_agent_document(agent, crews[agent.crew_id]))
    return {i: _encode(lists[i]) if i in crews else None for i in ids}


def agent_ids_of_crews(crew_ids):
    """``{crew_id: [agent ids]}`` for many crews, in one query."""
    out = {i: [] for i in crew_ids}
    rows = db.session.execute(
        select(Agent.crew_id, Agent.id).where(Agent.crew_id.in_(list(out))).order_by(Agent.id)
    )
    for crew_id, agent_id in rows:
        out[crew_id].append(agent_id)
    return out


def agent_document(agent_id):
    """The agent's document, or None when it or its crew is unknown or private."""
    row = db.session.execute(
        select(Agent, Crew).join(Crew, Agent.crew_id == Crew.id).where(Agent.id == agent_id)
    ).first()
    if row is None or not row[1].is_public:
        return None
    return build_agent_document(row[0], row[1])


def render_agent(agent_id):
    """The agent's document as bytes, or None when it or its crew is unknown or private."""
    document = agent_document(agent_id)
    return None if document is None else _encode(document)


def render_crew_agents(crew_id):
    """The crew's agents' documents (a JSON list) as bytes, or None for an unknown or
    private crew."""
    crew = db.session.get(Crew, crew_id)
    if crew is None or not crew.is_public:
        return None
    agents = db.session.scalars(select(Agent).where(Agent.crew_id == crew_id).order_by(Agent.id))
    return _encode([build_agent_document(a, crew) for a in agents])


# -- serving (through the cache) ---------------------------------------------------


def serve_crew(crew_id, count_view=True, refresh=False):
    """The crew's document as served; ``NOT_FOUND`` when not found. ``refresh``: the
    front asks for an early refresh of this document (XFetch decided it there)."""
    cache = get_cache_service(current_app)
    return cache.read_through(
        CREW,
        cache.crew_key(crew_id),
        lambda: render_crew(crew_id),
        count_view=str(crew_id) if count_view else None,
        refresh=refresh,
    )


def serve_agent(agent_id, refresh=False):
    cache = get_cache_service(current_app)
    return cache.read_through(
        AGENT, cache.agent_key(agent_id), lambda: render_agent(agent_id), refresh=refresh
    )


def serve_crew_agents(crew_id, refresh=False):
    cache = get_cache_service(current_app)
    return cache.read_through(
        CREW_AGENTS,
        cache.crew_agents_key(crew_id),
        lambda: render_crew_agents(crew_id),
        refresh=refresh,
    )


def serve_crews(crew_ids):
    """A JSON array of the crews' documents in request order (null for unknown or private).

    Hits cost one MGET for the whole batch. The documents it misses are built with one
    query for all of them and filled together, each fenced and computed once across all
    processes as a single miss is. A crew named several times is looked up, and its view
    counted, once.
    """
    cache = get_cache_service(current_app)
    distinct = list(dict.fromkeys(c for c in crew_ids if c is not None))
    found = {}
    if cache.enabled and distinct:
        values = cache.get_many_counting_views(
            [cache.crew_key(c) for c in distinct], [str(c) for c in distinct]
        )
        if values is not None:
            found = {c: v for c, v in zip(distinct, values, strict=True) if v is not None}
    if found:
        cache.record(CREW, "hit", len(found))
    missing = [c for c in distinct if c not in found]
    if missing:
        found.update(_serve_missed_crews(cache, missing))
    # Well-formed ids that no crew can have are null.
    return b"[" + b",".join(NOT_FOUND if c is None else found[c] for c in crew_ids) + b"]"


def _serve_missed_crews(cache, crew_ids):
    """The documents of crews a batch missed: ``{crew_id: bytes}``, ``NOT_FOUND`` for none."""
    if not cache.enabled:
        cache.record(CREW, "bypass", len(crew_ids))
        return _not_found_for_missing(render_crews(crew_ids))
    keys = {cache.crew_key(c): c for c in crew_ids}

    def compute(wanted):
        documents = render_crews([keys[k] for k in wanted])
        return {k: documents[keys[k]] for k in wanted}

    try:
        values, _ = cache.fill_many(CREW, list(keys), compute)
    except CacheUnavailable:
        cache.record(CREW, "bypass", len(keys))
        return _not_found_for_missing(render_crews(crew_ids))
    cache.record(CREW, "miss", len(keys))
    cache.count_views([str(keys[k]) for k, v in values.items() if v != NOT_FOUND])
    return {keys[k]: v for k, v in values.items()}


def _not_found_for_missing(documents):
    return {c: NOT_FOUND if v is None else v for c, v in documents.items()}


def crew_to_nft_metadata(crew, base_url=None, cdn_url=None, use_cache=True):
    """The crew's NFT metadata document (a dict).

    With ``use_cache`` it reads through the cache: a hit returns the stored document, a
    miss computes it, stores it and returns it. With ``use_cache=False``, or URLs other
    than the configured ones, the cache is never touched.
    """
    if use_cache and _is_default(base_url, cdn_url):
        value = serve_crew(crew.id, count_view=False)
        return json.loads(value)
    stats = db.session.get(CrewStats, crew.id)
    return build_crew_document(crew, stats, _agent_count(crew.id), base_url, cdn_url)
