"""The front's renderer (crew7/front): what it shares with the app, and what it refuses."""

import re

import pytest

from crew7.config import DefaultConfig
from crew7.front import FrontOptions, _lua_string, front_options, render_front_config
from crew7.services.cache.scripts import SOURCES


def _config(**overrides):
    config = {k: getattr(DefaultConfig, k) for k in dir(DefaultConfig) if k.isupper()}
    config.update(overrides)
    return config


def _options(**overrides):
    values = dict(listen="127.0.0.1:8080", app="127.0.0.1:8000", redis="127.0.0.1:6379")
    values.update(prefix="/tmp/front", **overrides)
    return FrontOptions(**values)


def _lua_literal_value(literal):
    """What Lua reads from a double-quoted literal of decimal escapes: ``\\ddd`` takes up
    to three digits (Lua 5.1 manual, section 2.1)."""
    assert literal[0] == literal[-1] == '"'
    out, body, i = bytearray(), literal[1:-1], 0
    while i < len(body):
        if body[i] == "\\":
            digits = re.match(r"\d{1,3}", body[i + 1 :]).group()
            out.append(int(digits))
            i += 1 + len(digits)
        else:
            out += body[i].encode()
            i += 1
    return out.decode()


@pytest.mark.parametrize("text", ["least[1]", "a\n2", "é1", "'0'", "\\9", ""])
def test_a_lua_literal_reads_back_as_the_text(text):
    assert _lua_literal_value(_lua_string(text)) == text


def test_the_front_runs_the_apps_scripts_and_headers():
    text = render_front_config(_config(METADATA_TTL=123, POPULARITY_SIZE=77), _options())
    # The popularity script the front sends with its flushes is the app's.
    script = SOURCES["view_counts"]
    assert f'["view_counts_script"] = {_lua_string(script)}' in text
    assert "count_view(KEYS[1], ARGV[i], tonumber(ARGV[i + 1]), keep)" in script
    ttl = "public, max-age=123, stale-while-revalidate=123, stale-if-error=86400"
    assert f'["cache_control"] = "{ttl}"' in text
    assert '["keep"] = "77"' in text
    assert not re.search(r"@[a-z_]+@", text.replace("@crew7_app", ""))
    assert "pid /tmp/front/nginx.pid;" in text and "error_log /tmp/front/error.log warn;" in text


def test_keys_follow_the_apps_prefix_and_redis_url():
    config = _config(REDIS_URL="redis://:s3cret@10.0.0.5:6380/3", CACHE_KEY_PREFIX="p:")
    options = front_options(config, app_addr="127.0.0.1:8000", listen="0.0.0.0:80", prefix="/x")
    assert (options.redis, options.redis_password, options.redis_db) == (
        "10.0.0.5:6380",
        "s3cret",
        3,
    )
    text = render_front_config(config, options)
    assert '["views_key"] = "p:stats:crew_views"' in text
    assert '["hits_key"] = "p:front:hits"' in text


def test_what_the_front_cannot_serve_is_refused_at_render_time():
    with pytest.raises(ValueError, match="resolver"):
        render_front_config(_config(), _options(redis="redis:6379"))
    assert "resolver 127.0.0.11" in render_front_config(
        _config(), _options(redis="redis:6379", resolver="127.0.0.11")
    )
    for setting in ("REDIS_CLUSTER_NODES", "REDIS_SENTINELS"):
        with pytest.raises(ValueError, match="one Redis server"):
            render_front_config(_config(**{setting: "10.0.0.1:7000"}), _options())
    with pytest.raises(ValueError, match="no rate limit zone"):
        render_front_config(_config(), _options(limits={"crew7_nope": ("1r/s", 1)}))
    with pytest.raises(ValueError, match="HOST:PORT"):
        render_front_config(_config(), _options(listen="8080"))
    disabled = render_front_config(_config(METADATA_CACHE_ENABLED=False), _options())
    assert '["enabled"] = false' in disabled
