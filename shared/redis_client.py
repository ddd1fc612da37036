"""The Redis client every service uses: a bounded pool whose callers wait for a free connection
(batches run many keys at once; an unbounded burst would otherwise fail with "too many connections")."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from shared.settings import Settings


def connect(settings: Settings) -> Redis:
    pool = BlockingConnectionPool.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                                           timeout=30)
    return Redis(connection_pool=pool)
