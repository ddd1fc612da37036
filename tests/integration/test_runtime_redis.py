"""How the runtime reads the real Redis's errors: an unwell Redis is retried, never mistaken for
a record's own failure (which would dead-letter a valid message)."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from shared.redis_functions import call_step
from shared.runtime import is_transient
from tests.support import new_id, new_person_id


async def test_a_missing_library_is_an_unwell_redis_not_a_poisonous_record(redis) -> None:
    """What a step raises on a Redis that came back without the service's library (a failover to a
    node never loaded), through the real client and pipeline."""
    with pytest.raises(ResponseError) as caught:
        await call_step(redis, f"gongji_missing_{new_id().replace('-', '_')}", [f"x:{{p:{new_person_id()}}}"], [])
    assert "pipeline" not in str(caught.value)  # the reply as Redis gave it
    assert is_transient(caught.value)


async def test_a_lua_error_of_a_step_is_the_record_s_own(redis) -> None:
    with pytest.raises(ResponseError) as caught:
        await redis.eval("return redis.call('HINCRBY', KEYS[1], 'x', 'not a number')", 1, f"x:{{p:{new_person_id()}}}")
    assert not is_transient(caught.value)
