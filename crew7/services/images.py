"""Token images: a crew's or an agent's card (``crew7.services.cards``) drawn from its
metadata document and read through the cache like the documents (``image:crew:{id}``,
``image:agent:{id}``): fenced, single-flight, refreshed early, computed around a Redis
that is down. An unknown or private id has no image (``NOT_FOUND``), as it has no
document; the invalidation rules that reach a document reach its image
(``crew7.invalidation``)."""

from flask import current_app

from crew7.services import cards
from crew7.services.cache import AGENT_IMAGE, CREW_IMAGE, get_cache_service
from crew7.services.metadata import agent_document, crew_document


def _card(document, draw, ident):
    return None if document is None else draw(document, ident).encode()


def render_crew_image(crew_id):
    """The crew's card as SVG bytes, or None when it is unknown or private."""
    return _card(crew_document(crew_id), cards.crew_card, crew_id)


def render_agent_image(agent_id):
    """The agent's card as SVG bytes, or None when it or its crew is unknown or private."""
    return _card(agent_document(agent_id), cards.agent_card, agent_id)


def serve_crew_image(crew_id, refresh=False):
    """The crew's card as served; ``NOT_FOUND`` when there is no such public crew."""
    cache = get_cache_service(current_app)
    return cache.read_through(
        CREW_IMAGE,
        cache.crew_image_key(crew_id),
        lambda: render_crew_image(crew_id),
        refresh=refresh,
    )


def serve_agent_image(agent_id, refresh=False):
    """The agent's card as served; ``NOT_FOUND`` when there is no such public agent."""
    cache = get_cache_service(current_app)
    return cache.read_through(
        AGENT_IMAGE,
        cache.agent_image_key(agent_id),
        lambda: render_agent_image(agent_id),
        refresh=refresh,
    )
