"""A service refuses a Redis that may lose acknowledged writes (`appendfsync everysec` could roll
back a debit whose answer was already published as paid after the offset was committed)."""

from __future__ import annotations

import pytest

from shared.redis_client import RedisNotDurable, require_durable


class RedisConfiguredWith:
    """Answers `CONFIG GET append*` as a Redis with these settings would (only what the check reads)."""

    def __init__(self, **config: str) -> None:
        self.config = config

    async def execute_command(self, *command: str) -> dict[str, str]:
        assert command == ("CONFIG", "GET", "append*")
        return {**self.config, "appendfilename": "appendonly.aof"}


@pytest.mark.parametrize(("appendonly", "appendfsync"), [("yes", "everysec"), ("yes", "no"), ("no", "always")])
async def test_a_redis_that_may_lose_acknowledged_writes_is_refused(appendonly: str, appendfsync: str) -> None:
    with pytest.raises(RedisNotDurable, match="appendfsync always"):
        await require_durable(RedisConfiguredWith(appendonly=appendonly, appendfsync=appendfsync))


async def test_aof_with_fsync_always_is_accepted() -> None:
    await require_durable(RedisConfiguredWith(appendonly="yes", appendfsync="always"))
