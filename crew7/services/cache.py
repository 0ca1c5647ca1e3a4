"""The metadata cache: the only module that knows key names, TTLs and Redis.

Keys (``CACHE_NAMESPACE`` is prepended, empty by default)::

    metadata:crew:{crew_id}          a crew's document (JSON text)
    metadata:agent:{agent_id}        an agent's document
    metadata:crew:{crew_id}:agents   the documents of a crew's agents (a JSON list)
    stats:popular_crews              GET /stats/popular-crews
    stats:leaderboard:{type}         GET /stats/leaderboard/<type>
    stats:crew_views                 sorted set: metadata views per crew (popularity)
    fence:<document key>             a token replaced by every invalidation of that key
    lock:<document key>              single-flight lease of the request computing the key

Values are the documents' JSON text, never pickle: whoever can write to a shared Redis
could otherwise run code in the app. An unknown or private id is cached as ``null``.

Why not ``Cache.memoize``/``Cache.cached`` around the builder: Flask-Caching 2.5's
``memoize`` hashes keys (operators could not ``redis-cli GET metadata:crew:123``), costs
two round trips per hit and ignores a replaced key maker while ``delete_memoized`` honours
it, so invalidations would miss. ``cached(make_cache_key=...)`` gives readable keys in one
GET, but cannot count the view in the same round trip, cannot fence a fill against a
concurrent invalidation, and has no single-flight lock. So Flask-Caching owns the
connection (its Redis, Sentinel and Cluster backends, the key prefix, a JSON serializer),
and this service runs the read-through on that client with small Lua scripts:

* a hit is one round trip (one EVALSHA: GET + PTTL + ZINCRBY for popularity) whose
  bytes go to the client as they are stored;
* a miss reads the key's fence in that same round trip, before the database is read,
  and stores its document only if the fence is unchanged (the set-after-delete race);
* one request per cold key computes (``SET lock NX PX``); the others wait for its
  result; a holder that dies leaves a lease that expires;
* hot keys are refreshed early by one request (XFetch), so expiry costs no one a wait.

Redis failures never reach clients: every call is bounded by short socket timeouts with
no retries, and a circuit breaker skips Redis for a few seconds after consecutive
failures. Invalidations that could not be applied are kept and retried, and Redis is not
read again by this process until they are applied.
"""

import json
import logging
import math
import os
import random
import threading
import time
import uuid

import redis
import redis.cluster
from cachelib.serializers import BaseSerializer
from flask import after_this_request, current_app, has_request_context
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# redis-py's cluster client raises RedisClusterException, which is not a RedisError.
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)

CREW = "crew"
AGENT = "agent"
CREW_AGENTS = "crew_agents"
STATS = "stats"
NULL = b"null"

LEADERBOARD_TYPES = ("runs", "success-rate")


class JSONTextSerializer(BaseSerializer):
    """Flask-Caching serializer: values are JSON text; bytes and str are stored as they are."""

    def dumps(self, value):
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, value):
        if value is None:
            return None
        return json.loads(value)


