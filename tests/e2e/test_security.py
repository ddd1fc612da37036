"""Province isolation through the running services: a province's claims come in on its own topic
as its own principal, are held to its own care, and their results come back on its own topic
(and the national one). After every refused attempt (here and in tests/integration/test_security.py)
valid claims still settle and the money invariants hold."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from shared.credentials import aiokafka_options
from shared.topics import SETTLEMENTS, province_claims, province_dead_letters, province_settlements
from tests.e2e.world import World
from tests.support import Kafka, another_claim_id, new_reversal_id, now_iso

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def as_province(infrastructure):
    """Producers of the provinces' own systems, each with its own credentials."""
    producers: dict[str, AIOKafkaProducer] = {}

    async def producer(province: str) -> AIOKafkaProducer:
        if province not in producers:
            producers[province] = AIOKafkaProducer(
                **aiokafka_options(infrastructure, f"province-{province}"), acks="all", enable_idempotence=True
            )
            await producers[province].start()
        return producers[province]

    yield producer
    for one in producers.values():
        await one.stop()


async def sent_by_province(kafka: Kafka, producer: AIOKafkaProducer, province: str, claim: dict) -> dict:
    """Publishes a claim on `province`'s own topic and returns its result as the province sees it."""
    seen = len(kafka.matching(province_settlements(province), lambda m: m["claim_id"] == claim["claim_id"]))
    await producer.send_and_wait(
        province_claims(province).name, json.dumps(claim).encode(), key=claim["recipient_id"].encode()
    )
    answers = await kafka.wait_for(
        province_settlements(province), lambda m: m["claim_id"] == claim["claim_id"], count=seen + 1
    )
    return answers[seen]


async def test_a_province_claim_is_settled_and_its_result_goes_to_its_own_topic_and_the_national_one(
    world: World, kafka: Kafka, as_province
) -> None:
    _, recipient = await world.funded_family(recipient_region="510100")
    claim = world.claim_message(recipient, "510100", 1_500)
    result = await sent_by_province(kafka, await as_province("51"), "51", claim)
    assert (result["status"], result["paid_fen"], result["service_region"]) == ("settled", 1_500, "510100")
    national = await kafka.wait_for(SETTLEMENTS, lambda m: m["claim_id"] == claim["claim_id"])
    assert national[0]["event_id"] == result["event_id"]
    # The payers are not the province's patients: it reads their ids masked, the national platform whole.
    provider = national[0]["payers"][0]["provider_id"]
    assert result["payers"] == [{**national[0]["payers"][0], "provider_id": f"{provider[:6]}********{provider[-4:]}"}]
    await kafka.settle_quietly()
    assert not kafka.matching(province_settlements("31"), lambda m: m["claim_id"] == claim["claim_id"])


async def test_a_claim_for_care_in_another_province_is_refused_service_region_mismatch(
    world: World, kafka: Kafka, as_province
) -> None:
    _, recipient = await world.funded_family(recipient_region="510100")
    elsewhere = world.claim_message(recipient, "510100", 2_000, service_region="310100")
    refused = await sent_by_province(kafka, await as_province("51"), "51", elsewhere)
    assert (refused["status"], refused["reason"], refused["paid_fen"]) == ("rejected", "SERVICE_REGION_MISMATCH", 0)
    # Province 51 cannot put it on 31's topic either: the broker refuses it.
    with pytest.raises(TopicAuthorizationFailedError):
        await (await as_province("51")).send_and_wait(province_claims("31").name, b"{}", key=recipient.encode())
    # The claim of the right province, for the same care and under the same id, settles: the id was not taken.
    assert (await sent_by_province(kafka, await as_province("31"), "31", elsewhere))["status"] == "settled"


