"""Rules 1–7 through the running relationship service over the real Kafka and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import pytest

from shared.ids import mask_person_id
from shared.topics import RELATIONSHIP_EVENTS
from tests.e2e.world import World
from tests.support import new_id, new_person_id, now_iso

pytestmark = pytest.mark.timeout(240)


async def family(
    world: World,
    provider_region: str = "440300",
    recipient_region: str = "510100",
    recipient_type: str = "resident",
    kinship: str = "parent",
) -> tuple[str, str]:
    provider = await world.person("employee", provider_region)
    recipient = await world.person(recipient_type, recipient_region)
    await world.kinship(provider, recipient, kinship)
    return provider, recipient


async def test_request_accept_dissolve(world: World) -> None:
    provider, recipient = await family(world)
    requested = await world.request(provider, recipient, "510100")
    assert (requested["type"], requested["kinship"], requested["recipient_region"]) == ("requested", "parent", "510100")
    established = await world.relationship_command("accept", recipient, provider, recipient)
    assert established["type"] == "established"
    dissolved = await world.relationship_command("dissolve", recipient, provider, recipient)
    assert dissolved["type"] == "dissolved"
    assert dissolved["event_id"] not in {requested["event_id"], established["event_id"]}
    assert dissolved["cause_id"] != established["cause_id"]


async def test_the_recipient_may_decline(world: World) -> None:
    provider, recipient = await family(world)
    await world.request(provider, recipient, "510100")
    assert (await world.relationship_command("decline", recipient, provider, recipient))["type"] == "declined"
    assert (await world.relationship_command("accept", recipient, provider, recipient))[
        "reason"
    ] == "RELATIONSHIP_NOT_ACTIVE"


async def test_the_registry_fact_may_be_recorded_from_either_side(world: World) -> None:
    provider = await world.person("employee", "440300")
    child = await world.person("resident", "440300")
    await world.kinship(child, provider, "parent")  # the provider is the child's parent
    assert (await world.request(provider, child, "440300", kinship="child"))["type"] == "requested"


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        ("cousin", "NOT_CLOSE_RELATIVE"),
        ("no_registry_fact", "KINSHIP_UNVERIFIED"),
        ("wrong_kinship", "KINSHIP_UNVERIFIED"),
        ("self", "SELF_RELATIONSHIP"),
        ("duplicate", "DUPLICATE_RELATIONSHIP"),
        ("resident_provider", "PROVIDER_NOT_EMPLOYEE"),
        ("suspended_provider", "PROVIDER_STATUS_ABNORMAL"),
        ("uninsured_recipient", "RECIPIENT_NOT_INSURED"),
        ("suspended_recipient", "RECIPIENT_STATUS_ABNORMAL"),
        ("wrong_region", "RECIPIENT_MISMATCH"),
        ("recipient_acts", "NOT_AUTHORIZED"),
        ("accept_nothing", "RELATIONSHIP_NOT_ACTIVE"),
        ("stranger_dissolves", "NOT_AUTHORIZED"),
    ],
)
async def test_each_refusal_has_its_reason(world: World, scenario: str, reason: str) -> None:
    provider, recipient = await family(world)
    region, kinship, actor = "510100", "parent", provider
    if scenario == "cousin":
        kinship = "cousin"
    elif scenario == "no_registry_fact":
        recipient = await world.person("resident", "510100")
    elif scenario == "wrong_kinship":
        kinship = "sibling"
    elif scenario == "self":
        recipient, region = provider, "440300"
        await world.kinship(provider, provider, "sibling")
    elif scenario == "duplicate":
        await world.request(provider, recipient, region)
    elif scenario == "resident_provider":
        await world.enroll(provider, "resident", "440300")
    elif scenario == "suspended_provider":
        await world.enroll(provider, "employee", "440300", "suspended")
    elif scenario == "uninsured_recipient":
        recipient = new_person_id()
        await world.kinship(provider, recipient, "parent")
    elif scenario == "suspended_recipient":
        await world.enroll(recipient, "resident", "510100", "suspended")
    elif scenario == "wrong_region":
        region = "510700"
    elif scenario == "recipient_acts":
        actor = recipient
    if scenario == "accept_nothing":
        event = await world.relationship_command("accept", recipient, provider, recipient)
    elif scenario == "stranger_dissolves":
        await world.request(provider, recipient, region)
        event = await world.relationship_command("dissolve", new_person_id(), provider, recipient)
    else:
        event = await world.relationship_command(
            "request", actor, provider, recipient, recipient_region=region, kinship=kinship
        )
    assert (event["type"], event["reason"]) == ("rejected", reason)


async def test_both_regions_need_the_wallet_opened_changeable_at_run_time(world: World, policy) -> None:
    provider, recipient = await family(world, "650100", "660100")
    await policy(closed_regions=frozenset({"66"}))
    assert (await world.request(provider, recipient, "660100"))["reason"] == "REGION_WALLET_CLOSED"
    await policy(closed_regions=frozenset())
    assert (await world.request(provider, recipient, "660100"))["type"] == "requested"


async def test_cross_province_only_from_the_date_in_force(world: World, policy) -> None:
    provider, recipient = await family(world, "440300", "510100")
    near = await world.person("resident", "440100")
    await world.kinship(provider, near, "sibling")
    await policy(cross_province_since=date(2099, 1, 1))
    assert (await world.request(provider, recipient, "510100"))["reason"] == "CROSS_PROVINCE_NOT_IN_FORCE"
    assert (await world.request(provider, near, "440100", kinship="sibling"))["type"] == "requested"
    await policy(cross_province_since=date(2026, 1, 9))
    assert (await world.request(provider, recipient, "510100"))["type"] == "requested"


async def test_the_same_command_twice_has_one_effect_and_other_content_is_a_conflict(world: World, kafka) -> None:
    provider, recipient = await family(world)
    command_id, requested_at = new_id("cmd"), now_iso()
    first = await world.request(provider, recipient, "510100", command_id=command_id, requested_at=requested_at)
    again = await world.request(provider, recipient, "510100", command_id=command_id, requested_at=requested_at)
    assert again["event_id"] == first["event_id"] and again["type"] == "requested"
    conflict = await world.relationship_command(
        "request", provider, provider, recipient, command_id=command_id, recipient_region="510100", kinship="child"
    )
    assert (conflict["type"], conflict["reason"]) == ("rejected", "CONFLICT")
    # Nothing changed: the relationship is still the first request's, pending, as a parent.
    assert (await world.relationship_command("accept", recipient, provider, recipient))["kinship"] == "parent"


async def test_many_relatives_in_both_directions(world: World) -> None:
    me = await world.person("employee", "440300")
    parent = await world.person("employee", "510100")
    children = [await world.person("resident", "440300") for _ in range(2)]
    for child in children:
        await world.establish(me, child, "440300", kinship="child")
    await world.establish(parent, me, "440300", kinship="child")
    shown = subprocess.run(
        [sys.executable, "-m", "gongji", "relationships", "show", me, "--json", "--full-ids"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    rows = {(row["provider_id"], row["recipient_id"]): row for row in json.loads(shown.stdout)}
    masked = subprocess.run(
        [sys.executable, "-m", "gongji", "relationships", "show", me, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert me not in masked and mask_person_id(me) in masked  # full ids only when asked for
    assert set(rows) == {(me, children[0]), (me, children[1]), (parent, me)}
    assert {row["state"] for row in rows.values()} == {"active"}
    table = subprocess.run(
        [sys.executable, "-m", "gongji", "relationships", "show", me], capture_output=True, text=True, timeout=60
    ).stdout
    assert table.count("active") == 3 and me not in table.split("\n", 1)[1]  # the table masks ids


async def test_an_insurance_change_terminates_every_relationship_of_the_person_once(world: World, kafka) -> None:
    me = await world.person("employee", "440300")
    recipients = [await world.person("resident", "510100") for _ in range(2)]
    provider_of_mine = await world.person("employee", "310100")
    for recipient in recipients:
        await world.establish(me, recipient, "510100", kinship="child")
    await world.establish(provider_of_mine, me, "440300", kinship="child")
    pending = await world.person("resident", "510100")
    await world.kinship(me, pending, "sibling")
    await world.request(me, pending, "510100", kinship="sibling")

    await world.enroll(me, "employee", "310100")  # moved to Shanghai: a change of region
    involved = {(me, r) for r in (*recipients, pending)} | {(provider_of_mine, me)}
    events = await kafka.wait_for(
        RELATIONSHIP_EVENTS,
        lambda m: m["type"] == "terminated" and (m["provider_id"], m["recipient_id"]) in involved,
        count=4,
    )
    await kafka.settle_quietly()
    events = kafka.matching(
        RELATIONSHIP_EVENTS, lambda m: m["type"] == "terminated" and (m["provider_id"], m["recipient_id"]) in involved
    )
    assert sorted((m["provider_id"], m["recipient_id"]) for m in events) == sorted(involved)
    assert {m["reason"] for m in events} == {"INSURANCE_CHANGED"}

    await world.enroll(me, "employee", "310100")  # the same facts again: no change, nothing ends
    await kafka.settle_quietly()
    assert (
        len(
            kafka.matching(
                RELATIONSHIP_EVENTS,
                lambda m: m["type"] == "terminated" and (m["provider_id"], m["recipient_id"]) in involved,
            )
        )
        == 4
    )
