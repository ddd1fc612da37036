"""How the runtime reads the real Redis's errors: an unwell Redis is retried, never mistaken for
a record's own failure (which would dead-letter a valid message)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from services.wallet.store import LIBRARY, WalletStore
from shared.records import Recorded
from shared.redis_functions import Call, Library, call_step
from shared.runtime import is_transient
from tests.support import SEEN, new_id, new_person_id

WALLET_LIBRARY_FILE = Path(__file__).parents[2] / "services" / "wallet" / "wallet.lua"


async def test_a_missing_library_is_an_unwell_redis_not_a_poisonous_record(redis) -> None:
    """What a step raises on a Redis that came back without the service's library (a failover to a
    node never loaded), through the real client and pipeline."""
    with pytest.raises(ResponseError) as caught:
        missing = Call(f"gongji_missing_{new_id().replace('-', '_')}", [f"x:{{p:{new_person_id()}}}"], [], Recorded)
        await call_step(redis, missing)
    assert "pipeline" not in str(caught.value)  # the reply as Redis gave it
    assert is_transient(caught.value)


async def test_a_lua_error_of_a_step_is_the_record_s_own(redis) -> None:
    with pytest.raises(ResponseError) as caught:
        await redis.eval("return redis.call('HINCRBY', KEYS[1], 'x', 'not a number')", 1, f"x:{{p:{new_person_id()}}}")
    assert not is_transient(caught.value)


async def test_two_releases_side_by_side_each_call_their_own_functions(redis, tmp_path) -> None:
    """During a rolling deploy an instance of the previous release must never call a function whose
    keys changed under it (a step that writes half and then fails): each release has its own names."""
    current = WalletStore(redis)
    await current.load()
    next_source = tmp_path / "wallet.lua"
    next_source.write_text(WALLET_LIBRARY_FILE.read_text() + "\n-- the next release\n")
    next_release = Library("gongji_wallet", next_source)
    await next_release.load(redis)
    assert next_release.version != LIBRARY.version
    libraries = await redis.function_list("gongji_wallet*")
    loaded = {dict(zip(entry[::2], entry[1::2], strict=True))[b"library_name"] for entry in libraries}
    assert {LIBRARY.name.encode(), next_release.name.encode()} <= loaded
    person = new_person_id()
    step = await current.credit(new_id(), "f", person, 100, "2026-03-02T12:00:00+08:00", SEEN)
    assert (step.outcome, step.result.balance_fen) == ("applied", 100)
