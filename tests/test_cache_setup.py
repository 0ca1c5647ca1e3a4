"""The cache package's start-up checks: a document type's TTL setting and counter family,
and a Redis client, are checked when the app is created, not on the first request."""

import pytest

from crew7 import ConfigError, create_app
from crew7.services.cache import (
    DOCUMENT_TYPES,
    CacheService,
    CacheSetupError,
    DocumentType,
    document_key,
)
from crew7.services.cache import client as cache_client

BASE = {"TESTING": True, "DATABASE_URL": "sqlite://", "CACHE_WARM_ON_START": False}


def test_a_document_type_without_its_ttl_setting_stops_startup(monkeypatch):
    monkeypatch.setitem(
        DOCUMENT_TYPES, "badges", DocumentType("badges", "crew", "badges:{id}", "BADGES_TTL")
    )
    with pytest.raises(ConfigError, match="BADGES_TTL"):
        create_app(BASE)


def test_a_document_type_without_its_counter_family_stops_startup(monkeypatch):
    monkeypatch.setitem(
        DOCUMENT_TYPES, "badges", DocumentType("badges", "badges", "badges:{id}", "STATS_TTL")
    )
    with pytest.raises(ConfigError, match="no counter family 'badges'"):
        create_app(BASE)


def test_no_redis_client_stops_startup(monkeypatch):
    monkeypatch.setattr(cache_client, "connect", lambda config: None)
    monkeypatch.setattr("crew7.services.cache.connect", lambda config: None)
    with pytest.raises(CacheSetupError, match="not a Redis client"):
        create_app(BASE)


def test_the_service_refuses_to_run_without_a_client():
    app = create_app(BASE)
    with pytest.raises(CacheSetupError, match="no Redis client"):
        CacheService(None, app.config)


def test_keys_come_from_the_registry():
    app = create_app({**BASE, "CACHE_NAMESPACE": "ns:"})
    cache = app.extensions["crew7.cache"]
    assert cache.crew_key(7) == document_key("crew", 7, "ns:") == "ns:metadata:crew:7"
    assert cache.crew_agents_key(7) == "ns:metadata:crew:7:agents"
    assert cache.agent_key(8) == "ns:metadata:agent:8"
    assert cache.popular_key() == "ns:stats:popular_crews"
    assert cache.leaderboard_key("runs") == "ns:stats:leaderboard:runs"
    assert cache.fence_key(cache.crew_key(7)) == "ns:fence:{ns:metadata:crew:7}"