async def test_another_province_cannot_take_a_hospitals_claim_id(world: World, kafka: Kafka, as_province) -> None:
    """Province 11 sends, on its own topic, a 100-fen premium under a Shenzhen hospital's next claim
    id: it is refused before the id is taken, and the hospital's claim under that id is paid."""
    _, patient = await world.funded_family(recipient_region="440300")
    hospital = world.claim_message(patient, "440300", 12_850, institution_code="H44030500012")
    squat = {**hospital, "category": "resident_premium", "institution_code": None, "amount_fen": 100}
    refused = await sent_by_province(kafka, await as_province("11"), "11", squat)
    assert (refused["status"], refused["reason"], refused["requested_fen"]) == (
        "rejected",
        "SERVICE_REGION_MISMATCH",
        100,
    )
    # Billed to its own region instead, the id is not one a claim of 110100 may have: refused, and told.
    own_region = {**squat, "service_region": "110100", "amount_fen": 101}
    refused = await sent_by_province(kafka, await as_province("11"), "11", own_region)
    assert (refused["status"], refused["reason"], refused["requested_fen"]) == ("rejected", "INVALID_MESSAGE", 101)
    assert "claim_id must be 110100-<serial>" in refused["error"]
    paid = await sent_by_province(kafka, await as_province("44"), "44", hospital)
    assert (paid["status"], paid["reason"], paid["requested_fen"], paid["paid_fen"]) == (
        "settled",
        None,
        12_850,
        12_850,
    )


async def test_a_province_reverses_only_claims_of_its_own_care(world: World, kafka: Kafka, as_province) -> None:
    _, recipient = await world.funded_family(recipient_region="510100")
    claim = world.claim_message(recipient, "510100", 3_000, service_region="310100")
    assert (await sent_by_province(kafka, await as_province("31"), "31", claim))["status"] == "settled"
    reversal = {
        "claim_id": new_reversal_id(claim["claim_id"]),
        "kind": "reverse",
        "recipient_id": recipient,
        "reverses": claim["claim_id"],
        "occurred_at": now_iso(),
    }
    refused = await sent_by_province(kafka, await as_province("51"), "51", reversal)
    assert (refused["status"], refused["reason"]) == ("rejected", "SERVICE_REGION_MISMATCH")
    reversed_ = await sent_by_province(kafka, await as_province("31"), "31", reversal)  # its id was not taken
    assert (reversed_["status"], reversed_["paid_fen"]) == ("reversed", 3_000)


async def test_another_provinces_claim_looks_exactly_like_an_unknown_one(
    world: World, kafka: Kafka, as_province
) -> None:
    """Naming claim ids in reversals, a province learns nothing: not whether a claim exists, nor
    for whom, nor whether it was reversed, paid or of its care (the national platform is told)."""
    _, recipient = await world.funded_family(recipient_region="510100")
    _, someone_else = await world.funded_family(recipient_region="510100")
    theirs = world.claim_message(recipient, "510100", 1_000, service_region="310100")
    assert (await sent_by_province(kafka, await as_province("31"), "31", theirs))["status"] == "settled"
    own = world.claim_message(recipient, "510100", 1_000)
    assert (await sent_by_province(kafka, await as_province("51"), "51", own))["status"] == "settled"
    probe = await as_province("51")

    async def reason(recipient_id: str, claim_id: str) -> str:
        reversal = {
            "claim_id": new_reversal_id(claim_id),
            "kind": "reverse",
            "recipient_id": recipient_id,
            "reverses": claim_id,
            "occurred_at": now_iso(),
        }
        return (await sent_by_province(kafka, probe, "51", reversal))["reason"]

    # Another province's claim ids are refused before anything is read, whether they exist or not.
    assert await reason(recipient, theirs["claim_id"]) == "SERVICE_REGION_MISMATCH"  # exists, for this person
    assert await reason(someone_else, theirs["claim_id"]) == "SERVICE_REGION_MISMATCH"  # exists, for someone else
    assert await reason(recipient, another_claim_id(theirs)) == "SERVICE_REGION_MISMATCH"  # never seen
    # Of its own region's ids, another recipient's claim reads as one never seen.
    assert await reason(someone_else, own["claim_id"]) == "UNKNOWN_CLAIM"
    assert await reason(someone_else, own["claim_id"] + "0") == "UNKNOWN_CLAIM"
    national = await world.reverse(someone_else, theirs["claim_id"])
    assert national["reason"] == "NOT_REVERSIBLE"  # the national platform keeps its precise answer


