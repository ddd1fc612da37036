"""A seeded random saga: claims, reversals (also by others, of reversals), redeliveries, draws that
crash after some takes, answers and refunds out of order, relationships ending and starting,
freezes and spends. After every step every account is sound; at the end each claim's takes equal
what settlement recorded as paid, and refunds equal what was reversed. A failing seed replays
exactly: GONGJI_SAGA_SEEDS=N runs seeds 0..N-1 (15 by default)."""

from __future__ import annotations

import json
import os
import random

import pytest

from shared.contracts import AccountSpent, DrawAnswered, DrawRequested, RefundRequested, SupervisionActed
from tests.integration.saga import Saga
from tests.support import new_id


async def takes_of(world: Saga, claim_id: str, providers: list[str]) -> list[dict]:
    found = []
    for provider in providers:
        raw = await world.redis.hget(f"wal:{{p:{provider}}}:takes", claim_id)
        if raw:
            found.append(json.loads(raw))
    return found


SEEDS = int(os.environ.get("GONGJI_SAGA_SEEDS", "15"))
STEPS = 40


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_saga_conserves_money(redis, seed) -> None:
    rng = random.Random(seed)
    world = await Saga(redis).load()
    recipients = [await world.recipient() for _ in range(2)]
    providers = [await world.provider(rng.choice([50_000, 200_000])) for _ in range(3)]
    related = set()
    for p in providers:
        for r in recipients:
            if rng.random() < 0.8:
                await world.relate(p, r)
                related.add((p, r))
                await world.grant(p, r, rng.randint(1, 30_000))
    inbox_draws: list[DrawRequested] = []
    inbox_answers: list[DrawAnswered] = []
    inbox_refunds: list[RefundRequested] = []
    claims = []
    for _ in range(STEPS):
        op = rng.random()
        if op < 0.3:
            r = rng.choice(recipients)
            claim = world.settle(r, rng.randint(1, 40_000))
            claims.append(claim)
            out = await world.settlement.on_claims([claim])
            inbox_draws += [o for o in out if isinstance(o, DrawRequested)]
        elif op < 0.4 and claims:
            c = rng.choice(claims)
            r = c.recipient_id if rng.random() < 0.8 else rng.choice(recipients)
            rev = world.reverse(r, c.claim_id if c.kind == "settle" else c.claim_id)
            claims.append(rev)
            out = await world.settlement.on_claims([rev])
            inbox_refunds += [o for o in out if isinstance(o, RefundRequested)]
        elif op < 0.5 and claims:  # redeliver a claim
            out = await world.settlement.on_claims([rng.choice(claims)])
            inbox_draws += [o for o in out if isinstance(o, DrawRequested)]
            inbox_refunds += [o for o in out if isinstance(o, RefundRequested)]
        elif op < 0.6 and inbox_draws:
            batch = rng.sample(inbox_draws, min(len(inbox_draws), rng.randint(1, 3)))
            if rng.random() < 0.3:  # crash after the plan and some takes
                d = batch[0]
                (plan,) = await world.wstore.draw_begin([(d.claim_id, d.recipient_id)])
                if plan.answer is None and plan.providers and not plan.recipient_frozen:
                    k = rng.randint(1, len(plan.providers))
                    needed = d.amount_fen
                    for provider in plan.providers[:k]:
                        (step,) = await world.wstore.run([world.wstore.draw_from_grant(
                            d.claim_id, provider, d.recipient_id, needed, "2026-03-02T12:00:00.000+08:00")])
                        needed -= max(0, step.result.get("amount", 0))
                        if needed <= 0:
                            break
                continue
            out = await world.wallet.on_draw_requests(batch)
            inbox_answers += [o for o in out if isinstance(o, DrawAnswered)]
        elif op < 0.7 and inbox_answers:
            batch = rng.sample(inbox_answers, min(len(inbox_answers), rng.randint(1, 3)))
            await world.settlement.on_draw_answers(batch)
        elif op < 0.78 and inbox_refunds:
            batch = rng.sample(inbox_refunds, min(len(inbox_refunds), rng.randint(1, 2)))
            await world.wallet.on_refund_requests(batch)
        elif op < 0.85:
            p, r = rng.choice(providers), rng.choice(recipients)
            if (p, r) in related and rng.random() < 0.5:
                await world.relate(p, r, "dissolved")
                related.discard((p, r))
            else:
                await world.relate(p, r)
                related.add((p, r))
                await world.grant(p, r, rng.randint(1, 30_000))
        elif op < 0.9:
            who = rng.choice(providers + recipients)
            await world.wallet.on_supervision([SupervisionActed(
                event_id=new_id(), person_id=who, action=rng.choice(["freeze", "unfreeze"]), reason="x",
                occurred_at=world.clock.now())])
        else:
            p = rng.choice(providers)
            await world.wallet.on_spends([AccountSpent(event_id=new_id(), person_id=p,
                                                       amount_fen=rng.randint(1, 20_000), occurred_at=world.clock.now())])
        assert await world.breaches() == []
    # drain everything
    for _ in range(3):
        out = await world.wallet.on_draw_requests(inbox_draws) if inbox_draws else []
        inbox_answers += [o for o in out if isinstance(o, DrawAnswered)]
        if inbox_answers:
            await world.settlement.on_draw_answers(inbox_answers)
        if inbox_refunds:
            await world.wallet.on_refund_requests(inbox_refunds)
    assert await world.breaches() == []
    # per claim: wallet takes == settlement paid; refunds == reversed paid
    total_paid = total_refunded = 0
    for claim in claims:
        record = await world.sstore.claim(claim.recipient_id, claim.claim_id)
        if record is None or claim.kind != "settle" or record["kind"] != "settle":
            continue
        assert record["status"] == "final", claim.claim_id
        takes = await takes_of(world, claim.claim_id, providers)
        paid = sum(t["amount"] for t in takes)
        assert paid == record["result"]["paid"], (claim.claim_id, takes, record)
        refunded = sum(t["amount"] for t in takes if t.get("refunded_by"))
        if record.get("reversed_by"):
            assert refunded == paid
        else:
            assert refunded == 0
        total_paid += paid
        total_refunded += refunded
    snaps = [await world.wstore.snapshot(p) for p in providers]
    assert sum(s.paid_fen for s in snaps) == total_paid
    assert sum(s.refunded_fen for s in snaps) == total_refunded
