import asyncio
import random

import pytest

from shared.concurrency import gather_by_key


async def test_each_key_keeps_its_order_while_keys_overlap() -> None:
    items = [(key, number) for number in range(20) for key in "abcde"]
    started: list[tuple[str, int]] = []
    in_flight = 0
    most_in_flight = 0

    async def handle(item):
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        started.append(item)
        await asyncio.sleep(random.random() / 1000)
        in_flight -= 1
        return [item]

    outputs = await gather_by_key(items, lambda item: item[0], handle)
    for key in "abcde":
        assert [n for k, n in started if k == key] == list(range(20))
        assert [n for k, n in outputs if k == key] == list(range(20))
    assert sorted(outputs) == sorted(items)
    assert most_in_flight > 1


async def test_a_failing_key_is_raised_only_after_every_other_key_has_ended() -> None:
    """Else the runtime's one-by-one retry would overlap a step still running for another key."""
    ended: list[str] = []

    async def handle(item: str) -> list[str]:
        if item == "poison":
            raise ValueError("poison")
        await asyncio.sleep(0.05)
        ended.append(item)
        return [item]

    with pytest.raises(ValueError, match="poison"):
        await gather_by_key(["slow-1", "poison", "slow-2"], lambda item: item, handle)
    assert sorted(ended) == ["slow-1", "slow-2"]
    await asyncio.sleep(0.1)
    assert sorted(ended) == ["slow-1", "slow-2"]
