"""The metadata cache: the only package that knows key names, TTLs and Redis.

Keys (``CACHE_NAMESPACE`` is prepended, empty by default)::

    metadata:crew:{crew_id}          a crew's document (JSON text)
    metadata:agent:{agent_id}        an agent's document
    metadata:crew:{crew_id}:agents   the documents of a crew's agents (a JSON list)
    image:crew:{crew_id}             a crew's token image (SVG, built from its document)
    image:agent:{agent_id}           an agent's token image
    stats:popular_crews              GET /stats/popular-crews
    stats:leaderboard:{type}         GET /stats/leaderboard/<type>
    stats:crew_views                 sorted set: metadata views per crew (popularity)
    fence:<document key>             a token replaced by every invalidation of that key
    lock:<document key>              single-flight lease of the request computing the key

Values are the documents' JSON text, never pickle: whoever can write to a shared Redis
could otherwise run code in the app. An unknown or private id is cached as ``null``
(``NOT_FOUND``).

Why not ``Cache.memoize``/``Cache.cached`` around the builder: Flask-Caching 2.5's
``memoize`` hashes keys (operators could not ``redis-cli GET metadata:crew:123``), costs
two round trips per hit and ignores a replaced key maker while ``delete_memoized`` honours
it, so invalidations would miss. ``cached(make_cache_key=...)`` gives readable keys in one
GET, but cannot count the view in the same round trip, cannot fence a fill against a
concurrent invalidation, and has no single-flight lock. So Flask-Caching owns the
connection (its Redis, Sentinel and Cluster backends, the key prefix, a JSON serializer),
and this service runs the read-through on that client with small Lua scripts:

* a hit is one round trip (one EVALSHA: GET + PTTL + the popularity count) whose
  bytes go to the client as they are stored;
* the one request that computes a miss reads the key's fence as it takes the lock,
  before the database is read (creating a fence when there is none), and stores its
  document only if that same fence is still there: a replaced fence (an invalidation)
  or a missing one (a flush, restart, eviction or expiry) refuses the fill;
* one request per cold key computes (``SET lock NX PX``); the others wait for its
  result; a holder that dies leaves a lease that expires;
* hot keys are refreshed early by one request (XFetch), so expiry costs no one a wait.

Redis failures never reach clients: every call is bounded by short socket timeouts with
no retries, and a circuit breaker skips Redis for a few seconds after consecutive
failures. Invalidations that could not be applied are kept and retried, and Redis is not
read again by this process until they are applied.

Where things are: ``documents`` (the registry of document types: keys, TTL settings,
families), ``client`` (the Redis client and Flask-Caching's settings), ``scripts`` (the
Lua scripts and ``Scripts.run``), ``breaker``, ``counters`` (events and the hit-rate
window), ``read_through`` (a hit, a miss, batches, warming, early refresh),
``invalidation``, ``popularity`` (views, Space-Saving, the Cluster's view buffer) and
``service`` (``CacheService`` itself). The package imports nothing else of crew7: what it
needs from the app (Prometheus counters, running work after the response) is handed to
``CacheService`` at start-up.
"""

from crew7.services.cache.breaker import CircuitBreaker
from crew7.services.cache.client import (
    REDIS_ERRORS,
    CacheSetupError,
    CacheUnavailable,
    connect,
    flask_caching_config,
)
from crew7.services.cache.counters import Counters, HitRateWindow
from crew7.services.cache.documents import (
    AGENT,
    AGENT_IMAGE,
    CREW,
    CREW_AGENTS,
    CREW_IMAGE,
    DOCUMENT_TYPES,
    FAMILIES,
    LEADERBOARD_TYPES,
    NOT_FOUND,
    STATS,
    DocumentType,
    document_key,
    document_type_problems,
)
from crew7.services.cache.popularity import ViewBuffer
from crew7.services.cache.service import CacheService, get_cache_service, run_inline

__all__ = [
    "AGENT",
    "AGENT_IMAGE",
    "CREW",
    "CREW_AGENTS",
    "CREW_IMAGE",
    "DOCUMENT_TYPES",
    "FAMILIES",
    "LEADERBOARD_TYPES",
    "NOT_FOUND",
    "REDIS_ERRORS",
    "STATS",
    "CacheService",
    "CacheSetupError",
    "CacheUnavailable",
    "CircuitBreaker",
    "Counters",
    "DocumentType",
    "HitRateWindow",
    "ViewBuffer",
    "connect",
    "document_key",
    "document_type_problems",
    "flask_caching_config",
    "get_cache_service",
    "run_inline",
]
