from __future__ import annotations

import pytest

from shared.policy import Policy, read_policy, write_policy
from tests.e2e.world import World


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "after_all: runs after every other test, to check what they left behind")


def pytest_collection_modifyitems(items) -> None:
    items.sort(key=lambda item: item.get_closest_marker("after_all") is not None)


@pytest.fixture
async def world(kafka, redis, service_processes) -> World:
    return World(kafka, redis)


@pytest.fixture
async def policy(redis):
    """Lets a test change the run-time policy, and puts it back afterwards."""
    before = await read_policy(redis)

    async def change(**fields) -> None:
        await write_policy(
            redis,
            Policy(
                **{
                    "cross_province_since": before.cross_province_since,
                    "closed_regions": before.closed_regions,
                    **fields,
                }
            ),
        )

    yield change
    await write_policy(redis, before)
