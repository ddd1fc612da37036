"""Every other input's idempotency window on the real Redis: an input is applied only while its time
lies within the window, its id is recognised at least as long as a copy of it may come (two
generations of seen ids, one made the earlier by a write a generation on), and nothing kept only to
recognise an input stays in Redis for good."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
import redis as sync_redis
from pydantic import BaseModel

from gongji.ops.window import SEEN_KEPT_FOR, keep_seen_for_window
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    DeadLetter,
    EnrollmentChanged,
    KinshipRecorded,
    ReasonCode,
    RelationshipCommand,
    SupervisionActed,
    WalletCommand,
    WalletEvent,
)
from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.redis_client import in_database
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    ENROLLMENT,
    KINSHIP,
    RELATIONSHIP_COMMANDS,
    SUPERVISION,
    WALLET_COMMANDS,
    Topic,
)
from shared.window import InputWindow
from tests.integration.bus import Bus
from tests.support import new_id, new_person_id

WINDOW = InputWindow()
REGION = "510100"


@pytest.fixture
async def bus(redis) -> Bus:
    return await Bus(redis).load()


def _enrollment(person: str, at: datetime) -> EnrollmentChanged:
    return EnrollmentChanged(
        event_id=new_id("enr"),
        person_id=person,
        insurance_type="employee",
        region=REGION,
        status="normal",
        occurred_at=at,
    )


# Each input topic with a window, and a message of it for `person` (enrolled, credited) at a time.
INPUTS: dict[str, tuple[Topic, Callable[[str, datetime], BaseModel]]] = {
    "enrollment": (ENROLLMENT, _enrollment),
    "credit": (
        ACCOUNT_CREDITS,
        lambda person, at: AccountCredited(event_id=new_id("cr"), person_id=person, amount_fen=100, occurred_at=at),
    ),
    "spend": (
        ACCOUNT_SPENDS,
        lambda person, at: AccountSpent(event_id=new_id("sp"), person_id=person, amount_fen=100, occurred_at=at),
    ),
    "kinship": (
        KINSHIP,
        lambda person, at: KinshipRecorded(
            event_id=new_id("kin"), person_id=person, relative_id=new_person_id(), kinship="parent", occurred_at=at
        ),
    ),
    "supervision": (
        SUPERVISION,
        lambda person, at: SupervisionActed(
            event_id=new_id("sv"), person_id=person, action="freeze", reason="a case", occurred_at=at
        ),
    ),
    "relationship command": (
        RELATIONSHIP_COMMANDS,
        lambda person, at: RelationshipCommand(
            command_id=new_id("cmd"),
            action="request",
            actor_id=person,
            provider_id=person,
            recipient_id=new_person_id(),
            recipient_region=REGION,
            kinship="parent",
            requested_at=at,
        ),
    ),
    "grant": (
        WALLET_COMMANDS,
        lambda person, at: WalletCommand(
            command_id=new_id("g"),
            action="grant",
            actor_id=person,
            provider_id=person,
            recipient_id=new_person_id(),
            recipient_region=REGION,
            amount_fen=100,
            requested_at=at,
        ),
    ),
}


def input_id(message: BaseModel) -> str:
    return getattr(message, "command_id", None) or message.event_id  # type: ignore[attr-defined]


async def seen_anywhere(bus: Bus, person: str, message: BaseModel) -> bool:
    """Whether any service holds the input's id among the person's seen ids."""
    keys = [key async for key in bus.redis.scan_iter(match=f"*{{p:{person}}}:seen:*")]
    return any([await bus.redis.hexists(key, input_id(message)) for key in keys])


def refusals(outputs: list[BaseModel]) -> set[ReasonCode | None]:
    return {output.reason for output in outputs if isinstance(output, DeadLetter | WalletEvent)} | {
        output.reason for output in outputs if getattr(output, "type", None) == "rejected"
    }


@pytest.mark.parametrize("kind", sorted(INPUTS))
async def test_the_last_moment_inside_the_window_is_taken_and_outside_it_refused_unapplied(bus: Bus, kind: str) -> None:
    topic, make = INPUTS[kind]
    person = await bus.person("employee", REGION)
    await bus.credit(person, 10_000)
    now = bus.clock.now()
    oldest = make(person, now - WINDOW.length)
    too_old = make(person, now - WINDOW.length - timedelta(seconds=1))
    ahead = make(person, now + WINDOW.skew + timedelta(seconds=1))

    taken = await bus.publish(topic, oldest)
    assert not refusals(taken) & {ReasonCode.INPUT_TOO_OLD, ReasonCode.INVALID_MESSAGE}, taken
    assert await seen_anywhere(bus, person, oldest)
    for message, reason in ((too_old, ReasonCode.INPUT_TOO_OLD), (ahead, ReasonCode.INVALID_MESSAGE)):
        answered = await bus.publish(topic, message)
        assert answered and refusals(answered) == {reason}, answered  # every service that reads it refuses it
        assert not await seen_anywhere(bus, person, message)  # nothing applied, the id not taken


async def test_a_copy_within_the_window_is_recognised_after_its_id_moved_to_the_earlier_generation(redis) -> None:
    bus = await Bus(redis).load()
    wallet, clock = bus.saga.wallet, bus.clock
    person, began = new_person_id(), clock.now()
    seen_key = f"wal:{{p:{person}}}:seen:credits"

    async def credit(event_id: str, days: int) -> WalletEvent:
        message = AccountCredited(
            event_id=event_id, person_id=person, amount_fen=100, occurred_at=began + timedelta(days=days)
        )
        (answer,) = await wallet.on_credits([message])
        return answer

    await credit("first", 0)  # begins the generation
    clock.set(began + timedelta(days=10))
    kept = await credit("kept", 10)
    clock.set(began + WINDOW.generation + timedelta(days=1))
    await credit("next", 33)  # a generation on: the current one becomes the earlier one
    assert await redis.hexists(f"{seen_key}:earlier", "kept") and not await redis.hexists(seen_key, "kept")
    assert set(await redis.hkeys(seen_key)) == {b"", b"next"}  # "" holds when the generation began
    # The earlier one ends a generation after it ended: each id kept at least a generation after it
    # was applied, at most two (the deep audit reads the books back that far).
    left = timedelta(milliseconds=await redis.pttl(f"{seen_key}:earlier"))
    assert began + timedelta(days=10) + WINDOW.generation < clock.now() + left <= began + 2 * WINDOW.generation

    clock.set(began + timedelta(days=10) + WINDOW.length)  # kept's last moment in the window
    assert await credit("kept", 10) == kept  # its stored answer, not a second credit
    assert (await bus.saga.wstore.snapshot(person)).balance_fen == 300
    clock.set(clock.now() + timedelta(seconds=1))  # outside the window: delivered again late (a crash
    assert await credit("kept", 10) == kept  # before its answer was published), it gets its stored answer
    (refused,) = await wallet.on_credits(
        [AccountCredited(event_id="never", person_id=person, amount_fen=100, occurred_at=began + timedelta(days=10))]
    )
    assert refused.reason == ReasonCode.INPUT_TOO_OLD  # one never applied is refused
    assert (await bus.saga.wstore.snapshot(person)).balance_fen == 300


# What Redis keeps for as long as it lives (balances, grants, relationships and their versions, the
# enrollment copies, the draw order, standing freezes, closed months): every other key expires.
KEPT_FOR_GOOD = {
    "account",
    "grants",
    "relationships",
    "rel-versions",
    "rel-since",
    "grants-by-day",
    "providers",
    "freezes",
    "enrollment",
    "kinship",
    "rels",
    "versions",
    "recipient-generations",
    "closed",
}


async def test_nothing_kept_only_to_recognise_an_input_stays_in_redis_for_good(bus: Bus) -> None:
    provider, recipient = await bus.person("employee", "440300"), await bus.person("resident", REGION)
    await bus.credit(provider, 100_000)
    await bus.establish(provider, recipient, REGION)
    assert (await bus.grant(provider, recipient, REGION, 50_000)).type == "granted"
    await bus.publish(SUPERVISION, INPUTS["supervision"][1](provider, bus.clock.now()))
    await bus.publish(ACCOUNT_SPENDS, INPUTS["spend"][1](provider, bus.clock.now()))
    await bus.publish(ENROLLMENT, _enrollment(recipient, bus.clock.now()))  # moved: rule 7 ends the pair
    for person in (provider, recipient):
        keys = [key.decode() async for key in bus.redis.scan_iter(match=f"*{{p:{person}}}:*")]
        assert any(":seen:" in key for key in keys)
        if person == provider:
            assert f"rel:{{p:{provider}}}:terminations" in keys  # rule 7, once per recipient's change
        for key in keys:
            part = key.split("}:", 1)[1]
            if part not in KEPT_FOR_GOOD:
                assert await bus.redis.pttl(key) > 0, f"{key} is kept for good"


def test_a_longer_input_window_keeps_the_seen_ids_written_under_the_shorter_one(infrastructure) -> None:
    client = sync_redis.Redis.from_url(
        in_database(infrastructure.redis_url, 11), **redis_options(infrastructure, OPERATOR.name)
    )
    client.flushdb()
    seen_keys = ["wal:{p:P}:seen:credits", "wal:{p:P}:seen:credits:earlier", "rel:{p:P}:terminations"]
    for key in seen_keys:
        client.hset(key, "id", "-|{}")
        client.pexpire(key, 86_400_000)
    client.hset("wal:{p:P}:account", "balance", 1)  # kept for good, and stays so
    client.set(SEEN_KEPT_FOR, int(InputWindow().generation.total_seconds()))  # the default window and grace
    longer = InputWindow(length=timedelta(days=60))
    assert keep_seen_for_window(client, longer) == 3
    assert all(abs(client.pttl(key) - (86_400_000 + 30 * 86_400_000)) < 5_000 for key in seen_keys)
    assert client.ttl("wal:{p:P}:account") == -1
    assert keep_seen_for_window(client, InputWindow()) == 0  # shorter: nothing to do
    client.flushdb()
    client.close()


def test_seen_ids_kept_for_good_by_the_release_before_are_given_a_generation(infrastructure) -> None:
    client = sync_redis.Redis.from_url(
        in_database(infrastructure.redis_url, 11), **redis_options(infrastructure, OPERATOR.name)
    )
    client.flushdb()
    client.hset("wal:{p:P}:seen:credits", "old-id", "-|{}")  # as the release before wrote it: no expiry
    client.hset("rel:{p:P}:seen:commands", "id", "-|{}")
    client.pexpire("rel:{p:P}:seen:commands", 60_000)  # already kept by a generation: left as it is
    client.hset("wal:{p:P}:account", "balance", 1)
    assert keep_seen_for_window(client, InputWindow()) == 2
    generation_ms = InputWindow().generation.total_seconds() * 1000
    assert abs(client.pttl("wal:{p:P}:seen:credits") - generation_ms) < 5_000
    assert 0 < client.pttl("rel:{p:P}:seen:commands") <= 60_000
    assert client.ttl("wal:{p:P}:account") == -1
    assert keep_seen_for_window(client, InputWindow()) == 0  # once: the generation is on record now
    client.flushdb()
    client.close()
