"""The plumbing every service shares: a round trip through a service process, bad input to the
dead-letter topic without stopping anything, and stops (SIGTERM, kill -9) that lose and repeat nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import signal

import pytest

from shared.topics import (
    ACCOUNT_CREDITS,
    CLAIMS,
    DEAD_LETTERS,
    RELATIONSHIP_COMMANDS,
    RELATIONSHIP_EVENTS,
    WALLET_EVENTS,
)
from tests.e2e.world import World, until
from tests.support import new_id, new_person_id, now_iso

pytestmark = pytest.mark.timeout(300)


async def test_a_credit_makes_the_round_trip_through_the_wallet_process(world: World) -> None:
    person = await world.person("employee", "440300")
    event = await world.credit(person, 12_345)
    assert (event["type"], event["amount_fen"], event["balance_fen"], event["frozen_fen"]) == (
        "credited",
        12_345,
        12_345,
        0,
    )
    assert event["_key"] == person  # keyed by provider_id, as the contract says


async def test_bad_messages_go_to_dead_letters_with_the_reason_and_the_next_good_one_is_processed(
    world: World, kafka
) -> None:
    person = await world.person("employee", "440300")
    marker = new_id("bad")
    not_json = f"not json {marker}".encode()
    bad_id = json.dumps(
        {"event_id": marker, "person_id": "110101198001010000", "amount_fen": 100, "occurred_at": now_iso()}
    ).encode()
    float_money = json.dumps(
        {"event_id": marker, "person_id": person, "amount_fen": 1.5, "occurred_at": now_iso()}
    ).encode()
    for payload in (not_json, bad_id, float_money):
        await kafka.publish(ACCOUNT_CREDITS, payload, key=person)
    good = await world.credit(person, 100)
    assert good["balance_fen"] == 100

    letters = await kafka.wait_for(DEAD_LETTERS, lambda m: marker.encode() in base64.b64decode(m["payload"]), count=3)
    by_payload = {base64.b64decode(letter["payload"]): letter for letter in letters}
    assert "Invalid JSON" in by_payload[not_json]["error"]
    assert "person_id" in by_payload[bad_id]["error"] and "check" in by_payload[bad_id]["error"].lower()
    assert "amount_fen" in by_payload[float_money]["error"]
    for letter in letters:
        assert (letter["source_topic"], letter["service"], letter["reason"], letter["_key"]) == (
            ACCOUNT_CREDITS.name,
            "wallet",
            "INVALID_MESSAGE",
            person,
        )
        assert letter["offset"] >= 0 and letter["partition"] >= 0


async def test_every_service_dead_letters_and_goes_on(world: World, kafka) -> None:
    marker = new_id("bad").encode()
    await kafka.publish(RELATIONSHIP_COMMANDS, b"{" + marker, key="x")
    await kafka.publish(CLAIMS, b"[" + marker, key="x")
    letters = await kafka.wait_for(DEAD_LETTERS, lambda m: marker in base64.b64decode(m["payload"]), count=2)
    assert {letter["service"] for letter in letters} == {"relationship", "settlement"}
    provider = await world.person("employee", "440300")
    assert (await world.relationship_command("accept", provider, provider, new_person_id()))["type"] == "rejected"


async def _stream_of_credits_across_a_stop(world: World, kafka, service_processes, sig: signal.Signals) -> None:
    """Publishes 400 credits to 8 accounts, stops the wallet in the middle with `sig`, restarts it,
    and checks that every credit took effect exactly once."""
    people = [await world.person("employee", "440300") for _ in range(8)]
    wallet = service_processes["wallet"]
    credits = [(new_id("stream"), people[n % len(people)], 100 + n) for n in range(400)]

    async def publish(batch):
        for event_id, person, amount in batch:
            await kafka.publish(
                ACCOUNT_CREDITS,
                {"event_id": event_id, "person_id": person, "amount_fen": amount, "occurred_at": now_iso()},
            )

    await publish(credits[:200])
    await kafka.wait_for(WALLET_EVENTS, lambda m: m["cause_id"] in {c[0] for c in credits[:200]}, count=50)
    stopping = asyncio.get_running_loop().run_in_executor(None, wallet.stop, sig)
    await publish(credits[200:])
    exit_code = await stopping
    if sig == signal.SIGTERM:
        assert exit_code == 0, wallet.tail()
    wallet.start()
    ids = {c[0] for c in credits}
    await kafka.wait_for_each(WALLET_EVENTS, "cause_id", ids, timeout=90)
    for person in people:
        expected = sum(amount for _, who, amount in credits if who == person)
        balance = await until(
            lambda person=person: world.redis.hget(f"wal:{{p:{person}}}:account", "balance"), "a balance"
        )
        assert int(balance) == expected  # nothing lost, nothing doubled
    # Redelivery after a stop may re-publish an answer, always with the same event_id.
    answers = kafka.matching(WALLET_EVENTS, lambda m: m["cause_id"] in ids)
    assert len({answer["event_id"] for answer in answers}) == len(ids)


async def test_sigterm_drains_commits_and_exits_0_without_loss(world: World, kafka, service_processes) -> None:
    await _stream_of_credits_across_a_stop(world, kafka, service_processes, signal.SIGTERM)


async def test_kill_9_in_the_middle_of_a_stream_loses_nothing(world: World, kafka, service_processes) -> None:
    await _stream_of_credits_across_a_stop(world, kafka, service_processes, signal.SIGKILL)


async def test_a_restart_in_a_stream_of_relationship_commands_loses_and_repeats_nothing(
    world: World, kafka, service_processes
) -> None:
    provider = await world.person("employee", "440300")
    recipients = [await world.person("resident", "440300") for _ in range(30)]
    for recipient in recipients:
        await world.kinship(provider, recipient, "child")
    commands = [new_id("cmd") for _ in recipients]
    relationship = service_processes["relationship"]
    for number, (command_id, recipient) in enumerate(zip(commands, recipients, strict=True)):
        if number == 15:
            relationship.stop(signal.SIGKILL)
            relationship.start()
        await kafka.publish(
            RELATIONSHIP_COMMANDS,
            {
                "command_id": command_id,
                "action": "request",
                "actor_id": provider,
                "provider_id": provider,
                "recipient_id": recipient,
                "recipient_region": "440300",
                "kinship": "child",
                "requested_at": now_iso(),
            },
        )
    # Each command answered (counting messages would count one published again after the kill twice).
    events = await kafka.wait_for_each(RELATIONSHIP_EVENTS, "cause_id", set(commands), timeout=90)
    assert {event["type"] for event in events} == {"requested"}
    assert len({event["event_id"] for event in events}) == len(commands)
    # In order per provider: the events keep the order of the commands.
    first_seen = list(dict.fromkeys(event["cause_id"] for event in events))
    assert first_seen == commands
