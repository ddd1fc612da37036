"""Integration tests drive handlers directly against the real Redis, in a database of their own,
so that what they do without the other services never mixes with the running system's state
(which `gongji audit` checks as a whole)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.redis_client import in_database

INTEGRATION_DATABASE = 15


def integration_redis_url(redis_url: str) -> str:
    return in_database(redis_url, INTEGRATION_DATABASE)


@pytest.fixture(scope="session")
async def redis(infrastructure):
    client = Redis.from_url(
        integration_redis_url(infrastructure.redis_url), **redis_options(infrastructure, OPERATOR.name)
    )
    await client.flushdb()
    yield client
    await client.aclose()
