"""Settlement reads claims and draw answers with one consumer and handles them side by side."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.settlement.handlers import SettlementHandlers
from shared.runtime import is_transient


async def test_a_failure_of_one_side_is_raised_as_it_came_once_the_other_side_has_ended() -> None:
    handlers = SettlementHandlers.__new__(SettlementHandlers)  # no store: both sides are stand-ins
    ended: list[str] = []

    async def claims(_claims, _provinces, _sent):
        await asyncio.sleep(0.05)  # still running when the answers fail
        ended.append("claims")
        return []

    async def answers(_answers):
        raise RedisConnectionError("Redis went away")

    handlers._on_claims = claims  # type: ignore[method-assign]
    handlers._on_draw_answers = answers  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError) as raised:
        await handlers.on_claim_path([])
    assert is_transient(raised.value)  # so the runtime retries the whole batch, and dead-letters nothing
    assert ended == ["claims"]  # no step of the batch still runs when the retry starts
