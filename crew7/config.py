"""Default settings and their validation.

Order of precedence (lowest first): these defaults, ``instance/config.py``, the
environment (``DATABASE_URL``, ``REDIS_URL`` and ``CREW7_<NAME>``), the test dict.
Nothing here reads the environment or touches the disk at import time.
"""

from urllib.parse import urlparse


class DefaultConfig:
    SECRET_KEY = "dev"

    # None means: an SQLite file in the instance folder (resolved by the factory).
    SQLALCHEMY_DATABASE_URI = None
    DATABASE_URL = None
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    REDIS_URL = "redis://127.0.0.1:6379/0"
    # Redis Sentinel: "host:port,host:port" and the master's name (REDIS_URL then unused).
    REDIS_SENTINELS = ""
    REDIS_SENTINEL_MASTER = "mymaster"
    # Redis Cluster: "host:port,host:port" of some nodes (REDIS_URL then unused).
    REDIS_CLUSTER_NODES = ""

    # Request bodies above this get a 413 before any view runs.
    MAX_CONTENT_LENGTH = 64 * 1024
    # Apply werkzeug's ProxyFix (trust one hop of X-Forwarded-*), e.g. behind nginx.
    BEHIND_PROXY = False
    PROXY_HOPS = 1

    # NFT documents
    BASE_URL = "https://app.crew7.ai"
    # Where the documents' images are: unset, this service draws them (/images/...);
    # set, <CDN_URL>/crews/<id>.png and <CDN_URL>/agents/<id>.png.
    CDN_URL = ""
    # Contract-level metadata (/metadata/contract/<collection>): fields that replace the
    # defaults (crew7/services/contract.py), e.g. {"seller_fee_basis_points": 250,
    # "fee_recipient": "0x..."}; from the environment as JSON, or one field at a time
    # (CREW7_CONTRACT_CREWS__fee_recipient=0x...).
    CONTRACT_CREWS = {}
    CONTRACT_AGENTS = {}

    # Cache: TTLs in seconds and the Redis key namespace ("" = keys exactly as documented).
    METADATA_CACHE_ENABLED = True
    METADATA_TTL = 300
    POPULAR_CREWS_TTL = 600
    # The popularity set (stats:crew_views) keeps at most this many crews, the most viewed;
    # only views of public crews that exist are counted, once per crew per request.
    POPULARITY_SIZE = 10000
    STATS_TTL = 180
    NEGATIVE_TTL = 30
    CACHE_NAMESPACE = ""
    # Redis calls must fail fast: a frozen Redis would otherwise hold a request for a minute.
    REDIS_SOCKET_TIMEOUT = 0.25
    REDIS_CONNECT_TIMEOUT = 0.25
    # Circuit breaker: after this many consecutive Redis failures skip Redis for the cooldown.
    BREAKER_THRESHOLD = 3
    BREAKER_COOLDOWN = 5.0

    # Single flight: the lease of the one request computing a cold key (a holder that dies
    # is replaced after it), and how long the others wait for its result at most.
    CACHE_LOCK_LEASE = 2.0
    CACHE_WAIT_MAX = 3.0
    # XFetch: hot keys are refreshed early, with a chance that rises over about this many
    # seconds before expiry (or the computation time times XFETCH_BETA, if larger).
    CACHE_EARLY_REFRESH_WINDOW = 1.0
    XFETCH_BETA = 1.0
    # Fault injection for the concurrency tests: seconds between the database read and
    # the fill. Always 0 in production.
    CACHE_FILL_DELAY = 0.0
    # Log every computation of a document (key and pid), for tests and debugging.
    CACHE_TRACE = False

    # A warning is logged when the hit rate over the last HIT_RATE_WINDOW seconds (with at
    # least HIT_RATE_MIN_LOOKUPS lookups) falls below this fraction; 0 turns it off.
    HIT_RATE_ALERT_THRESHOLD = 0.5
    HIT_RATE_WINDOW = 60
    HIT_RATE_MIN_LOOKUPS = 100

    # Warming at start-up (once per deployment, not per worker).
    CACHE_WARM_ON_START = True
    CACHE_WARM_COUNT = 10
    # Processes sharing it warm once; default: the workers of one gunicorn master.
    DEPLOYMENT_ID = ""

    # The cache change log (cache_changes, written by database triggers) and its relay:
    # seconds between polls in each serving process (0: no relay thread); how long
    # entries are kept; how far back a lost watermark replays beyond the longest TTL;
    # how long an id missing below newer entries (a transaction still open, or rolled
    # back) holds the watermark back.
    CACHE_CHANGELOG_INTERVAL = 0.25
    CACHE_CHANGELOG_RETENTION = 3600
    CACHE_CHANGELOG_REPLAY_MARGIN = 60
    CACHE_CHANGELOG_GAP_WAIT = 30.0

    # The change feed (GET /metadata/updates, crew7/services/feed.py): seconds a consumer's
    # cursor stays valid; the change log keeps entries at least this long.
    FEED_RETENTION = 7 * 24 * 3600

    # API
    PAGE_SIZE_DEFAULT = 20
    PAGE_SIZE_MAX = 100
    API_TITLE = "crew7"
    API_VERSION = "1.0.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"

    # Cached metadata documents answered before Flask (crew7/metadata/fast_path.py): the
    # same bytes, headers and counts as the views', for less CPU per hit.
    METADATA_FAST_PATH = True

    # Benchmarks only: exposes /bench/static, a route serving fixed bytes.
    BENCH_ROUTES = False

    # Webhooks (crew7.services.webhooks): seconds between delivery polls in each serving
    # process (0: no delivery thread); events per POST; seconds to connect, and for a whole
    # attempt; retries after base * 2**n seconds with full jitter, capped; a subscription is
    # disabled after this many consecutive failures; the attempts log is kept so long.
    # Private, loopback and link-local receivers are refused unless allowed.
    WEBHOOKS_INTERVAL = 1.0
    WEBHOOKS_BATCH = 100
    WEBHOOKS_CONNECT_TIMEOUT = 3.0
    WEBHOOKS_TIMEOUT = 10.0
    WEBHOOKS_RETRY_BASE = 5.0
    WEBHOOKS_RETRY_MAX = 3600.0
    WEBHOOKS_MAX_FAILURES = 15
    WEBHOOKS_LOG_RETENTION = 7 * 24 * 3600
    WEBHOOKS_ALLOW_PRIVATE = False