def flask_caching_config(config):
    """Flask-Caching settings derived from ours: its Redis client is the one we use."""
    options = {
        "socket_timeout": config["REDIS_SOCKET_TIMEOUT"],
        "socket_connect_timeout": config["REDIS_CONNECT_TIMEOUT"],
        # redis-py 8 retries 10 times with backoff by default: a minute per call
        # against a frozen Redis. One attempt, then the breaker takes over.
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    settings = {
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": config["REDIS_URL"],
        "CACHE_KEY_PREFIX": config["CACHE_NAMESPACE"],
        "CACHE_DEFAULT_TIMEOUT": config["METADATA_TTL"],
        "CACHE_OPTIONS": options,
        "CACHE_SERIALIZER": JSONTextSerializer(),
    }
    if config["REDIS_SENTINELS"]:
        # Flask-Caching's Sentinel backend; we use its master client only, so reads that
        # must see the latest write never go to a lagging replica.
        settings.update(
            CACHE_TYPE="RedisSentinelCache",
            CACHE_REDIS_URL="",
            CACHE_REDIS_SENTINELS=config["REDIS_SENTINELS"],
            CACHE_REDIS_SENTINEL_MASTER=config["REDIS_SENTINEL_MASTER"],
        )
        options["sentinel_socket_timeout"] = config["REDIS_SOCKET_TIMEOUT"]
        options["sentinel_socket_connect_timeout"] = config["REDIS_CONNECT_TIMEOUT"]
    elif config["REDIS_CLUSTER_NODES"]:
        settings.update(
            CACHE_TYPE="RedisClusterCache",
            CACHE_REDIS_URL="",
            CACHE_REDIS_CLUSTER=",".join(f"{h}:{p}" for h, p in config["REDIS_CLUSTER_NODES"]),
        )
        options.pop("health_check_interval")
    return settings


# Popularity: a view is counted only for a document that exists and is public (never for
# the negative entry of an unknown or private id, which anyone can ask for). The set holds
# at most `keep` crews, kept by Space-Saving (Metwally, Agrawal, El Abbadi, ICDT 2005): a
# crew not in a full set takes the place of the least viewed one and inherits its count
# plus its own views, so the set stays bounded, a newcomer can still rise, and every
# crew viewed more than total/keep times is in it.
_COUNT_VIEW = """
local function count_view(views, member, n, keep)
  if redis.call('ZSCORE', views, member) or redis.call('ZCARD', views) < keep then
    redis.call('ZINCRBY', views, n, member)
    return
  end
  local least = redis.call('ZRANGE', views, 0, 0, 'WITHSCORES')
  redis.call('ZREM', views, least[1])
  redis.call('ZADD', views, tonumber(least[2]) + n, member)
end
"""

# KEYS: doc, fence[, views]  ARGV: [member, keep]
# -> {1, value, pttl} on a hit, {0} on a miss
_READ = (
    _COUNT_VIEW
    + """
local v = redis.call('GET', KEYS[1])
if v then
  if #KEYS > 2 and v ~= 'null' then count_view(KEYS[3], ARGV[1], 1, tonumber(ARGV[2])) end
  return {1, v, redis.call('PTTL', KEYS[1])}
end
return {0}
"""
)

# KEYS: views  ARGV: member, keep, n: n views of a public document (a miss's, or a
# Cluster's buffered ones).
_VIEW = (
    _COUNT_VIEW
    + """
count_view(KEYS[1], ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[2]))
return 1
"""
)

# Fences that cannot be lost. The lock holder reads the document's fence before it reads
# the database, creating one (a fresh random token) when there is none, and its fill
# lands only if the same token is still there. Whatever removes a fence (an invalidation
# replacing it, a restart or failover that comes back empty, FLUSHALL, eviction under any
# maxmemory-policy, expiry) leaves either another token or none, and both refuse the
# fill: losing a fence costs a refused fill, never a stale document.
_FENCE = """
local function fence_of(fence, new_token, ttl)
  local f = redis.call('GET', fence)
  if f then return f end
  redis.call('SET', fence, new_token, 'EX', ttl)
  return new_token
end
"""

# KEYS: doc, lock, fence  ARGV: lock_token, lease_ms, new_fence, fence_ttl
# -> {1, value} if the value is there by now, {2, fence} when the lock is ours, {0} if
# held. Checking the value and taking the lock in one step closes the window in which a
# holder fills and releases between our miss and our lock attempt.
_ACQUIRE = (
    _FENCE
    + """
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, fence_of(KEYS[3], ARGV[3], ARGV[4])}
end
return {0}
"""
)

# KEYS: lock, fence  ARGV: lock_token, lease_ms, new_fence, fence_ttl
# -> the fence when the lock is ours (an early refresh of a key still cached), else nil.
_LEASE = (
    _FENCE
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return fence_of(KEYS[2], ARGV[3], ARGV[4])
"""
)

# KEYS: doc, fence, lock  ARGV: value, ttl_ms, fence_seen, lock_token
# Stores the value only if the fence is still the one read before the database: a
# missing fence refuses the fill like a replaced one.
_FILL = """
local stored = 0
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
return stored
"""

# KEYS: doc, fence  ARGV: new fence token, fence ttl
_INVALIDATE = """
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return redis.call('DEL', KEYS[1])
"""

# KEYS: doc keys..., views  ARGV: keep, crew ids -> the documents (MGET) after counting a
# view of each one found: a batch of 100 in one command, rather than an MGET and 100
# ZINCRBYs. The caller passes each id once.
_BATCH_READ = (
    _COUNT_VIEW
    + """
local docs = redis.call('MGET', unpack(KEYS, 1, #KEYS - 1))
local keep = tonumber(ARGV[1])
for i = 1, #docs do
  if docs[i] and docs[i] ~= 'null' then count_view(KEYS[#KEYS], ARGV[i + 1], 1, keep) end
end
return docs
"""
)

# Many misses at once (a batch, warming): _ACQUIRE and _FILL over (doc, lock, fence)
# triples, one round trip each for the whole set. Not on a Cluster: the triples of
# different documents live in different slots.
# KEYS: doc1, lock1, fence1, doc2, ...  ARGV: lock_token, lease_ms, fence_ttl, new fences...
# -> per document, as _ACQUIRE: {1, value}, {2, fence} or {0}
_ACQUIRE_MANY = (
    _FENCE
    + """
local out = {}
for i = 1, #KEYS, 3 do
  local v = redis.call('GET', KEYS[i])
  if v then
    out[#out + 1] = {1, v}
  elseif redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = {2, fence_of(KEYS[i + 2], ARGV[3 + (i + 2) / 3], ARGV[3])}
  else
    out[#out + 1] = {0}
  end
end
return out
"""
)

# KEYS: doc1, lock1, fence1, ...  ARGV: lock_token, then value, ttl_ms, fence_seen per doc
# -> per document 1 if stored (its fence unchanged), else 0; our locks are released.
_FILL_MANY = """
local out = {}
for i = 1, #KEYS, 3 do
  local a = 2 + (i - 1) / 3 * 3
  if redis.call('GET', KEYS[i + 2]) == ARGV[a + 2] then
    redis.call('SET', KEYS[i], ARGV[a], 'PX', ARGV[a + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  if redis.call('GET', KEYS[i + 1]) == ARGV[1] then redis.call('DEL', KEYS[i + 1]) end
end
return out
"""

# KEYS: views  ARGV: keep, members...: a view of each (the misses of a batch).
_VIEWS = (
    _COUNT_VIEW
    + """
for i = 2, #ARGV do count_view(KEYS[1], ARGV[i], 1, tonumber(ARGV[1])) end
return #ARGV - 1
"""
)

# KEYS: lock, doc -> {lock exists, value}: one atomic look at a key being computed.
_PEEK = """
return {redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2])}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ViewBuffer:
    """Views counted in memory and flushed to Redis about once a second (Cluster only)."""

    INTERVAL = 1.0

    def __init__(self, service):
        self.service = service
        self.counts = {}
        self.lock = threading.Lock()
        self.timer = None

    def add(self, member):
        with self.lock:
            self.counts[member] = self.counts.get(member, 0) + 1
            if self.timer is None:
                self.timer = threading.Timer(self.INTERVAL, self.flush)
                self.timer.daemon = True
                self.timer.start()

    def flush(self):
        with self.lock:
            counts, self.counts, self.timer = self.counts, {}, None
        if not counts:
            return

        def run():
            service = self.service
            for member, n in counts.items():
                service._evalsha(
                    "view", [service.views_key()], [member, service.popularity_size, n]
                )

        try:
            self.service._call(run)
        except CacheUnavailable:
            pass  # popularity is best effort: a lost second of views changes little


class CacheUnavailable(Exception):
    """Redis is skipped (breaker open) or failed: answer from the database."""


class CircuitBreaker:
    """Per-process breaker: open after ``threshold`` consecutive failures, for ``cooldown`` s.

    After the cooldown one caller probes Redis (half-open); success closes it.
    One warning when it opens, one when it closes.
    """

    def __init__(self, threshold, cooldown, on_close=None):
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at = None
        self.on_close = on_close
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self):
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self):
        if self.opened_at is None:
            return True
        with self._lock:
            if self._probing or time.monotonic() - self.opened_at < self.cooldown:
                return False
            self._probing = True
            return True

    def success(self):
        if self.opened_at is None and not self.failures:
            return
        with self._lock:
            reopened = self.opened_at is not None
            self.failures = 0
            self._probing = False
            if reopened and self.on_close is not None and not self.on_close():
                # Pending invalidations could not be applied: stay open.
                self.opened_at = time.monotonic()
                return
            self.opened_at = None
        if reopened:
            _set_breaker_gauge(0)
            log.warning("Redis reachable again: cache circuit breaker closed")

    def failure(self, exc):
        with self._lock:
            self.failures += 1
            self._probing = False
            if self.opened_at is not None:
                self.opened_at = time.monotonic()
                return
            if self.failures < self.threshold:
                return
            self.opened_at = time.monotonic()
        _set_breaker_gauge(1)
        log.warning(
            "Redis unavailable (%s: %s): cache circuit breaker open, serving from the "
            "database for %.1f s",
            type(exc).__name__,
            exc,
            self.cooldown,
        )


def _set_breaker_gauge(value):
    from crew7.services import metrics

    metrics.breaker_open.set(value)


class Counters:
    """What the cache did: per-process totals (for tests and this process) and the
    Prometheus counters per key family (aggregated across workers), in one call."""

    _FIELDS = {
        "hit": "hits",
        "miss": "misses",
        "bypass": "bypasses",
        "computation": "computations",
        "computation_error": "computation_errors",
        "wait": "waits",
        "wait_timeout": "wait_timeouts",
        "fill_rejected": "fills_rejected",
        "early_refresh": "early_refreshes",
    }

    def __init__(self):
        from crew7.services import metrics

        self._metric = {
            (family, event): metrics.cache_events.labels(family, event)
            for family in (CREW, AGENT, CREW_AGENTS, STATS)
            for event in self._FIELDS
        }
        self._redis_errors = metrics.redis_errors
        self.window = HitRateWindow()
        self.reset()

    def reset(self):
        for field in self._FIELDS.values():
            setattr(self, field, 0)
        self.redis_errors = 0

    def record(self, family, event, n=1):
        field = self._FIELDS[event]
        setattr(self, field, getattr(self, field) + n)
        self._metric[(family, event)].inc(n)
        if event in ("hit", "miss", "bypass"):
            self.window.add(event == "hit", n)

    def redis_error(self):
        self.redis_errors += 1
        self._redis_errors.inc()

    def as_dict(self):
        return {f: getattr(self, f) for f in (*self._FIELDS.values(), "redis_errors")}


class HitRateWindow:
    """Hit rate over a sliding window (per process); warns when it falls below a threshold.

    Lookups are counted in one-second buckets; the check runs at most every few seconds,
    so the hot path pays a dict update.
    """

    def __init__(self, seconds=60, threshold=0.0, min_lookups=100):
        self.configure(seconds, threshold, min_lookups)
        self.buckets = {}
        self._next_check = 0.0
        self._alerting = False

    def configure(self, seconds, threshold, min_lookups):
        self.seconds = seconds
        self.threshold = threshold
        self.min_lookups = min_lookups

    def add(self, hit, n=1):
        now = time.monotonic()
        second = int(now)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = [0, 0]
        bucket[0 if hit else 1] += n
        if now >= self._next_check:
            self._next_check = now + min(5.0, self.seconds / 4)
            self.check(now)

    def rate(self, now=None):
        now = time.monotonic() if now is None else now
        horizon = int(now) - self.seconds
        for second in [s for s in self.buckets if s <= horizon]:
            del self.buckets[second]
        hits = sum(b[0] for b in self.buckets.values())
        total = hits + sum(b[1] for b in self.buckets.values())
        return (hits / total if total else None), total

    def check(self, now=None):
        if not self.threshold:
            return
        rate, total = self.rate(now)
        low = rate is not None and total >= self.min_lookups and rate < self.threshold
        if low and not self._alerting:
            log.warning(
                "cache hit rate %.1f%% over the last %d s (%d lookups) is below %.0f%%",
                100 * rate,
                self.seconds,
                total,
                100 * self.threshold,
            )
        elif not low and self._alerting and rate is not None:
            log.warning("cache hit rate back to %.1f%%", 100 * rate)
        self._alerting = low


class CacheService:
    """Read-through cache of metadata documents and stats over Flask-Caching's Redis client."""

    FENCE_TTL = 86400

    def __init__(self, client, config, prefix=""):
        self.client = client
        self.prefix = prefix or ""
        self.enabled = config["METADATA_CACHE_ENABLED"]
        self.lease_ms = int(config["CACHE_LOCK_LEASE"] * 1000)
        self.wait_max = config["CACHE_WAIT_MAX"]
        self.refresh_window = config["CACHE_EARLY_REFRESH_WINDOW"]
        self.xfetch_beta = config["XFETCH_BETA"]
        self.fill_delay = config["CACHE_FILL_DELAY"]
        self.trace = config["CACHE_TRACE"]
        self.ttl = {
            CREW: config["METADATA_TTL"],
            AGENT: config["METADATA_TTL"],
            CREW_AGENTS: config["METADATA_TTL"],
            STATS: config["STATS_TTL"],
        }
        self.popular_ttl = config["POPULAR_CREWS_TTL"]
        self.stats_ttl = config["STATS_TTL"]
        self.negative_ttl = config["NEGATIVE_TTL"]
        self.popularity_size = config["POPULARITY_SIZE"]
        self.counters = Counters()
        self.counters.window.configure(
            config["HIT_RATE_WINDOW"],
            config["HIT_RATE_ALERT_THRESHOLD"],
            config["HIT_RATE_MIN_LOOKUPS"],
        )
        self._pending = set()
        self._pending_lock = threading.Lock()
        self._retry_timer = None
        self.breaker = CircuitBreaker(
            config["BREAKER_THRESHOLD"], config["BREAKER_COOLDOWN"], self._flush_pending
        )
        # Seconds a computation of each family took (moving average): XFetch's delta.
        self._delta = {CREW: 0.01, AGENT: 0.005, CREW_AGENTS: 0.01, STATS: 0.05}
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        # On a Cluster the views sorted set lives in another slot than the document, so
        # the hit's script cannot count the view: views are buffered and flushed apart.
        self.views = ViewBuffer(self) if self.cluster else None
        self._scripts = {}
        if client is not None:
            self._scripts = {
                "read": client.register_script(_READ),
                "view": client.register_script(_VIEW),
                "fill": client.register_script(_FILL),
                "acquire": client.register_script(_ACQUIRE),
                "lease": client.register_script(_LEASE),
                "invalidate": client.register_script(_INVALIDATE),
                "release": client.register_script(_RELEASE),
                "peek": client.register_script(_PEEK),
                "batch_read": client.register_script(_BATCH_READ),
                "acquire_many": client.register_script(_ACQUIRE_MANY),
                "fill_many": client.register_script(_FILL_MANY),
                "views": client.register_script(_VIEWS),
            }

    @classmethod
    def from_app(cls, app):
        backend = app.extensions["cache"][next(iter(app.extensions["cache"]))]
        client = getattr(backend, "_write_client", None)
        return cls(client, app.config, getattr(backend, "key_prefix", ""))

    # -- keys -----------------------------------------------------------------
    def key(self, family, ident):
        """The key of a document of ``family`` by its id."""
        return {
            CREW: self.crew_key,
            AGENT: self.agent_key,
            CREW_AGENTS: self.crew_agents_key,
        }[family](ident)

    def crew_key(self, crew_id):
        return f"{self.prefix}metadata:crew:{crew_id}"

    def agent_key(self, agent_id):
        return f"{self.prefix}metadata:agent:{agent_id}"

    def crew_agents_key(self, crew_id):
        return f"{self.prefix}metadata:crew:{crew_id}:agents"

    def popular_key(self):
        return f"{self.prefix}stats:popular_crews"

    def leaderboard_key(self, kind):
        return f"{self.prefix}stats:leaderboard:{kind}"

    def views_key(self):
        return f"{self.prefix}stats:crew_views"

    # The fence and lock of a document carry its full key as a hash tag, so on a Cluster
    # they live in the document's slot and one script can touch all three.
    def fence_key(self, key):
        return f"{self.prefix}fence:{{{key}}}"

    def lock_key(self, key):
        return f"{self.prefix}lock:{{{key}}}"

    # -- guarded Redis access ---------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        if self.client is None or not self.breaker.allow():
            raise CacheUnavailable("breaker open")
        try:
            if self._pending and not self._flush_pending():
                # What this process invalidated while Redis failed must land before
                # anything is read from Redis again.
                raise redis.ConnectionError("pending invalidations could not be applied")
            result = fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            self.counters.redis_error()
            self.breaker.failure(exc)
            raise CacheUnavailable(str(exc)) from exc
        self.breaker.success()
        return result

    def _evalsha(self, name, keys, args=()):
        """EVALSHA straight through the client (the hot path): redis-py's Script wrapper
        costs more than the round trip's own parsing. A Redis that lost its scripts
        (restart, SCRIPT FLUSH) gets the script loaded again."""
        script = self._scripts[name]
        try:
            return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return script(keys=keys, args=args)

    # -- plain operations -------------------------------------------------------
    def get(self, key):
        """Stored bytes or None (also None when Redis is unavailable)."""
        try:
            return self._call(self.client.get, key)
        except CacheUnavailable:
            return None

    def set(self, key, value, ttl):
        try:
            return bool(self._call(self.client.set, key, _as_bytes(value), ex=ttl))
        except CacheUnavailable:
            return False

    def delete(self, *keys):
        if not keys:
            return 0
        try:
            return self._call(self.client.delete, *keys)
        except CacheUnavailable:
            return 0

    def exists(self, key):
        try:
            return bool(self._call(self.client.exists, key))
        except CacheUnavailable:
            return False

    def get_many(self, keys):
        """One MGET: a list of bytes-or-None in the order of ``keys``."""
        if not keys:
            return []
        try:
            if self.cluster:
                return self._call(self.client.mget_nonatomic, keys)
            return self._call(self.client.mget, keys)
        except CacheUnavailable:
            return [None] * len(keys)

    def get_many_counting_views(self, keys, members):
        """One round trip: MGET ``keys`` and count a view of each member whose document is
        found (public); ``members`` name distinct documents. None when Redis is unavailable."""
        if not keys:
            return []
        if self.cluster:
            try:
                values = self._call(self.client.mget_nonatomic, keys)
            except CacheUnavailable:
                return None
            for member, value in zip(members, values, strict=True):
                if value is not None and value != NULL:
                    self.views.add(member)
            return values

        try:
            return self._call(
                self._evalsha,
                "batch_read",
                [*keys, self.views_key()],
                [self.popularity_size, *members],
            )
        except CacheUnavailable:
            return None

    def count_view(self, member):
        """A view of a public document computed on a miss (a hit counts in its script)."""
        if self.views is not None:
            self.views.add(member)
            return
        try:
            self._call(self._evalsha, "view", [self.views_key()], [member, self.popularity_size, 1])
        except CacheUnavailable:
            pass  # popularity is best effort

    def forget_views(self, members):
        """Drop deleted crews from the popularity set."""
        if not members or self.client is None:
            return
        try:
            self._call(self.client.zrem, self.views_key(), *members)
        except CacheUnavailable:
            pass

    def set_many(self, mapping, ttl):
        """Store many values in one pipelined round trip."""
        if not mapping:
            return True

        def run():
            pipe = self.client.pipeline(transaction=False)
            for key, value in mapping.items():
                pipe.set(key, _as_bytes(value), ex=ttl)
            return pipe.execute()

        try:
            self._call(run)
            return True
        except CacheUnavailable:
            return False

    # -- read-through -------------------------------------------------------------
    def read_through(self, family, key, compute, count_view=None, ttl=None):
        """Return ``(bytes, hit)`` for ``key``, computing it with ``compute()`` on a miss.

        ``compute`` returns the document's JSON bytes, or None when the id is unknown
        or private (cached briefly as ``null``). Exactly one caller computes a cold key;
        the others wait for its result (bounded), then compute themselves. ``count_view``
        names the crew whose view to count when the document is public; ``ttl`` overrides
        the family's.
        """
        if not self.enabled:
            self.counters.record(family, "bypass")
            return self._compute(family, compute), False
        fence_key = self.fence_key(key)
        keys = [key, fence_key]
        args = ()
        if count_view is not None and self.views is None:
            keys.append(self.views_key())
            args = (count_view, self.popularity_size)
        try:
            reply = self._call(self._evalsha, "read", keys, args)
        except CacheUnavailable:
            self.counters.record(family, "bypass")
            return self._compute(family, compute), False
        if reply[0] == 1:
            value, pttl = reply[1], reply[2]
            self.counters.record(family, "hit")
            if self.views is not None and count_view is not None and value != NULL:
                self.views.add(count_view)
            if self._should_refresh_early(family, pttl):
                self._schedule_early_refresh(family, key, compute, ttl)
            return value, True
        self.counters.record(family, "miss")
        value = self._fill(family, key, compute, ttl)
        if count_view is not None and value != NULL:
            self.count_view(count_view)
        return value, False

    def warm(self, family, key, compute, ttl=None):
        """Fill ``key`` unless it is cached: ``(bytes, outcome)``, outcome one of
        ``"present"`` (already cached, or being filled by another process), ``"stored"``,
        ``"refused"`` (an invalidation raced the fill) or ``"unknown"`` (null: the id is
        unknown or private; remembered briefly like any miss).

        Raises CacheUnavailable when Redis cannot be reached, so a caller can tell
        "stored" from "answered without the cache".
        """
        lock_key = self.lock_key(key)
        token = _lock_token()
        reply = self._acquire(key, token)
        if reply[0] == 1:
            return reply[1], "present"
        if reply[0] == 0:
            return None, "present"
        fence = _text(reply[1])
        try:
            value = self._compute(family, compute, key)
        except BaseException:
            self._release(lock_key, token)
            raise
        if ttl is None:
            ttl = self.ttl[family]
        stored = self._call(
            self._scripts["fill"],
            keys=[key, self.fence_key(key), lock_key],
            args=[value, int((self.negative_ttl if value == NULL else ttl) * 1000), fence, token],
        )
        if value == NULL:
            return value, "unknown"
        if not stored:
            self.counters.record(family, "fill_rejected")
            return value, "refused"
        return value, "stored"

    def fill_many(self, family, keys, compute_many, ttl=None):
        """Documents for many keys that missed, computed together: ``(values, outcomes)``,
        dicts by key. Outcomes are those of ``warm``.

        The keys this process locks are computed by one call of ``compute_many(keys)``
        (a dict by key of bytes, or None for unknown or private) and filled in one round
        trip, each fenced as a single fill is. Keys that appeared meanwhile are taken as
        they are; keys another process is computing are waited for one by one, as a
        single miss waits. Raises CacheUnavailable when Redis fails.
        """
        token = _lock_token()
        replies = self._acquire_many(keys, token)
        values, outcomes, mine, held = {}, {}, {}, []
        for key, reply in zip(keys, replies, strict=True):
            if reply[0] == 1:
                values[key], outcomes[key] = reply[1], "present"
            elif reply[0] == 2:
                mine[key] = _text(reply[1])
            else:
                held.append(key)
        if mine:
            computed = self._compute_many(family, list(mine), compute_many, token)
            if ttl is None:
                ttl = self.ttl[family]
            stored = self._fill_many(computed, mine, token, ttl)
            for key, value in computed.items():
                values[key] = value
                if value == NULL:
                    outcomes[key] = "unknown"
                elif stored[key]:
                    outcomes[key] = "stored"
                else:
                    self.counters.record(family, "fill_rejected")
                    outcomes[key] = "refused"
        for key in held:
            self.counters.record(family, "wait")
            value = self._wait_for(key, self.lock_key(key), time.monotonic() + self.wait_max)
            if value is None:  # the holder stored nothing in time: compute it here
                value = compute_many([key]).get(key) or NULL
            values[key], outcomes[key] = value, "present"
        return values, outcomes

    def _acquire_many(self, keys, token):
        if self.cluster:
            return [self._acquire(key, token) for key in keys]
        triples = [k for key in keys for k in (key, self.lock_key(key), self.fence_key(key))]
        fences = [_fence_token() for _ in keys]
        return self._call(
            self._scripts["acquire_many"],
            keys=triples,
            args=[token, self.lease_ms, self.FENCE_TTL, *fences],
        )

    def _compute_many(self, family, keys, compute_many, token):
        started = time.perf_counter()
        try:
            documents = compute_many(keys)
        except BaseException:
            for key in keys:
                self._release(self.lock_key(key), token)
            self.counters.record(family, "computation_error")
            raise
        elapsed = time.perf_counter() - started
        self.counters.record(family, "computation", len(keys))
        self._delta[family] = 0.8 * self._delta[family] + 0.2 * elapsed / len(keys)
        if self.trace:
            for key in keys:
                log.info("cache compute key=%s pid=%d ms=%.1f", key, os.getpid(), elapsed * 1000)
        if self.fill_delay:
            time.sleep(self.fill_delay)  # fault injection: widen the race window
        return {key: documents.get(key) or NULL for key in keys}

    def _fill_many(self, computed, fences, token, ttl):
        def ttl_ms(value):
            return int((self.negative_ttl if value == NULL else ttl) * 1000)

        if self.cluster:
            return {
                key: bool(
                    self._call(
                        self._scripts["fill"],
                        keys=[key, self.fence_key(key), self.lock_key(key)],
                        args=[value, ttl_ms(value), fences[key], token],
                    )
                )
                for key, value in computed.items()
            }
        triples, args = [], [token]
        for key, value in computed.items():
            triples += [key, self.lock_key(key), self.fence_key(key)]
            args += [value, ttl_ms(value), fences[key]]
        stored = self._call(self._scripts["fill_many"], keys=triples, args=args)
        return dict(zip(computed, (bool(s) for s in stored), strict=True))

    def count_views(self, members):
        """A view of each of ``members`` (public documents computed by a batch's misses)."""
        if not members:
            return
        if self.views is not None:
            for member in members:
                self.views.add(member)
            return
        try:
            self._call(self._evalsha, "views", [self.views_key()], [self.popularity_size, *members])
        except CacheUnavailable:
            pass  # popularity is best effort

    def claim(self, key, value, ttl):
        """SET NX with a TTL in seconds: True for the one caller that set it."""
        return bool(self._call(self.client.set, key, value, nx=True, ex=ttl))

    def _acquire(self, key, token):
        return self._call(
            self._scripts["acquire"],
            keys=[key, self.lock_key(key), self.fence_key(key)],
            args=[token, self.lease_ms, _fence_token(), self.FENCE_TTL],
        )

    def _fill(self, family, key, compute, ttl=None):
        lock_key = self.lock_key(key)
        token = _lock_token()
        deadline = time.monotonic() + self.wait_max
        while True:
            try:
                reply = self._acquire(key, token)
            except CacheUnavailable:
                return self._compute(family, compute)
            if reply[0] == 1:
                return reply[1]
            if reply[0] == 2:
                fence = _text(reply[1])
                return self._compute_and_store(family, key, compute, fence, token, ttl)
            self.counters.record(family, "wait")
            value = self._wait_for(key, lock_key, deadline)
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                # The holder is slow and its lease still runs: answer anyway, uncached.
                self.counters.record(family, "wait_timeout")
                return self._compute(family, compute)
            # The lock was released without a value (the fill was fenced out, or the
            # holder failed): try to take it, reading the fence again, before the database.

    def _wait_for(self, key, lock_key, deadline):
        """Poll until the value appears (return it) or the lock goes away (return None)."""
        delay = 0.002
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.025)
            try:
                # The lock first, then the value: the holder stores the value and releases
                # the lock atomically, so "no lock, then no value" means it stored nothing.
                # (The other order can fall between the two and compute a second time.)
                locked, value = self._call(self._scripts["peek"], keys=[lock_key, key])
            except CacheUnavailable:
                return None
            if value is not None:
                return value
            if not locked:
                return None
        return None

    def _compute(self, family, compute, key=None):
        started = time.perf_counter()
        try:
            document = compute()
        except Exception:
            self.counters.record(family, "computation_error")
            raise
        elapsed = time.perf_counter() - started
        self.counters.record(family, "computation")
        self._delta[family] = 0.8 * self._delta[family] + 0.2 * elapsed
        if self.trace:
            log.info("cache compute key=%s pid=%d ms=%.1f", key, os.getpid(), elapsed * 1000)
        return NULL if document is None else document

    def _compute_and_store(self, family, key, compute, fence, token, ttl=None):
        try:
            value = self._compute(family, compute, key)
            if self.fill_delay:
                time.sleep(self.fill_delay)  # fault injection: widen the race window
        except BaseException:
            self._release(self.lock_key(key), token)
            raise
        if value == NULL:
            ttl = self.negative_ttl
        elif ttl is None:
            ttl = self.ttl[family]
        try:
            stored = self._call(
                self._scripts["fill"],
                keys=[key, self.fence_key(key), self.lock_key(key)],
                args=[value, int(ttl * 1000), fence, token],
            )
            if not stored:
                self.counters.record(family, "fill_rejected")
                if self.trace:
                    log.info("cache fill rejected key=%s pid=%d", key, os.getpid())
        except CacheUnavailable:
            pass
        return value

    def _release(self, lock_key, token):
        try:
            self._call(self._scripts["release"], keys=[lock_key], args=[token])
        except CacheUnavailable:
            pass

    def _should_refresh_early(self, family, pttl):
        # XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh when
        # now - delta * beta * ln(rand) >= expiry, so the chance rises as expiry nears and
        # one request refreshes a hot key before it expires. delta is at least the refresh
        # window: our computations take milliseconds, and a window that short would let
        # the key expire between two requests.
        if pttl is None or pttl < 0:
            return False
        delta = max(self._delta[family] * self.xfetch_beta, self.refresh_window)
        if delta <= 0:
            return False
        gap = -delta * math.log(1.0 - random.random())
        return gap * 1000 >= pttl

    def _schedule_early_refresh(self, family, key, compute, ttl=None):
        """Refresh after the response is sent, so no client waits on the computation."""
        if not has_request_context():
            self._refresh_early(family, key, compute, ttl)
            return
        app = current_app._get_current_object()

        def refresh():
            with app.app_context():
                try:
                    self._refresh_early(family, key, compute, ttl)
                except Exception:
                    log.exception("early refresh of %s failed", key)
                finally:
                    from crew7.extensions import db

                    db.session.remove()

        @after_this_request
        def register(response):
            response.call_on_close(refresh)
            return response

    def _refresh_early(self, family, key, compute, ttl=None):
        """Recompute a hot key before it expires; only the lock holder does it."""
        lock_key = self.lock_key(key)
        token = _lock_token()
        try:
            fence = self._call(
                self._scripts["lease"],
                keys=[lock_key, self.fence_key(key)],
                args=[token, self.lease_ms, _fence_token(), self.FENCE_TTL],
            )
        except CacheUnavailable:
            return
        if fence is None:
            return  # another process holds the lock
        fence = _text(fence)
        self.counters.record(family, "early_refresh")
        self._compute_and_store(family, key, compute, fence, token, ttl)

    # -- invalidation -------------------------------------------------------------
    def invalidate_keys(self, keys):
        """Delete documents and replace their fences so no older fill can land."""
        keys = set(keys)
        if not keys:
            return True
        with self._pending_lock:
            keys |= self._pending
            self._pending.clear()
        if self._apply_invalidations(keys):
            return True
        with self._pending_lock:
            self._pending |= keys
        self._schedule_retry()
        return False

    def _apply_invalidations(self, keys):
        if self.client is None:
            return True
        try:
            if self.breaker.opened_at is not None:
                raise CacheUnavailable("breaker open")
            self._call(self._send_invalidations, keys)
            return True
        except CacheUnavailable:
            return False

    def _send_invalidations(self, keys):
        """Replace each key's fence and delete it: one pipeline (per key on a Cluster)."""
        ordered = sorted(keys)
        if self.cluster:
            for key in ordered:
                self._scripts["invalidate"](
                    keys=[key, self.fence_key(key)], args=[_fence_token(), self.FENCE_TTL]
                )
            return
        pipe = self.client.pipeline(transaction=False)
        for key in ordered:
            self._scripts["invalidate"](
                keys=[key, self.fence_key(key)], args=[_fence_token(), self.FENCE_TTL], client=pipe
            )
        pipe.execute()

    def _flush_pending(self):
        """Called when the breaker closes: apply what was missed before reading again."""
        with self._pending_lock:
            keys = set(self._pending)
            self._pending.clear()
        if not keys:
            return True
        try:
            self._send_invalidations(keys)
            return True
        except REDIS_ERRORS:
            with self._pending_lock:
                self._pending |= keys
            return False

    def _schedule_retry(self):
        if self._retry_timer is not None and self._retry_timer.is_alive():
            return
        interval = min(1.0, max(0.1, self.breaker.cooldown / 4))

        def retry():
            if not self._flush_pending():
                self._retry_timer = None
                self._schedule_retry()

        self._retry_timer = threading.Timer(interval, retry)
        self._retry_timer.daemon = True
        self._retry_timer.start()

    @property
    def pending_invalidations(self):
        return len(self._pending)

    def crew_keys(self, crew_id, agent_ids=()):
        """Every document a change to the crew affects."""
        return [self.crew_key(crew_id), self.crew_agents_key(crew_id)] + [
            self.agent_key(a) for a in agent_ids
        ]

    def invalidate_crew_metadata(self, crew_id):
        return self.invalidate_keys([self.crew_key(crew_id)])

    def invalidate_agent_metadata(self, agent_id):
        return self.invalidate_keys([self.agent_key(agent_id)])

    def invalidate_crew_agents_metadata(self, crew_id):
        return self.invalidate_keys([self.crew_agents_key(crew_id)])

    def invalidate_all_crew_metadata(self, crew_id, agent_ids=None):
        """The crew, its agents list and each of its agents."""
        if agent_ids is None:
            from crew7.services.metadata import agent_ids_of_crew

            agent_ids = agent_ids_of_crew(crew_id)
        return self.invalidate_keys(self.crew_keys(crew_id, agent_ids))

    def scan_keys(self, pattern, batch=500):
        """Yield lists of keys matching ``pattern`` (SCAN, on every primary of a Cluster)."""
        if self.client is None or not self.breaker.allow():
            raise CacheUnavailable("breaker open")
        chunk = []
        try:
            for key in self.client.scan_iter(match=pattern, count=batch):
                chunk.append(_text(key))
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
        except REDIS_ERRORS as exc:
            self.counters.redis_error()
            self.breaker.failure(exc)
            raise CacheUnavailable(str(exc)) from exc
        if chunk:
            yield chunk

    def invalidate_all_metadata(self, batch=500):
        """Delete every metadata and stats document, SCAN in batches (never KEYS or FLUSHDB)."""
        deleted = 0
        patterns = (
            f"{self.prefix}metadata:*",
            f"{self.prefix}stats:popular_crews",
            f"{self.prefix}stats:leaderboard:*",
        )
        try:
            for pattern in patterns:
                for keys in self.scan_keys(pattern, batch):
                    self.invalidate_keys(keys)
                    deleted += len(keys)
        except CacheUnavailable:
            pass
        return deleted

    # -- typed getters and setters ------------------------------------------------
    def get_crew_metadata(self, crew_id):
        return self.get(self.crew_key(crew_id))

    def set_crew_metadata(self, crew_id, document):
        return self.set(self.crew_key(crew_id), document, self.ttl[CREW])

    def get_agent_metadata(self, agent_id):
        return self.get(self.agent_key(agent_id))

    def set_agent_metadata(self, agent_id, document):
        return self.set(self.agent_key(agent_id), document, self.ttl[AGENT])

    def get_crew_agents_metadata(self, crew_id):
        return self.get(self.crew_agents_key(crew_id))

    def set_crew_agents_metadata(self, crew_id, documents):
        return self.set(self.crew_agents_key(crew_id), documents, self.ttl[CREW_AGENTS])

    def get_many_crew_metadata(self, crew_ids):
        return self.get_many([self.crew_key(c) for c in crew_ids])

    # -- popularity and stats -------------------------------------------------------
    def popular_crew_ids(self, limit):
        """Crew ids by metadata views, most viewed first."""
        try:
            ids = self._call(self.client.zrevrange, self.views_key(), 0, max(limit - 1, 0))
        except CacheUnavailable:
            return []
        return [int(i) for i in ids]

    def stats_read_through(self, key, ttl, compute):
        """The stats documents, fenced and single-flight like the metadata documents, so
        a crew made private or deleted leaves them with the write's invalidation."""
        return self.read_through(STATS, key, compute, ttl=ttl)[0]

    def stats_keys(self):
        """The stats documents that name crews: popular crews and the leaderboards."""
        return [self.popular_key()] + [self.leaderboard_key(k) for k in LEADERBOARD_TYPES]

    def info(self):
        """Keys per family and memory used, for operators (SCAN, never KEYS)."""
        families = {
            "crew": f"{self.prefix}metadata:crew:*",
            "agent": f"{self.prefix}metadata:agent:*",
            "stats": f"{self.prefix}stats:*",
        }
        out = {"keys": {}, "memory_used": None, "available": True}
        try:
            for name, pattern in families.items():
                count = agents_lists = 0
                for keys in self.scan_keys(pattern, 1000):
                    lists = sum(1 for k in keys if k.endswith(":agents"))
                    if name == "crew":
                        agents_lists += lists
                        count += len(keys) - lists
                    else:
                        count += len(keys)
                out["keys"][name] = count
                if name == "crew":
                    out["keys"]["crew_agents"] = agents_lists
            memory = self._call(self.client.info, "memory")
            if "used_memory" in memory:
                used = memory["used_memory"]
            else:  # a Cluster answers per node: add them up
                used = sum(v.get("used_memory", 0) for v in memory.values() if isinstance(v, dict))
            out["memory_used"] = f"{used / 1048576:.2f}M"
            out["memory_used_bytes"] = used
        except CacheUnavailable as exc:
            out["available"] = False
            out["error"] = str(exc)
        out["breaker"] = self.breaker.state
        out["pending_invalidations"] = self.pending_invalidations
        out["process_counters"] = self.counters.as_dict()
        return out

    def ping(self):
        if self.client is None:
            return False
        try:
            return bool(self.client.ping())
        except REDIS_ERRORS:
            return False


def _as_bytes(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def _fence_token():
    return f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _lock_token():
    # The holder's pid makes a stuck lease traceable to its process.
    return f"{os.getpid()}:{uuid.uuid4().hex}"


def _text(value):
    return value.decode() if isinstance(value, bytes) else (value or "")


def get_cache_service(app=None):
    """The app's CacheService."""
    return (app or current_app).extensions["crew7.cache"]
