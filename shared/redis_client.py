"""The Redis client every service uses: a bounded pool whose callers wait for a free connection
(batches run many keys at once; an unbounded burst would otherwise fail with "too many connections")."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from shared.credentials import redis_options
from shared.settings import Settings


def in_database(redis_url: str, db: int) -> str:
    """The same server, another database. (`Redis.from_url(url, db=n)` keeps the url's own `/0`.)"""
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


def connect(settings: Settings, principal: str) -> Redis:
    """A pool authenticated as `principal`'s Redis user (shared/principals.py says what it may do)."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=30,
        **redis_options(settings, principal),
    )
    return Redis(connection_pool=pool)


class RedisNotDurable(RuntimeError):
    pass


async def require_durable(redis: Redis) -> None:
    """Refuses to run on a Redis that may lose acknowledged writes. A service commits its Kafka
    offset once Redis has answered; with `appendfsync everysec` a crash could then roll back a
    debit whose answer was already published as paid. Only AOF with `appendfsync always` is safe."""
    config = await redis.config_get("appendonly")
    config |= await redis.config_get("appendfsync")
    if (config.get("appendonly"), config.get("appendfsync")) != ("yes", "always"):
        raise RedisNotDurable(
            f"Redis runs with appendonly={config.get('appendonly')}, appendfsync={config.get('appendfsync')}: "
            "Gongji needs appendonly yes and appendfsync always (see docs/architecture.md, Redis durability)"
        )
