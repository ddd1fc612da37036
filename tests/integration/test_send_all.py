"""`send_all` (shared/redis_functions.py) on the real Redis: the commands of a batch in one write,
their replies in order, and a connection never handed back with replies still unread on it (the
next batch would read them as its own)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError

from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.redis_client import in_database
from shared.redis_functions import REDIS_SECONDS, send_all
from tests.support import new_id


@pytest.fixture
async def one_connection(infrastructure):
    """A client whose pool holds a single connection (every batch reuses the one before's), with
    a read timeout of 0.5 s."""
    pool = BlockingConnectionPool.from_url(
        in_database(infrastructure.redis_url, 13),
        max_connections=1,
        socket_timeout=0.5,
        **redis_options(infrastructure, OPERATOR.name),
    )
    client = Redis(connection_pool=pool)
    yield client
    await client.aclose()


def busy(milliseconds: int, padding: int = 0) -> tuple:
    """Holds Redis for so long, then answers 1. Redis answers the commands of one read of its input
    together: a command padded past its 16 KiB reads is read, run and answered on its own."""
    return (
        "EVAL",
        "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
        f"if (n[1] - t[1]) * 1000000 + n[2] - t[2] > {milliseconds * 1000} then return 1 end end",
        0,
        "x" * padding,
    )


async def test_replies_come_in_the_order_of_the_commands(one_connection) -> None:
    key = f"send-all:{new_id()}"
    replies = await send_all(
        one_connection,
        [("SET", key, 7), ("INCRBY", key, 5), ("HMGET", f"{key}:none", "a", "b"), ("GET", key), ("DEL", key)],
    )
    assert replies == [b"OK", 12, [None, None], b"12", 1]


async def test_an_error_is_raised_as_redis_gave_it_and_the_replies_after_it_are_read(one_connection) -> None:
    key = f"send-all:{new_id()}"
    tally = [0.0]
    REDIS_SECONDS.set(tally)
    with pytest.raises(ResponseError) as caught:
        await send_all(one_connection, [("SET", key, "text"), ("INCR", key), ("SET", key, "after")])
    assert str(caught.value) == "value is not an integer or out of range"  # not redis-py's pipeline text
    assert tally[0] > 0  # counted in the hop's Redis time
    # The command after the error ran, and its reply did not stay behind for the next batch.
    assert await send_all(one_connection, [("GET", key), ("DEL", key)]) == [b"after", 1]


async def test_a_batch_cancelled_while_its_replies_come_leaves_none_for_the_next(one_connection) -> None:
    key = f"send-all:{new_id()}"
    await send_all(one_connection, [("SET", key, "value")])
    batch = asyncio.ensure_future(send_all(one_connection, [busy(1000), *[("GET", key)] * 100]))
    await asyncio.sleep(0.2)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    await asyncio.sleep(1)  # Redis answers again
    assert await send_all(one_connection, [("ECHO", "mine"), ("DEL", key)]) == [b"mine", 1]


async def test_replies_that_keep_coming_are_read_however_long_the_batch(one_connection) -> None:
    """Each reply within the read timeout (0.5 s), the batch's in all well past it: as redis-py's
    pipeline read them."""
    assert await send_all(one_connection, [busy(150, padding=64 * 1024)] * 8) == [1] * 8


async def test_a_batch_whose_replies_outlast_the_read_timeout_fails_and_leaves_none_for_the_next(
    one_connection,
) -> None:
    """A reply that does not come within the read timeout (0.5 s) fails the batch."""
    with pytest.raises(TimeoutError):
        await send_all(one_connection, [busy(1000), ("ECHO", "late")])
    await asyncio.sleep(1)  # Redis answers again
    assert await send_all(one_connection, [("ECHO", "mine")]) == [b"mine"]
