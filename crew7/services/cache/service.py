"""CacheService: one object per app over its Redis client: settings, keys, guarded calls,
and what operators see. Its read-through, invalidation and popularity methods live in
the modules of those names."""

import threading

import redis

from crew7.services.cache.breaker import CircuitBreaker
from crew7.services.cache.client import (
    REDIS_ERRORS,
    CacheSetupError,
    CacheUnavailable,
    is_redis_client,
)
from crew7.services.cache.counters import Counters
from crew7.services.cache.documents import (
    DOCUMENT_TYPES,
    FAMILIES,
    FRONT_HITS_KEY,
    LEADERBOARD_TYPES,
    REPLAY_KEY,
    STATS,
    VIEWS_KEY,
    WATERMARK_KEY,
)
from crew7.services.cache.invalidation import Invalidation
from crew7.services.cache.popularity import Popularity, ViewBuffer
from crew7.services.cache.read_through import ReadThrough
from crew7.services.cache.scripts import Scripts, _text


def run_inline(fn):
    """The default ``defer``: run now (no response to wait for)."""
    fn()


class CacheService(ReadThrough, Invalidation, Popularity):
    """Read-through cache of metadata documents and stats over the app's Redis client.

    ``metrics`` holds the Prometheus counters (``cache_events``, ``redis_errors``,
    ``breaker_open``); ``defer(fn)`` runs ``fn`` once the response is sent (an early
    refresh): both are handed in by the app, which owns requests and the database session.
    """

    FENCE_TTL = 86400

    def __init__(self, client, config, prefix="", *, metrics=None, defer=run_inline):
        if not is_redis_client(client):
            raise CacheSetupError(f"no Redis client for the metadata cache (got {client!r})")
        self.client = client
        self.prefix = prefix or ""
        self.defer = defer
        self.enabled = config["METADATA_CACHE_ENABLED"]
        self.lease_ms = int(config["CACHE_LOCK_LEASE"] * 1000)
        self.wait_max = config["CACHE_WAIT_MAX"]
        self.refresh_window = config["CACHE_EARLY_REFRESH_WINDOW"]
        self.xfetch_beta = config["XFETCH_BETA"]
        self.fill_delay = config["CACHE_FILL_DELAY"]
        self.trace = config["CACHE_TRACE"]
        # A family's default TTL; a document type with its own (popular crews) passes it.
        self.ttl = {family: config[spec.ttl_setting] for family, spec in FAMILIES.items()}
        self.ttl_of = {t.name: config[t.ttl_setting] for t in DOCUMENT_TYPES.values()}
        self.popular_ttl = self.ttl_of["popular_crews"]
        self.stats_ttl = self.ttl_of["leaderboard"]
        self.negative_ttl = config["NEGATIVE_TTL"]
        self.popularity_size = config["POPULARITY_SIZE"]
        self.counters = Counters(metrics)
        self.counters.window.configure(
            config["HIT_RATE_WINDOW"],
            config["HIT_RATE_ALERT_THRESHOLD"],
            config["HIT_RATE_MIN_LOOKUPS"],
        )
        # Whether Redis may be read: False from any Redis error until ``catch_up`` (the
        # app's change-log relay, applying what the log holds beyond Redis's watermark)
        # has succeeded since. A Redis that came back from a freeze, a restart or a
        # failover may lack invalidations this process or another acknowledged; until
        # they are applied this process reads around it (the database) and fills nothing.
        self.trusted = True
        self.catch_up = None
        self.on_distrust = None  # the app's relay: apply again from Redis's watermark
        self._distrusts = 0
        self._trust_lock = threading.Lock()
        self._pending = set()
        self._pending_lock = threading.Lock()
        self._retry_timer = None
        self.breaker = CircuitBreaker(
            config["BREAKER_THRESHOLD"],
            config["BREAKER_COOLDOWN"],
            self._flush_pending,
            gauge=None if metrics is None else metrics.breaker_open,
        )
        # Seconds a computation of each family took (moving average): XFetch's delta.
        self._delta = {family: spec.compute_estimate for family, spec in FAMILIES.items()}
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        # On a Cluster the views sorted set lives in another slot than the document, so
        # the hit's script cannot count the view: views are buffered and flushed apart.
        self.views = ViewBuffer(self) if self.cluster else None
        self.scripts = Scripts(client)
        # Keys, from the registry (instance attributes: as cheap to call as methods).
        self.key_of = key = {
            name: t.key_function(self.prefix) for name, t in DOCUMENT_TYPES.items()
        }
        self.crew_key = key["crew"]
        self.agent_key = key["agent"]
        self.crew_agents_key = key["crew_agents"]
        self.crew_image_key = key["crew_image"]
        self.agent_image_key = key["agent_image"]
        self.popular_key = key["popular_crews"]
        self.leaderboard_key = key["leaderboard"]
        self._views_key = self.prefix + VIEWS_KEY
        self._fence_head = self.prefix + "fence:{"
        self._lock_head = self.prefix + "lock:{"

    @classmethod
    def from_app(cls, app, *, metrics=None, defer=run_inline):
        """The service on the client Flask-Caching was configured with (``CACHE_REDIS_HOST``);
        raises CacheSetupError when there is none."""
        return cls(
            app.config.get("CACHE_REDIS_HOST"),
            app.config,
            app.config.get("CACHE_KEY_PREFIX") or "",
            metrics=metrics,
            defer=defer,
        )

    # -- keys -----------------------------------------------------------------
    def views_key(self):
        return self._views_key

    # The fence and lock of a document carry its full key as a hash tag, so on a Cluster
    # they live in the document's slot and one script can touch all three.
    def fence_key(self, key):
        return f"{self._fence_head}{key}}}"

    def lock_key(self, key):
        return f"{self._lock_head}{key}}}"

    def watermark_key(self):
        """The change log's watermark: the last entry id whose invalidations landed."""
        return self.prefix + WATERMARK_KEY

    def replay_key(self):
        """Held by the one process replaying the change log after a lost watermark."""
        return self.prefix + REPLAY_KEY

    def warming_key(self, deployment):
        return f"{self.prefix}warming:{deployment}"

    def stats_keys(self):
        """The stats documents that name crews: popular crews and the leaderboards."""
        return [self.popular_key()] + [self.leaderboard_key(k) for k in LEADERBOARD_TYPES]

    # -- guarded Redis access ---------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        if not self.breaker.allow():
            raise CacheUnavailable("breaker open")
        try:
            if self._pending and not self._flush_pending():
                # What this process invalidated while Redis failed must land before
                # anything is read from Redis again.
                raise redis.ConnectionError("pending invalidations could not be applied")
            result = fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            self.distrust()
            self.counters.redis_error()
            self.breaker.failure(exc)
            raise CacheUnavailable(str(exc)) from exc
        self.breaker.success()
        return result

    # -- trust ------------------------------------------------------------------
    def distrust(self):
        """Read around Redis until ``regain_trust`` succeeds (after any Redis error). The
        count moves first, so a catch-up running meanwhile cannot restore trust over it."""
        self._distrusts += 1
        self.trusted = False
        if self.on_distrust is not None:
            self.on_distrust()

    def regain_trust(self):
        """Catch up with the change log (``catch_up``), then read Redis again: True when
        Redis may be read. One thread at a time; the others read around it meanwhile."""
        if not self._trust_lock.acquire(blocking=False):
            return False
        try:
            seen = self._distrusts
            if (self.catch_up is None or self.catch_up()) and seen == self._distrusts:
                self.trusted = True
                if seen != self._distrusts:  # an error came between the check and the set
                    self.trusted = False
            return self.trusted
        finally:
            self._trust_lock.release()

    def _run(self, name, keys, args=()):
        """One of the scripts, guarded by the breaker."""
        return self._call(self.scripts.run, name, keys, args)

    # -- plain operations -------------------------------------------------------
    def get(self, key):
        """Stored bytes or None (also None when Redis is unavailable)."""
        try:
            return self._call(self.client.get, key)
        except CacheUnavailable:
            return None

    def record(self, family, event, n=1):
        """Count ``n`` cache events of ``family`` (lookups a caller answered itself)."""
        self.counters.record(family, event, n)

    def get_unguarded(self, key):
        """One bare GET, outside the breaker: the benchmark's reference hit."""
        return self.client.get(key)

    def claim(self, key, value, ttl):
        """SET NX with a TTL in seconds: True for the one caller that set it."""
        return bool(self._call(self.client.set, key, value, nx=True, ex=ttl))

    def stats_read_through(self, key, ttl, compute):
        """The stats documents, fenced and single-flight like the metadata documents, so
        a crew made private or deleted leaves them with the write's invalidation."""
        return self.read_through(STATS, key, compute, ttl=ttl)

    def front_hits(self):
        """``{family: n}``: documents nginx served from Redis (crew7/front), counted there;
        None when Redis is unavailable."""
        try:
            raw = self._call(self.client.hgetall, self.prefix + FRONT_HITS_KEY)
        except CacheUnavailable:
            return None
        return {_text(k): int(v) for k, v in raw.items()}

    def info(self):
        """Keys per family and memory used, for operators (SCAN, never KEYS)."""
        families = {
            "crew": DOCUMENT_TYPES["crew"].pattern(self.prefix),
            "agent": DOCUMENT_TYPES["agent"].pattern(self.prefix),
            "crew_image": DOCUMENT_TYPES["crew_image"].pattern(self.prefix),
            "agent_image": DOCUMENT_TYPES["agent_image"].pattern(self.prefix),
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
        out["trusted"] = self.trusted
        out["pending_invalidations"] = self.pending_invalidations
        out["process_counters"] = self.counters.as_dict()
        return out

    def window_hit_rate(self):
        """``(rate or None, lookups, seconds)`` over this process's sliding window."""
        rate, lookups = self.counters.window.rate()
        return rate, lookups, self.counters.window.seconds

    def ping(self):
        try:
            return bool(self.client.ping())
        except REDIS_ERRORS:
            return False


def get_cache_service(app):
    """The app's CacheService."""
    return app.extensions["crew7.cache"]
