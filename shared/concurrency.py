"""Concurrency inside a batch: messages of one key stay in order, different keys overlap their
Redis round trips (and Redis groups their AOF fsyncs)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Output = TypeVar("Output")

# How many keys of one batch are in flight at once: enough to hide the round trips, few enough
# that one batch cannot open hundreds of Redis connections.
KEYS_IN_FLIGHT = 64


async def gather_by_key(
    items: Iterable[Item],
    key_of: Callable[[Item], Hashable],
    handle: Callable[[Item], Awaitable[Sequence[Output]]],
) -> list[Output]:
    """Handles the items of each key one after another, and different keys concurrently; returns
    the outputs grouped by key, each key's in its items' order."""
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(key_of(item), []).append(item)
    slots = asyncio.Semaphore(KEYS_IN_FLIGHT)

    async def handle_group(group: list[Item]) -> list[Output]:
        outputs: list[Output] = []
        async with slots:
            for item in group:
                outputs.extend(await handle(item))
        return outputs

    # Every key runs to its end before a failure is raised: a retry of the batch (or of its records
    # one by one) never overlaps a step still running.
    results = await asyncio.gather(*(handle_group(group) for group in groups.values()), return_exceptions=True)
    if failure := next((result for result in results if isinstance(result, BaseException)), None):
        raise failure
    return [output for group_outputs in results for output in group_outputs]  # type: ignore[union-attr]
