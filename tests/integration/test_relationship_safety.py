"""The relationship service's money-safety properties against the real Redis, through its handlers,
with an injected clock: unique output ids, redeliveries without side effects, pair versions,
rule 7 races, one id namespace per topic, and visible refusals of reused ids."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from services.relationship.handlers import RelationshipHandlers
from services.relationship.store import RelationshipStore
from shared.clock import FixedClock
from shared.contracts import EnrollmentChanged, KinshipRecorded, RelationshipCommand, RelationshipEvent
from shared.ids import derived_event_id
from shared.policy import PolicyCache
from shared.runtime import Refused
from shared.topics import ENROLLMENT, RELATIONSHIP_COMMANDS
from tests.support import new_id, new_person_id

AT = "2026-03-02T12:00:00+08:00"
NOON = datetime.fromisoformat(AT)


@pytest.fixture
async def service(redis) -> RelationshipHandlers:
    store = RelationshipStore(redis)
    await store.load()
    return RelationshipHandlers(store, PolicyCache(redis, 0), FixedClock(NOON))


def enrollment(
    person: str,
    insurance_type: str = "employee",
    region: str = "440300",
    status: str = "normal",
    event_id: str | None = None,
) -> EnrollmentChanged:
    return EnrollmentChanged(
        event_id=event_id or new_id("enr"),
        person_id=person,
        insurance_type=insurance_type,
        region=region,
        status=status,
        occurred_at=AT,
    )


def kinship_fact(person: str, relative: str, kinship: str, event_id: str | None = None) -> KinshipRecorded:
    return KinshipRecorded(
        event_id=event_id or new_id("kin"), person_id=person, relative_id=relative, kinship=kinship, occurred_at=AT
    )


def command(action: str, provider: str, recipient: str, actor: str | None = None, **fields: Any) -> RelationshipCommand:
    if actor is None:
        actor = provider if action in ("request", "dissolve") else recipient
    if action == "request":
        fields = {"recipient_region": "510100", "kinship": "parent", **fields}
    return RelationshipCommand(
        command_id=fields.pop("command_id", None) or new_id("cmd"),
        action=action,
        actor_id=actor,
        provider_id=provider,
        recipient_id=recipient,
        requested_at=AT,
        **fields,
    )


async def enroll(service: RelationshipHandlers, person: str, *args: Any, **fields: Any) -> list:
    return await service.on_enrollment([enrollment(person, *args, **fields)])


async def act(
    service: RelationshipHandlers, action: str, provider: str, recipient: str, **fields: Any
) -> list[RelationshipEvent]:
    return await service.on_commands([command(action, provider, recipient, **fields)])


async def family(service: RelationshipHandlers) -> tuple[str, str]:
    """An employee in Shenzhen and their parent, resident-insured in Chengdu, backed by the registry."""
    provider, recipient = new_person_id(), new_person_id()
    await enroll(service, provider)
    await enroll(service, recipient, "resident", "510100")
    await service.on_kinship([kinship_fact(provider, recipient, "parent")])
    return provider, recipient


async def establish(service: RelationshipHandlers, provider: str, recipient: str) -> list[RelationshipEvent]:
    (requested,) = await act(service, "request", provider, recipient)
    (established,) = await act(service, "accept", provider, recipient)
    assert (requested.type, established.type) == ("requested", "established")
    return [requested, established]


def pairs(events: list) -> list[tuple[str, str, str]]:
    return [(event.type, event.provider_id, event.recipient_id) for event in events]


async def state_of(redis: Redis, *people: str) -> dict[bytes, Any]:
    """Every key the relationship service keeps for these people, with its content."""
    state: dict[bytes, Any] = {}
    for person in people:
        async for key in redis.scan_iter(match=f"rel:{{p:{person}}}:*"):
            kind = (await redis.type(key)).decode()
            read = {"hash": redis.hgetall, "set": redis.smembers, "string": redis.get}[kind]
            state[key] = await read(key)
    return state


def around(
    store: RelationshipStore,
    monkeypatch,
    name: str,
    before: Callable[[], Awaitable[Any]] | None = None,
    after: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Runs another handler's work just before or just after the next call of one of the store's
    steps: the worst moment for the handler that is deciding."""
    original = getattr(store, name)

    async def interleaved(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(store, name, original)  # once
        if before:
            await before()
        result = await original(*args, **kwargs)
        if after:
            await after()
        return result

    monkeypatch.setattr(store, name, interleaved)


# ---- A: output ids never collide ---------------------------------------------------------


async def test_two_people_numbering_their_enrollment_events_alike_never_produce_the_same_event_id(service) -> None:
    provider, recipient = await family(service)
    await establish(service, provider, recipient)
    # The provider's province numbers its events "2"; the provider moves within Guangdong.
    first = await enroll(service, provider, "employee", "440100", event_id="2")
    await establish(service, provider, recipient)
    # The recipient's province numbers its events "2" too; the recipient's status changes.
    second = await enroll(service, recipient, "resident", "510100", "suspended", event_id="2")
    assert pairs(first) == pairs(second) == [("terminated", provider, recipient)]
    assert first[0].event_id != second[0].event_id  # else the wallet drops the second as a duplicate


async def test_an_event_id_is_derived_from_the_service_the_input_topic_its_scope_and_its_id(service) -> None:
    provider, recipient = await family(service)
    requested = command("request", provider, recipient)
    (event,) = await service.on_commands([requested])
    assert event.event_id == derived_event_id(
        "relationship", RELATIONSHIP_COMMANDS.name, provider, requested.command_id, "requested"
    )
    assert event.cause_id == requested.command_id
    change = enrollment(recipient, "resident", "510700")
    (ended,) = await service.on_enrollment([change])
    assert ended.event_id == derived_event_id(
        "relationship", ENROLLMENT.name, recipient, change.event_id, provider, recipient
    )
    assert ended.cause_id == change.event_id


async def test_the_same_command_id_of_two_providers_gives_two_event_ids(service) -> None:
    (provider, recipient), (other, other_recipient) = await family(service), await family(service)
    (one,) = await act(service, "request", provider, recipient, command_id="1")
    (two,) = await act(service, "request", other, other_recipient, command_id="1")
    conflicts = [
        await act(service, "request", someone, relative, command_id="1", kinship="child")
        for someone, relative in ((provider, recipient), (other, other_recipient))
    ]
    ids = {one.event_id, two.event_id} | {event.event_id for (event,) in conflicts}
    assert len(ids) == 4


# ---- B: a redelivery has no side effect ---------------------------------------------------


async def test_a_redelivered_dissolve_leaves_a_relationship_established_since_to_rule_7(service) -> None:
    provider, recipient = await family(service)
    await establish(service, provider, recipient)
    dissolve = command("dissolve", provider, recipient)
    (dissolved,) = await service.on_commands([dissolve])
    await establish(service, provider, recipient)
    assert await service.on_commands([dissolve]) == [dissolved]
    assert pairs(await enroll(service, recipient, "resident", "510700")) == [("terminated", provider, recipient)]


async def test_a_redelivered_decline_leaves_a_relationship_established_since_to_rule_7(service) -> None:
    provider, recipient = await family(service)
    await act(service, "request", provider, recipient)
    decline = command("decline", provider, recipient)
    (declined,) = await service.on_commands([decline])
    assert declined.type == "declined"
    await establish(service, provider, recipient)
    assert await service.on_commands([decline]) == [declined]
    assert pairs(await enroll(service, recipient, "resident", "510700")) == [("terminated", provider, recipient)]


async def test_a_redelivered_enrollment_change_leaves_a_relationship_established_since_to_rule_7(service) -> None:
    provider, recipient = await family(service)
    await establish(service, provider, recipient)
    moved = enrollment(provider, "employee", "440100")
    ended = await service.on_enrollment([moved])
    assert pairs(ended) == [("terminated", provider, recipient)]
    await establish(service, provider, recipient)
    assert await service.on_enrollment([moved]) == ended
    assert pairs(await enroll(service, recipient, "resident", "510700")) == [("terminated", provider, recipient)]


async def test_an_old_kinship_fact_redelivered_never_overrides_a_newer_one(service) -> None:
    provider, recipient = new_person_id(), new_person_id()
    await enroll(service, provider)
    await enroll(service, recipient, "resident", "510100")
    mistaken = kinship_fact(recipient, provider, "sibling")
    await service.on_kinship([mistaken])
    await service.on_kinship([kinship_fact(recipient, provider, "parent")])  # the registry corrects itself
    await service.on_kinship([mistaken])  # redelivered
    (as_sibling,) = await act(service, "request", provider, recipient, kinship="sibling")
    assert (as_sibling.type, as_sibling.reason) == ("rejected", "KINSHIP_UNVERIFIED")
    (as_child,) = await act(service, "request", provider, recipient, kinship="child")
    assert as_child.type == "requested"


async def test_registry_facts_of_the_two_sides_that_disagree_verify_nothing(service) -> None:
    provider, recipient = await family(service)  # the provider's fact: the recipient is their parent
    await service.on_kinship([kinship_fact(recipient, provider, "sibling")])
    for kinship in ("parent", "sibling"):
        (event,) = await act(service, "request", provider, recipient, kinship=kinship)
        assert (event.type, event.reason) == ("rejected", "KINSHIP_UNVERIFIED")


async def test_registry_facts_of_the_two_sides_that_agree_verify_the_kinship(service) -> None:
    provider, recipient = await family(service)
    await service.on_kinship([kinship_fact(recipient, provider, "child")])
    (event,) = await act(service, "request", provider, recipient, kinship="parent")
    assert event.type == "requested"


async def test_every_redelivered_input_answers_as_before_and_changes_nothing(service, redis) -> None:
    provider, recipient = new_person_id(), new_person_id()
    inputs: list[tuple[Callable, Any]] = [
        (service.on_enrollment, enrollment(provider)),
        (service.on_enrollment, enrollment(recipient, "resident", "510100")),
        (service.on_kinship, kinship_fact(provider, recipient, "parent")),
        (service.on_commands, command("request", provider, recipient)),
        (service.on_commands, command("accept", provider, recipient)),
        (service.on_commands, command("dissolve", provider, recipient)),
        (service.on_commands, command("request", provider, recipient)),
        (service.on_commands, command("decline", provider, recipient)),
        (service.on_commands, command("request", provider, recipient)),
        (service.on_commands, command("accept", provider, recipient)),
        (service.on_enrollment, enrollment(provider, "employee", "440100")),
        (service.on_commands, command("request", provider, recipient)),
        (service.on_commands, command("accept", provider, recipient)),
        (service.on_enrollment, enrollment(recipient, "resident", "510700")),
        (service.on_commands, command("request", provider, recipient, recipient_region="510700")),
    ]
    answers = [await handle([message]) for handle, message in inputs]
    assert [event.type for answer in answers for event in answer] == [
        "requested",
        "established",
        "dissolved",
        "requested",
        "declined",
        "requested",
        "established",
        "terminated",
        "requested",
        "established",
        "terminated",
        "requested",
    ]
    before = await state_of(redis, provider, recipient)
    for (handle, message), answer in zip(inputs, answers, strict=True):
        assert await handle([message]) == answer
        assert await state_of(redis, provider, recipient) == before, message


def crash_once(store: RelationshipStore, monkeypatch, name: str) -> None:
    """The process dies at the next call of one of the store's steps, before the step runs."""
    original = getattr(store, name)

    async def crash(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(store, name, original)
        raise ConnectionError("killed")

    monkeypatch.setattr(store, name, crash)


async def test_a_crash_between_a_step_and_the_index_is_repaired_by_the_redelivery(service, redis, monkeypatch) -> None:
    provider, recipient = await family(service)
    await establish(service, provider, recipient)
    dissolve = command("dissolve", provider, recipient)
    crash_once(service.store, monkeypatch, "index_provider")
    with pytest.raises(ConnectionError):
        await service.on_commands([dissolve])
    assert await redis.hget(f"rel:{{p:{recipient}}}:providers", provider) == b"2|active"
    (dissolved,) = await service.on_commands([dissolve])
    assert (dissolved.type, dissolved.version) == ("dissolved", 3)
    assert await redis.hget(f"rel:{{p:{recipient}}}:providers", provider) == b"3|ended"


async def test_a_redelivered_enrollment_change_never_ends_a_relationship_requested_after_it(
    service, monkeypatch
) -> None:
    provider, recipient = await family(service)
    await establish(service, provider, recipient)
    change = enrollment(recipient, "resident", "510100", "suspended")
    crash_once(service.store, monkeypatch, "end_relationship")
    with pytest.raises(ConnectionError):
        await service.on_enrollment([change])
    await act(service, "dissolve", provider, recipient)
    await enroll(service, recipient, "resident", "510100")  # normal again
    (requested,) = await act(service, "request", provider, recipient)
    assert requested.type == "requested"
    assert await service.on_enrollment([change]) == []  # the request knew the change: it stays
    (established,) = await act(service, "accept", provider, recipient)
    assert established.type == "established"


# ---- C: every change of a pair carries the pair's next version ----------------------------


async def test_each_change_of_a_pair_carries_the_next_version_and_a_refusal_none(service) -> None:
    provider, recipient = await family(service)
    events = await establish(service, provider, recipient)
    events += await act(service, "request", provider, recipient)  # a duplicate: refused
    events += await act(service, "dissolve", provider, recipient)
    events += await act(service, "request", provider, recipient)
    events += await act(service, "decline", provider, recipient)
    events += await establish(service, provider, recipient)
    events += await enroll(service, provider, "employee", "440100")  # ends it as the provider
    events += await establish(service, provider, recipient)
    events += await enroll(service, recipient, "resident", "510100", "suspended")  # ends it as the recipient
    assert [(event.type, event.version) for event in events] == [
        ("requested", 1),
        ("established", 2),
        ("rejected", None),
        ("dissolved", 3),
        ("requested", 4),
        ("declined", 5),
        ("requested", 6),
        ("established", 7),
        ("terminated", 8),
        ("requested", 9),
        ("established", 10),
        ("terminated", 11),
    ]


async def test_a_refused_command_and_a_conflict_carry_no_version(service) -> None:
    provider, recipient = await family(service)
    (refused,) = await act(service, "accept", provider, recipient)
    (requested,) = await act(service, "request", provider, recipient, command_id="c1")
    (conflict,) = await act(service, "request", provider, recipient, command_id="c1", kinship="child")
    assert [(e.type, e.reason, e.version) for e in (refused, requested, conflict)] == [
        ("rejected", "RELATIONSHIP_NOT_ACTIVE", None),
        ("requested", None, 1),
        ("rejected", "CONFLICT", None),
    ]


# ---- D: rule 7 races at request and at acceptance ------------------------------------------


async def test_a_recipient_who_moves_just_before_the_request_step_is_not_accepted_under_the_old_region(
    service, monkeypatch
) -> None:
    provider, recipient = await family(service)
    moves = []

    async def move() -> None:
        moves.extend(await enroll(service, recipient, "resident", "510700"))

    around(service.store, monkeypatch, "apply_command", before=move)
    (requested,) = await act(service, "request", provider, recipient)
    # Decided on the facts read before the move, which already reached the provider's slot: stale.
    assert (requested.type, requested.reason, requested.version) == ("rejected", "INSURANCE_CHANGED", None)
    (accepted,) = await act(service, "accept", provider, recipient)
    assert (accepted.type, accepted.reason) == ("rejected", "RELATIONSHIP_NOT_ACTIVE")
    assert moves == []  # nothing was pending to end


async def test_a_request_whose_recipient_moves_after_the_index_before_its_step_does_not_stay_pending(
    service, monkeypatch
) -> None:
    """Rule 7 ends every *pending* relationship of a person whose insurance changes. The recipient
    moves after the request read the facts and named the provider in the recipient's index, just
    before the request's step: the move's handler asks the provider's slot to end the pair before
    the pair exists. The request must not then be stored pending on the recipient's old insurance."""
    provider, recipient = await family(service)
    moves: list = []

    async def move() -> None:
        moves.extend(await enroll(service, recipient, "resident", "510700"))

    around(service.store, monkeypatch, "apply_command", before=move)
    (requested,) = await act(service, "request", provider, recipient)
    assert (requested.type, requested.reason) == ("rejected", "INSURANCE_CHANGED")
    assert moves == []
    assert [row["state"] for row in await service.store.relationships_of(provider)] == []
    assert await service.store.relationships_of(recipient) == []


async def test_a_request_refused_as_stale_never_blocks_the_request_for_the_recipients_new_region(
    service, redis, monkeypatch
) -> None:
    provider, recipient = await family(service)
    change = enrollment(recipient, "resident", "510700")
    stale = command("request", provider, recipient)

    async def move() -> None:
        await service.on_enrollment([change])

    around(service.store, monkeypatch, "apply_command", before=move)
    (refused,) = await service.on_commands([stale])
    assert (refused.type, refused.reason) == ("rejected", "INSURANCE_CHANGED")
    (again,) = await act(service, "request", provider, recipient, recipient_region="510700")
    assert (again.type, again.reason, again.version) == ("requested", None, 1)
    # Redelivered, the stale request and the move answer as before and change nothing.
    before = await state_of(redis, provider, recipient)
    assert await service.on_commands([stale]) == [refused]
    assert await service.on_enrollment([change]) == []
    assert await state_of(redis, provider, recipient) == before
    (established,) = await act(service, "accept", provider, recipient)
    assert (established.type, established.recipient_region) == ("established", "510700")


async def test_a_request_whose_recipient_moves_between_the_facts_and_the_index_does_not_stay_pending(
    service, monkeypatch
) -> None:
    """Same, one step earlier: the recipient moves before the provider is named in the recipient's
    index, so the move's handler asks no provider to end anything."""
    provider, recipient = await family(service)

    async def move() -> None:
        await enroll(service, recipient, "resident", "510700")

    around(service.store, monkeypatch, "expect_provider", before=move)
    (requested,) = await act(service, "request", provider, recipient)
    assert requested.type == "rejected"
    assert await service.store.relationships_of(provider) == []
    (again,) = await act(service, "request", provider, recipient, recipient_region="510700")
    assert again.type == "requested"


async def test_a_recipient_who_moves_just_after_the_request_step_ends_the_request(service, monkeypatch) -> None:
    provider, recipient = await family(service)
    moves = []

    async def move() -> None:
        moves.extend(await enroll(service, recipient, "resident", "510700"))

    around(service.store, monkeypatch, "apply_command", after=move)
    (requested,) = await act(service, "request", provider, recipient)
    assert [(e.type, e.reason, e.version) for e in moves] == [("terminated", "INSURANCE_CHANGED", 2)]
    (accepted,) = await act(service, "accept", provider, recipient)
    assert (accepted.type, accepted.reason) == ("rejected", "RELATIONSHIP_NOT_ACTIVE")


async def test_a_recipient_who_moves_while_an_acceptance_is_decided_is_not_accepted(service, monkeypatch) -> None:
    provider, recipient = await family(service)
    await act(service, "request", provider, recipient)
    moves = []

    async def move() -> None:
        moves.extend(await enroll(service, recipient, "resident", "510700"))

    around(service.store, monkeypatch, "apply_command", before=move)
    (accepted,) = await act(service, "accept", provider, recipient)
    assert pairs(moves) == [("terminated", provider, recipient)]
    assert (accepted.type, accepted.reason) == ("rejected", "RELATIONSHIP_NOT_ACTIVE")


@pytest.mark.parametrize("action", ["request", "accept"])
async def test_a_provider_whose_insurance_changes_while_a_command_is_decided_is_refused(
    service, monkeypatch, action: str
) -> None:
    provider, recipient = await family(service)
    if action == "accept":
        await act(service, "request", provider, recipient)

    async def suspend() -> None:
        await enroll(service, provider, "employee", "440300", "suspended")

    around(service.store, monkeypatch, "apply_command", before=suspend)
    (event,) = await act(service, action, provider, recipient)
    assert (event.type, event.reason) == ("rejected", "INSURANCE_CHANGED")
    assert await service.store.relationships_of(provider) == []


# ---- E: one id namespace per person and topic ------------------------------------------------


async def test_a_command_id_equal_to_an_enrollment_event_id_is_no_conflict(service) -> None:
    provider, recipient = new_person_id(), new_person_id()
    await enroll(service, provider, event_id="42")
    await enroll(service, recipient, "resident", "510100")
    await service.on_kinship([kinship_fact(provider, recipient, "parent")])
    (event,) = await act(service, "request", provider, recipient, command_id="42")
    assert event.type == "requested"


async def test_a_kinship_event_id_equal_to_an_enrollment_event_id_is_no_conflict(service) -> None:
    provider, recipient = new_person_id(), new_person_id()
    await enroll(service, provider, event_id="7")
    await enroll(service, recipient, "resident", "510100")
    assert await service.on_kinship([kinship_fact(provider, recipient, "parent", event_id="7")]) == []
    (event,) = await act(service, "request", provider, recipient)
    assert event.type == "requested"


async def test_a_command_id_shaped_like_an_internal_record_breaks_nothing(service) -> None:
    provider, recipient = await family(service)
    change = enrollment(recipient, "resident", "510700")
    (requested,) = await act(service, "request", provider, recipient, command_id=f"{change.event_id}/{recipient}")
    assert requested.type == "requested"
    assert pairs(await service.on_enrollment([change])) == [("terminated", provider, recipient)]


# ---- F: an id reused for other content is refused visibly on every topic ------------------


async def test_an_enrollment_id_reused_for_other_content_is_refused_visibly_and_changes_nothing(service) -> None:
    provider, recipient = await family(service)
    await establish(service, provider, recipient)
    first = enrollment(recipient, "resident", "510100", event_id="e1")
    other = enrollment(recipient, "resident", "510700", event_id="e1")
    assert await service.on_enrollment([first]) == []
    (refusal,) = await service.on_enrollment([other])
    assert isinstance(refusal, Refused)
    assert (refusal.message, refusal.reason) == (other, "CONFLICT") and "used before" in refusal.error
    assert (await service.store.enrollment(recipient)).region == "510100"
    assert [row["state"] for row in await service.store.relationships_of(recipient)] == ["active"]


async def test_a_kinship_id_reused_for_other_content_is_refused_visibly_and_changes_nothing(service) -> None:
    provider, recipient = new_person_id(), new_person_id()
    await enroll(service, provider)
    await enroll(service, recipient, "resident", "510100")
    assert await service.on_kinship([kinship_fact(provider, recipient, "parent", event_id="k1")]) == []
    other = kinship_fact(provider, recipient, "sibling", event_id="k1")
    (refusal,) = await service.on_kinship([other])
    assert isinstance(refusal, Refused)
    assert (refusal.message, refusal.reason) == (other, "CONFLICT") and "used before" in refusal.error
    assert await service.store.recorded_kinship(provider, recipient) == "parent"
