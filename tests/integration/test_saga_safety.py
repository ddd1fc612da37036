"""The claim saga's internal messages checked against what they claim to answer: a draw for a
claim never recorded gives its money back, and an answer that is not for its claim as recorded,
or whose figures do not add up, changes no claim."""

from __future__ import annotations

from shared.contracts import ClaimContext, DrawAnswered, DrawRequested, Payer, RefundRequested, SettlementEvent
from shared.runtime import Refused
from tests.integration.saga import NOON, Saga
from tests.support import new_id, new_person_id, through_claim_path


def of_type(outputs, kind) -> list:
    return [output for output in outputs if isinstance(output, kind)]


async def test_money_drawn_for_a_claim_never_recorded_is_given_back(redis) -> None:
    saga = await Saga(redis).load()
    recipient, (provider,) = await saga.family([40_000], balance_fen=100_000)
    claim_id = new_id("ghost")
    request = DrawRequested(
        request_id=new_id(),
        claim_id=claim_id,
        recipient_id=recipient,
        amount_fen=40_000,
        context=ClaimContext(requested_fen=40_000, service_region="510100", claim_day="20260302"),
        requested_at=NOON,
    )
    (answer,) = of_type(await saga.wallet.on_draw_requests([request]), DrawAnswered)
    assert answer.paid_fen == 40_000
    # Before: settlement's step failed on the missing record, the answer was dead-lettered after
    # three tries, and 40,000 fen belonged to no claim.
    outputs = await through_claim_path(saga.settlement, [answer])
    (refusal,) = of_type(outputs, Refused)
    assert refusal.message is answer and "no such claim" in refusal.error
    await saga.wallet.on_refund_requests(of_type(outputs, RefundRequested))
    snapshot = await saga.wstore.snapshot(provider)
    assert (snapshot.paid_fen - snapshot.refunded_fen, snapshot.balance_fen) == (0, 100_000)
    assert await saga.sstore.claim(claim_id) is None


async def test_an_answer_addressed_to_another_recipient_does_not_finish_the_claim(redis) -> None:
    saga = await Saga(redis, shards=1).load()  # one shard: every recipient's claims side by side
    owner, (provider,) = await saga.family([40_000])
    other = await saga.recipient()
    (request,) = await through_claim_path(saga.settlement, [saga.settle(owner, 10_000)])
    forged = DrawAnswered(
        event_id=new_id(),
        claim_id=request.claim_id,
        recipient_id=other,
        requested_fen=10_000,
        paid_fen=10_000,
        context=request.context,
        answered_at=NOON,
        payers=[Payer(provider_id=new_person_id(), provider_region="440300", amount_fen=10_000)],
    )
    (refusal,) = await through_claim_path(saga.settlement, [forged])
    assert isinstance(refusal, Refused) and "not for this claim" in refusal.error
    assert (await saga.sstore.claim(request.claim_id)).state == "pending"
    # The real answer still completes it with what the wallet really drew.
    (answer,) = of_type(await saga.wallet.on_draw_requests([request]), DrawAnswered)
    (event,) = of_type(await through_claim_path(saga.settlement, [answer]), SettlementEvent)
    assert [(payer.provider_id, payer.amount_fen) for payer in event.payers] == [(provider, 10_000)]


async def test_an_answer_whose_figures_do_not_add_up_is_not_recorded(redis) -> None:
    saga = await Saga(redis).load()
    recipient, _ = await saga.family([40_000])
    (request,) = await through_claim_path(saga.settlement, [saga.settle(recipient, 10_000)])
    for paid, payers in ((20_000, [1]), (10_000, [4_000, 5_000]), (5_000, [5_000, 0]), (-1, [])):
        forged = DrawAnswered.model_construct(
            event_id=new_id(),
            claim_id=request.claim_id,
            recipient_id=recipient,
            requested_fen=10_000,
            paid_fen=paid,
            reason=None,
            context=request.context,
            answered_at=NOON,
            payers=[Payer(provider_id=new_person_id(), provider_region="440300", amount_fen=fen) for fen in payers],
        )
        (refusal,) = await through_claim_path(saga.settlement, [forged])
        assert isinstance(refusal, Refused), (paid, payers)
    # Before: paid 20,000 on a 10,000 claim was recorded, self-pay -10,000.
    assert (await saga.sstore.claim(request.claim_id)).state == "pending"
