"""CacheService: the Redis client, keys, guarded calls and what operators see."""

import json
import threading

import redis
import redis.cluster
from flask import current_app

from crew7.services.cache.breaker import CircuitBreaker
from crew7.services.cache.client import REDIS_ERRORS, CacheUnavailable
from crew7.services.cache.counters import Counters
from crew7.services.cache.documents import AGENT, CREW, CREW_AGENTS, LEADERBOARD_TYPES, STATS
from crew7.services.cache.invalidation import Invalidation
from crew7.services.cache.popularity import Popularity, ViewBuffer
from crew7.services.cache.read_through import ReadThrough
from crew7.services.cache.scripts import (
    _ACQUIRE,
    _ACQUIRE_MANY,
    _BATCH_READ,
    _FILL,
    _FILL_MANY,
    _INVALIDATE,
    _LEASE,
    _PEEK,
    _READ,
    _RELEASE,
    _VIEW,
    _VIEWS,
)


class CacheService(ReadThrough, Invalidation, Popularity):
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

    def claim(self, key, value, ttl):
        """SET NX with a TTL in seconds: True for the one caller that set it."""
        return bool(self._call(self.client.set, key, value, nx=True, ex=ttl))

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


def get_cache_service(app=None):
    """The app's CacheService."""
    return (app or current_app).extensions["crew7.cache"]
