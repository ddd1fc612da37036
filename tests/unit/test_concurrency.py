import asyncio
import random

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
