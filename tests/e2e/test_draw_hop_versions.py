"""An upgrade leaves nothing behind on the draw hop's first version: a draw request or answer that
a release before 2026-12-07 sent as a record of its own is still read, and what follows from it
goes on the batched version (shared/topics.py: DRAW_REQUESTS, DRAW_ANSWERS)."""

from __future__ import annotations

import base64
import json
from datetime import datetime

import pytest

from gongji.ops import infra
from gongji.ops.groups import committed
from services.settlement.app import ROUTES as SETTLEMENT_ROUTES
from shared.clock import SHANGHAI, shanghai_day
from shared.contracts import ClaimContext, DrawRequested
from shared.topics import (
    DEAD_LETTERS,
    DRAW_ANSWERS,
    DRAW_ANSWERS_V1,
    DRAW_REQUESTS_V1,
    SETTLEMENT_GROUP,
    WALLET_EVENTS,
    route_group,
)
from tests.e2e.world import World, until
from tests.support import new_id

pytestmark = pytest.mark.timeout(300)


async def test_a_request_and_an_answer_left_on_the_first_version_are_still_read(
    world: World, kafka, infrastructure
) -> None:
    _, recipient = await world.funded_family(recipient_region="510100")
    now = datetime.now(SHANGHAI)
    request = DrawRequested(
        request_id=new_id("draw"),
        claim_id=new_id("claim"),
        recipient_id=recipient,
        amount_fen=1_200,
        context=ClaimContext(requested_fen=1_200, service_region="510100", claim_day=shanghai_day(now)),
        requested_at=now,
    )
    await kafka.publish(DRAW_REQUESTS_V1, request)

    # The wallet draws and answers on the batched version, one message of a record.
    (answer,) = await kafka.wait_for(DRAW_ANSWERS, lambda m: m["claim_id"] == request.claim_id)
    assert (answer["paid_fen"], answer["_index"] >= 0) == (1_200, True)
    # Settlement never recorded this claim: it gives back what was drawn, and tells the operator,
    # in a dead letter of that answer alone, with its place in its record.
    await kafka.wait_for(
        WALLET_EVENTS, lambda m: m["type"] == "refunded" and m["recipient_id"] == recipient and m["amount_fen"] == 1_200
    )
    (letter,) = await kafka.wait_for(
        DEAD_LETTERS, lambda m: m["source_topic"] == DRAW_ANSWERS.name and request.claim_id.encode() in _payload(m)
    )
    assert (letter["partition"], letter["offset"]) == (answer["_partition"], answer["_offset"])
    assert letter["error"].startswith(f"message {answer['_index']} of the record: no such claim")
    assert json.loads(_payload(letter))["claim_id"] == request.claim_id  # that answer alone
    assert letter["source_key"] == recipient

    # The same answer, as a release before would have sent it, is read too, and refused alike.
    await kafka.publish(DRAW_ANSWERS_V1, {key: value for key, value in answer.items() if not key.startswith("_")})
    (sent,) = await kafka.wait_for(DRAW_ANSWERS_V1, lambda m: m.get("claim_id") == request.claim_id)
    admin = infra.kafka_admin(infrastructure)
    (claim_path,) = [route for route in SETTLEMENT_ROUTES if DRAW_ANSWERS_V1 in route.topics]
    group = route_group(SETTLEMENT_GROUP, claim_path.topics[0])

    async def read_past_it() -> bool:
        return committed(admin, group).get((DRAW_ANSWERS_V1.name, sent["_partition"]), 0) > sent["_offset"]

    await until(read_past_it, "the settlement's group to commit past the first version's answer")
    (again,) = await kafka.wait_for(
        DEAD_LETTERS, lambda m: m["source_topic"] == DRAW_ANSWERS_V1.name and request.claim_id.encode() in _payload(m)
    )
    assert (again["offset"], again["error"].startswith("no such claim")) == (sent["_offset"], True)
    await kafka.settle_quietly()
    refunds = kafka.matching(WALLET_EVENTS, lambda m: m["type"] == "refunded" and m["recipient_id"] == recipient)
    assert len({refund["event_id"] for refund in refunds}) == 1  # given back once


def _payload(letter: dict) -> bytes:
    return base64.b64decode(letter["payload"])
