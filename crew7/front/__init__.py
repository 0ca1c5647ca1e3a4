"""The nginx front: one renderer for every nginx.conf crew7 runs (compose, tests, bench,
``make run-front``), from ``nginx.conf.in`` and the hit path in ``front.lua``.

The values nginx must share with the app come from the app: the popularity script
(``crew7.services.cache.scripts.SOURCES``), key names and prefix, the popularity bound,
Cache-Control, the XFetch settings. So a front cannot drift from the app it fronts.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from importlib.resources import files
from urllib.parse import urlsplit

from crew7.docs.views import DOCS_CSP
from crew7.images.views import IMAGE_CONTENT_TYPE, IMAGE_CSP
from crew7.metadata.views import MAX_BATCH
from crew7.services.cache.documents import (
    DOCUMENT_TYPES,
    FAMILIES,
    FRONT_HITS_KEY,
    STATS,
    VIEWS_KEY,
)
from crew7.services.cache.scripts import SOURCES

# Where Debian's packages put nginx's dynamic modules (libnginx-mod-http-lua and the
# NDK it needs); the rendered file is run with -c, so it loads them itself.
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
# Production rate limits per zone: (rate, burst).
RATE_LIMITS = {
    "crew7_metadata": ("50r/s", 200),
    "crew7_stats": ("5r/s", 20),
    "crew7_api": ("10r/s", 40),
}


def _address(text, what):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def find_module_dir():
    """The first folder holding the lua module, else Debian's default."""
    for folder in MODULE_DIRS:
        if all(os.path.exists(os.path.join(folder, m)) for m in MODULES):
            return folder
    return MODULE_DIRS[0]


@dataclass
class FrontOptions:
    """What differs between one nginx and another; the rest comes from the app's config."""

    listen: str
    app: str
    redis: str
    prefix: str
    redis_password: str = ""
    redis_db: int = 0
    key_prefix: str = ""
    redis_timeout_ms: int = 100
    workers: str = "auto"
    access_log: str | None = None
    error_log: str | None = None
    module_dir: str | None = None
    flush_interval: float = 0.5
    proxy_read_timeout: str = "35s"
    limits: dict = field(default_factory=dict)
    # DNS server(s) for a Redis named by host name (Lua's sockets need nginx's resolver;
    # the upstream is resolved once at start-up): 127.0.0.11 in Docker.
    resolver: str | None = None


