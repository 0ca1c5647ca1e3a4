"""The Redis client: Flask-Caching's backend, its settings and its errors."""

import json

import redis
import redis.cluster
from cachelib.serializers import BaseSerializer
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