async def test_a_province_that_replays_anothers_claim_is_answered_nothing_of_it(
    world: World, kafka: Kafka, as_province
) -> None:
    """The stored settlement carries the payers' resident ids: it goes back only to the national
    topic and to the province that sent the claim, never to one that sends it again. (A province can
    send again only claims of its own care: the national platform's, here.)"""
    _, recipient = await world.funded_family(recipient_region="510100")
    claim = world.claim_message(recipient, "510100", 1_200)
    assert (await world.settle(claim))["status"] == "settled"
    await (await as_province("51")).send_and_wait(
        province_claims("51").name, json.dumps(claim).encode(), key=recipient.encode()
    )
    # Answered again on the national topic (the same event, for the national platform) ...
    national = await kafka.wait_for(SETTLEMENTS, lambda m: m["claim_id"] == claim["claim_id"], count=2)
    assert national[0]["event_id"] == national[1]["event_id"]
    await asyncio.sleep(1)  # ... published with any province copy in the same batch
    assert kafka.matching(province_settlements("51"), lambda m: m["claim_id"] == claim["claim_id"]) == []


async def test_after_every_refused_attempt_valid_claims_still_settle_and_the_audit_is_clean(
    world: World, kafka: Kafka, as_province
) -> None:
    _, recipient = await world.funded_family(recipient_region="440300")
    national = await world.settle(world.claim_message(recipient, "440300", 700))
    assert national["status"] == "settled"
    own = await sent_by_province(kafka, await as_province("44"), "44", world.claim_message(recipient, "440300", 800))
    assert own["status"] == "settled"
    audit = subprocess.run([sys.executable, "-m", "gongji", "audit"], capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr


async def read_as(settings, principal: str, topic: str, predicate, timeout: float = 20.0) -> dict:
    """The first record of `topic` that `predicate` takes, read with `principal`'s own credentials
    (no consumer group: assigned partitions, from the start)."""
    consumer = AIOKafkaConsumer(
        topic,
        **aiokafka_options(settings, principal),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:  # the security probes left records of no contract here too
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        if predicate(value := json.loads(record.value)):
                            return value
        raise AssertionError(f"{principal} read nothing of the kind on {topic} within {timeout}s")
    finally:
        await consumer.stop()


async def test_a_province_reads_the_refusal_of_a_malformed_claim_with_its_own_credentials(
    world: World, infrastructure, as_province
) -> None:
    """Tried as a provincial system would (issue 20): a claim with a bad ID check digit on its own
    topic is answered on its own settlements topic; a record it cannot name reaches its own
    dead-letter topic, person ids masked; another province reads neither."""
    _, patient = await world.funded_family(recipient_region="440300")
    claim = world.claim_message(patient, "440300", 12_850)
    claim["recipient_id"] = patient[:-1] + ("0" if patient[-1] != "0" else "1")
    producer = await as_province("44")
    await producer.send_and_wait(
        province_claims("44").name, json.dumps(claim).encode(), key=claim["recipient_id"].encode()
    )
    refusal = await read_as(
        infrastructure, "province-44", province_settlements("44").name, lambda m: m["claim_id"] == claim["claim_id"]
    )
    assert (refusal["status"], refusal["reason"], refusal["requested_fen"]) == ("rejected", "INVALID_MESSAGE", 12_850)
    assert "recipient_id" in refusal["error"]
    unreadable = b'{"recipient_id": "' + patient.encode() + b'", "claim_id": ' + b"[" * 5 + b"}"
    await producer.send_and_wait(province_claims("44").name, unreadable, key=patient.encode())
    digest = hashlib.sha256(unreadable).hexdigest()
    letter = await read_as(
        infrastructure, "province-44", province_dead_letters("44").name, lambda m: m["payload_sha256"] == digest
    )
    assert patient not in base64.b64decode(letter["payload"]).decode() and patient[:6] in letter["source_key"]
    with pytest.raises(TopicAuthorizationFailedError):
        await read_as(infrastructure, "province-11", province_dead_letters("44").name, lambda m: True, timeout=3)