def front_options(
    config,
    *,
    app_addr,
    redis_addr=None,
    redis_password=None,
    redis_db=None,
    key_prefix=None,
    **rest,
):
    """FrontOptions, with Redis's address, password and database taken from the app's
    REDIS_URL and the key prefix from CACHE_KEY_PREFIX unless given."""
    url = urlsplit(config.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    if redis_addr is None:
        redis_addr = f"{url.hostname or '127.0.0.1'}:{url.port or 6379}"
    if redis_password is None:
        redis_password = url.password or ""
    if redis_db is None:
        path = url.path.strip("/")
        redis_db = int(path) if path.isdigit() else 0
    if key_prefix is None:
        key_prefix = config.get("CACHE_KEY_PREFIX") or ""
    return FrontOptions(
        app=app_addr,
        redis=redis_addr,
        redis_password=redis_password,
        redis_db=redis_db,
        key_prefix=key_prefix,
        **rest,
    )


def _lua_string(text):
    """A Lua string literal of any text: three-digit decimal escapes for all but plain
    characters (a shorter one would take a digit after it in)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:,;/=*+")
    return '"' + "".join(c if c in safe else f"\\{b:03d}" for c in text for b in c.encode()) + '"'


def _lua_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"[{_lua_value(k)}] = {_lua_value(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list | tuple):
        return "{" + ", ".join(_lua_value(v) for v in value) + "}"
    return _lua_string(str(value))


def lua_settings(config, options):
    """The Lua table ``S`` the hit path reads."""
    redis_host, redis_port = _address(options.redis, "--redis")
    ttl = config["METADATA_TTL"]
    timeout = int(options.redis_timeout_ms)
    families = [f for f in FAMILIES if f != STATS]
    return {
        # The app not reading Redis: neither does the front (it could hold old entries).
        "enabled": bool(config["METADATA_CACHE_ENABLED"]),
        "redis_host": redis_host,
        "redis_port": redis_port,
        "redis_password": options.redis_password or "",
        "redis_db": int(options.redis_db),
        "connect_ms": timeout,
        "send_ms": timeout,
        "read_ms": timeout,
        "idle_ms": 30000,
        "pool_size": 64,
        "key_prefix": options.key_prefix,
        "views_key": options.key_prefix + VIEWS_KEY,
        "hits_key": options.key_prefix + FRONT_HITS_KEY,
        "keep": str(config["POPULARITY_SIZE"]),
        # Sent with EVAL (a flush every flush_interval): Redis never lacks it.
        "view_counts_script": SOURCES["view_counts"],
        # As crew7/metadata/views.py derives it from METADATA_TTL.
        "cache_control": (
            f"public, max-age={ttl}, stale-while-revalidate={ttl}, stale-if-error=86400"
        ),
        "window": float(config["CACHE_EARLY_REFRESH_WINDOW"]),
        "beta": float(config["XFETCH_BETA"]),
        "compute_estimate": {f: FAMILIES[f].compute_estimate for f in families},
        "families": families,
        "flush_interval": float(options.flush_interval),
        "max_batch": MAX_BATCH,
        # Token images: /images/<kind>/<id>.svg is read from <key><id>.
        "images": {
            kind: {
                "family": DOCUMENT_TYPES[f"{kind}_image"].family,
                "key": options.key_prefix
                + DOCUMENT_TYPES[f"{kind}_image"].key.partition("{id}")[0],
            }
            for kind in ("crew", "agent")
        },
        "content_type": {
            DOCUMENT_TYPES[f"{kind}_image"].family: IMAGE_CONTENT_TYPE for kind in ("crew", "agent")
        },
    }


def render_front_config(config, options):
    """A complete nginx.conf for ``options`` and the app configured by ``config``.

    The front reads one Redis server: an app on a Cluster (views buffered in the app,
    documents spread over slots) or behind Sentinel (the master moves) is refused.
    """
    if config.get("REDIS_CLUSTER_NODES") or config.get("REDIS_SENTINELS"):
        raise ValueError(
            "the front reads one Redis server: not with REDIS_CLUSTER_NODES or REDIS_SENTINELS"
        )
    package = files(__package__)
    template = package.joinpath("nginx.conf.in").read_text()
    lua = package.joinpath("front.lua").read_text()
    settings = lua_settings(config, options)
    lua_block = "S = " + _lua_value(settings) + "\ncrew7_front = (function()\n" + lua + "end)()"
    prefix = options.prefix.rstrip("/") or "/"
    module_dir = options.module_dir or find_module_dir()
    limits = dict(RATE_LIMITS)
    unknown = set(options.limits or {}) - set(RATE_LIMITS)
    if unknown:
        raise ValueError(f"no rate limit zone {sorted(unknown)}: the zones are {list(RATE_LIMITS)}")
    limits.update(options.limits or {})
    values = {
        "load_modules": "\n".join(f"load_module {module_dir}/{m};" for m in MODULES),
        "workers": str(options.workers),
        "pid": f"{prefix}/nginx.pid",
        "error_log": options.error_log or f"{prefix}/error.log",
        "access_log": options.access_log or f"{prefix}/access.log",
        "temp": prefix,
        "app": options.app,
        "listen": options.listen,
        "proxy_read_timeout": options.proxy_read_timeout,
        "image_csp": IMAGE_CSP,
        "docs_csp": DOCS_CSP,
    }
    for zone, (rate, burst) in limits.items():
        values[f"rate_{zone}"] = rate
        values[f"burst_{zone}"] = str(burst)
    redis_host = settings["redis_host"]
    if options.resolver:
        values["resolver"] = f"    resolver {options.resolver} valid=30s ipv6=off;"
    elif not _is_ip(redis_host):
        raise ValueError(f"--redis names host {redis_host!r}: give --resolver too (or its IP)")
    else:
        values["resolver"] = "    # (Redis by address: no resolver needed.)"
    _address(options.app, "--app")
    _address(options.listen, "--listen")
    text = template
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = [w for w in text.split() if w.startswith("@") and w.endswith("@") and w != "@lua@"]
    if leftover:
        raise ValueError(f"unrendered placeholders: {leftover}")
    # Last: the Lua text is not searched for placeholders.
    indented = "\n".join(("        " + line) if line else "" for line in lua_block.splitlines())
    return text.replace("@lua@", indented)