_INT_SETTINGS = {
    "METADATA_TTL": 1,
    "POPULAR_CREWS_TTL": 1,
    "POPULARITY_SIZE": 1,
    "STATS_TTL": 1,
    "NEGATIVE_TTL": 1,
    "CACHE_WARM_COUNT": 0,
    "MAX_CONTENT_LENGTH": 1,
    "PAGE_SIZE_DEFAULT": 1,
    "PAGE_SIZE_MAX": 1,
    "BREAKER_THRESHOLD": 1,
    "PROXY_HOPS": 1,
    "HIT_RATE_WINDOW": 1,
    "HIT_RATE_MIN_LOOKUPS": 1,
    "CACHE_CHANGELOG_RETENTION": 1,
    "CACHE_CHANGELOG_REPLAY_MARGIN": 0,
    "WEBHOOKS_BATCH": 1,
    "WEBHOOKS_MAX_FAILURES": 1,
    "WEBHOOKS_LOG_RETENTION": 60,
    "FEED_RETENTION": 1,
}
_FLOAT_SETTINGS = {
    "CACHE_LOCK_LEASE": 0.05,
    "CACHE_WAIT_MAX": 0.05,
    "CACHE_EARLY_REFRESH_WINDOW": 0.0,
    "XFETCH_BETA": 0.0,
    "CACHE_FILL_DELAY": 0.0,
    "HIT_RATE_ALERT_THRESHOLD": 0.0,
    "REDIS_SOCKET_TIMEOUT": 0.001,
    "REDIS_CONNECT_TIMEOUT": 0.001,
    "BREAKER_COOLDOWN": 0.0,
    "CACHE_CHANGELOG_INTERVAL": 0.0,
    "CACHE_CHANGELOG_GAP_WAIT": 0.0,
    "WEBHOOKS_INTERVAL": 0.0,
    "WEBHOOKS_CONNECT_TIMEOUT": 0.01,
    "WEBHOOKS_TIMEOUT": 0.01,
    "WEBHOOKS_RETRY_BASE": 0.0,
    "WEBHOOKS_RETRY_MAX": 0.0,
}
_BOOL_SETTINGS = (
    "METADATA_CACHE_ENABLED",
    "BEHIND_PROXY",
    "CACHE_WARM_ON_START",
    "BENCH_ROUTES",
    "CACHE_TRACE",
    "METADATA_FAST_PATH",
    "WEBHOOKS_ALLOW_PRIVATE",
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(RuntimeError):
    """A setting is invalid; the message names it."""


def _coerce_bool(name, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip().lower() in _TRUE | _FALSE:
        return str(value).strip().lower() in _TRUE
    raise ConfigError(f"invalid setting {name}={value!r}: expected true or false")


def _coerce_number(name, value, kind, minimum):
    if isinstance(value, bool):
        raise ConfigError(f"invalid setting {name}={value!r}: expected a number")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"invalid setting {name}={value!r}: expected {expected}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise ConfigError(f"invalid setting {name}={value!r}: expected an integer")
    if number < minimum:
        raise ConfigError(f"invalid setting {name}={value!r}: must be at least {minimum}")
    return number


def _check_url(name, value, schemes):
    parsed = urlparse(str(value))
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise ConfigError(
            f"invalid setting {name}={value!r}: expected a URL with scheme {' or '.join(schemes)}"
        )


def parse_nodes(name, value):
    """ "host:port,host:port" (or a list of pairs) -> [(host, port)]; empty -> []."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    nodes = []
    for item in items:
        try:
            host, port = item.rsplit(":", 1) if isinstance(item, str) else item
            nodes.append((str(host).strip(), int(port)))
        except (TypeError, ValueError):
            raise ConfigError(
                f"invalid setting {name}={value!r}: expected host:port[,host:port...]"
            ) from None
    return nodes


def validate_config(config):
    """Coerce typed settings in place; raise ConfigError naming the first bad one."""
    for name in _BOOL_SETTINGS:
        config[name] = _coerce_bool(name, config.get(name))
    for name, minimum in _INT_SETTINGS.items():
        config[name] = _coerce_number(name, config.get(name), int, minimum)
    for name, minimum in _FLOAT_SETTINGS.items():
        config[name] = _coerce_number(name, config.get(name), float, minimum)
    if config["HIT_RATE_ALERT_THRESHOLD"] > 1:
        raise ConfigError("invalid setting HIT_RATE_ALERT_THRESHOLD: a fraction from 0 to 1")
    if config["CACHE_WAIT_MAX"] <= config["CACHE_LOCK_LEASE"]:
        raise ConfigError(
            "invalid setting CACHE_WAIT_MAX: must exceed CACHE_LOCK_LEASE, so that waiters "
            "outlive the lease of a holder that died"
        )
    longest_ttl = max(config["METADATA_TTL"], config["POPULAR_CREWS_TTL"], config["STATS_TTL"])
    if config["CACHE_CHANGELOG_RETENTION"] < longest_ttl + config["CACHE_CHANGELOG_REPLAY_MARGIN"]:
        raise ConfigError(
            "invalid setting CACHE_CHANGELOG_RETENTION: shorter than the longest document TTL "
            "plus CACHE_CHANGELOG_REPLAY_MARGIN, so a lost watermark could not be replayed"
        )
    if config["WEBHOOKS_BATCH"] > 1000:
        raise ConfigError("invalid setting WEBHOOKS_BATCH: at most 1000 events per delivery")
    if config["WEBHOOKS_RETRY_MAX"] < config["WEBHOOKS_RETRY_BASE"]:
        raise ConfigError("invalid setting WEBHOOKS_RETRY_MAX: smaller than WEBHOOKS_RETRY_BASE")
    if config["WEBHOOKS_CONNECT_TIMEOUT"] > config["WEBHOOKS_TIMEOUT"]:
        raise ConfigError(
            "invalid setting WEBHOOKS_CONNECT_TIMEOUT: longer than WEBHOOKS_TIMEOUT, the bound "
            "of a whole attempt"
        )
    if config["PAGE_SIZE_DEFAULT"] > config["PAGE_SIZE_MAX"]:
        raise ConfigError("invalid setting PAGE_SIZE_DEFAULT: larger than PAGE_SIZE_MAX")
    for name in ("BASE_URL", "CDN_URL"):
        if name == "CDN_URL" and not config.get(name):
            config[name] = ""  # optional: images served by this service
            continue
        _check_url(name, config.get(name), ("http", "https"))
        config[name] = str(config[name]).rstrip("/")
    _check_url("REDIS_URL", config.get("REDIS_URL"), ("redis", "rediss", "unix"))
    db_url = config.get("SQLALCHEMY_DATABASE_URI")
    if not isinstance(db_url, str) or "://" not in db_url:
        raise ConfigError(f"invalid setting DATABASE_URL={db_url!r}: expected a database URL")
    for name in ("REDIS_SENTINELS", "REDIS_CLUSTER_NODES"):
        config[name] = parse_nodes(name, config.get(name))
    if config["REDIS_SENTINELS"] and config["REDIS_CLUSTER_NODES"]:
        raise ConfigError("invalid settings: REDIS_SENTINELS and REDIS_CLUSTER_NODES both set")
    namespace = config.get("CACHE_NAMESPACE")
    if not isinstance(namespace, str) or any(c.isspace() for c in namespace):
        raise ConfigError(f"invalid setting CACHE_NAMESPACE={namespace!r}: no spaces allowed")
    secret = config.get("SECRET_KEY")
    if not secret:
        raise ConfigError("invalid setting SECRET_KEY: must not be empty")
    return config
