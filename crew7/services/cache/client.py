"""The Redis client: made once per app for its topology, shared with Flask-Caching."""

import json

import redis
import redis.cluster
import redis.sentinel
from cachelib.serializers import BaseSerializer
from flask_caching.backends.rediscache import RedisCache
from redis.backoff import NoBackoff
from redis.retry import Retry

# redis-py's cluster client raises RedisClusterException, which is not a RedisError.
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)


class CacheUnavailable(Exception):
    """Redis is skipped (breaker open) or failed: answer from the database."""


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


def connect(config):
    """The Redis client of the configured topology: one master through Sentinel (so reads
    that must see the latest write never go to a lagging replica), a Cluster, or one
    server. Bounded by short timeouts and without retries."""
    options = {
        "socket_timeout": config["REDIS_SOCKET_TIMEOUT"],
        "socket_connect_timeout": config["REDIS_CONNECT_TIMEOUT"],
        # redis-py 8 retries 10 times with backoff by default: a minute per call
        # against a frozen Redis. One attempt, then the breaker takes over.
        "retry": Retry(NoBackoff(), 0),
    }
    if config["REDIS_SENTINELS"]:
        sentinel = redis.sentinel.Sentinel(
            config["REDIS_SENTINELS"],
            sentinel_kwargs={
                "socket_timeout": config["REDIS_SOCKET_TIMEOUT"],
                "socket_connect_timeout": config["REDIS_CONNECT_TIMEOUT"],
            },
            health_check_interval=0,
            **options,
        )
        return sentinel.master_for(config["REDIS_SENTINEL_MASTER"])
    if config["REDIS_CLUSTER_NODES"]:
        nodes = [redis.cluster.ClusterNode(h, int(p)) for h, p in config["REDIS_CLUSTER_NODES"]]
        return redis.cluster.RedisCluster(
            startup_nodes=nodes, skip_full_coverage_check=True, **options
        )
    return redis.Redis.from_url(config["REDIS_URL"], health_check_interval=0, **options)


class CacheSetupError(RuntimeError):
    """No Redis client could be obtained at start-up."""


class ConnectedRedisCache(RedisCache):
    """Flask-Caching's Redis backend on the client ``connect`` made (``CACHE_REDIS_HOST``),
    whatever the topology: Flask-Caching and the read-through share one connection pool."""

    @classmethod
    def factory(cls, app, config, args, kwargs):
        client = config.get("CACHE_REDIS_HOST")
        if not is_redis_client(client):
            raise CacheSetupError("CACHE_REDIS_HOST is not a Redis client")
        kwargs.update(host=client, key_prefix=config.get("CACHE_KEY_PREFIX") or None)
        return cls(*args, **kwargs)


def is_redis_client(client):
    return isinstance(client, redis.Redis | redis.cluster.RedisCluster)


def flask_caching_config(config, client):
    """Flask-Caching settings derived from ours, on ``client``."""
    return {
        "CACHE_TYPE": f"{ConnectedRedisCache.__module__}.{ConnectedRedisCache.__name__}",
        "CACHE_REDIS_HOST": client,
        # Informational: the client was made from it (empty for Sentinel and Cluster).
        "CACHE_REDIS_URL": ""
        if config["REDIS_SENTINELS"] or config["REDIS_CLUSTER_NODES"]
        else config["REDIS_URL"],
        "CACHE_KEY_PREFIX": config["CACHE_NAMESPACE"],
        "CACHE_DEFAULT_TIMEOUT": config["METADATA_TTL"],
        "CACHE_SERIALIZER": JSONTextSerializer(),
    }
