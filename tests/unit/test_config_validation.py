"""validate_config(): typed settings coerced, a bad one named."""

import pytest

from crew7.config import ConfigError, DefaultConfig, parse_nodes, validate_config


@pytest.fixture
def config():
    values = {k: getattr(DefaultConfig, k) for k in dir(DefaultConfig) if k.isupper()}
    values["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    return values


def test_defaults_are_valid(config):
    assert validate_config(config) is config


@pytest.mark.parametrize(
    "value, expected",
    [("yes", True), ("ON", True), ("1", True), (1, True), ("off", False), ("", False), (0, False)],
)
def test_booleans(config, value, expected):
    config["BEHIND_PROXY"] = value
    assert validate_config(config)["BEHIND_PROXY"] is expected


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("METADATA_TTL", "60", 60),
        ("METADATA_TTL", 60.0, 60),
        ("CACHE_WARM_COUNT", 0, 0),
        ("BREAKER_COOLDOWN", "0.5", 0.5),
        ("XFETCH_BETA", 0, 0.0),
        ("FEED_RETENTION", "86400", 86400),
    ],
)
def test_numbers_are_coerced(config, name, value, expected):
    config[name] = value
    result = validate_config(config)[name]
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("BEHIND_PROXY", "maybe", "expected true or false"),
        ("METADATA_TTL", "five", "expected an integer"),
        ("METADATA_TTL", 2.5, "expected an integer"),
        ("METADATA_TTL", True, "expected a number"),
        ("METADATA_TTL", 0, "must be at least 1"),
        ("BREAKER_COOLDOWN", -1, "must be at least 0.0"),
        ("REDIS_SOCKET_TIMEOUT", "soon", "expected a number"),
        ("BASE_URL", "ftp://x", "expected a URL with scheme http or https"),
        ("CDN_URL", "cdn.example", "expected a URL with scheme http or https"),
        ("REDIS_URL", "http://localhost", "redis or rediss or unix"),
        ("SQLALCHEMY_DATABASE_URI", "nowhere", "DATABASE_URL"),
        ("CACHE_NAMESPACE", "has space", "no spaces"),
        ("SECRET_KEY", "", "must not be empty"),
        ("FEED_RETENTION", 0, "must be at least 1"),
        ("FEED_RETENTION", "a week", "expected an integer"),
        ("REDIS_SENTINELS", "host-without-port", "host:port"),
    ],
)
def test_a_bad_setting_is_named(config, name, value, message):
    config[name] = value
    shown = "DATABASE_URL" if name == "SQLALCHEMY_DATABASE_URI" else name
    with pytest.raises(ConfigError, match=shown) as raised:
        validate_config(config)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"HIT_RATE_ALERT_THRESHOLD": 1.5}, "HIT_RATE_ALERT_THRESHOLD"),
        ({"CACHE_WAIT_MAX": 2.0, "CACHE_LOCK_LEASE": 2.0}, "CACHE_WAIT_MAX"),
        ({"PAGE_SIZE_DEFAULT": 101, "PAGE_SIZE_MAX": 100}, "PAGE_SIZE_DEFAULT"),
        ({"REDIS_SENTINELS": "a:1", "REDIS_CLUSTER_NODES": "b:2"}, "REDIS_CLUSTER_NODES"),
    ],
)
def test_settings_that_contradict_each_other(config, changes, named):
    config.update(changes)
    with pytest.raises(ConfigError, match=named):
        validate_config(config)


def test_urls_lose_their_trailing_slash(config):
    config["BASE_URL"] = "https://app.example/"
    config["CDN_URL"] = "https://cdn.example/"
    assert validate_config(config)["BASE_URL"] == "https://app.example"
    assert config["CDN_URL"] == "https://cdn.example"


@pytest.mark.parametrize("unset", ["", None])
def test_cdn_url_is_optional(config, unset):
    config["CDN_URL"] = unset
    assert validate_config(config)["CDN_URL"] == ""


def test_nodes():
    assert parse_nodes("N", "") == []
    assert parse_nodes("N", "a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_nodes("N", [("c", "3")]) == [("c", 3)]
    with pytest.raises(ConfigError, match="N="):
        parse_nodes("N", "a:x")
