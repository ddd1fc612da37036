"""The seeded simulation (gongji/simulation) in CI: a short random run per seed, every named
scenario, replay determinism, and proof that it catches money-safety bugs and shrinks them.
GONGJI_SIMULATION_SEEDS and GONGJI_SIMULATION_STEPS lengthen the random runs; `gongji simulate`
runs long ones."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
from redis.asyncio import Redis

from gongji.simulation import SCENARIOS, execute, run_scenario, shrink
from gongji.simulation.run import Outcome
from services.settlement import handlers
from services.settlement.domain import Enrolled
from services.wallet.store import WalletStore
from shared.clock import SHANGHAI
from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.records import Refund
from shared.redis_client import in_database
from shared.redis_functions import Step
from shared.window import ClaimWindow, InputWindow

# A database of the simulation's own: every run flushes it.
SIMULATION_DATABASE = 14
SEEDS = int(os.environ.get("GONGJI_SIMULATION_SEEDS", "10"))
STEPS = int(os.environ.get("GONGJI_SIMULATION_STEPS", "60"))


@pytest.fixture(scope="module")
async def redis(infrastructure):
    client = Redis.from_url(
        in_database(infrastructure.redis_url, SIMULATION_DATABASE), **redis_options(infrastructure, OPERATOR.name)
    )
    yield client
    await client.aclose()


def explained(outcome: Outcome) -> str:
    failure = outcome.failure
    assert failure is not None
    ops = "\n".join(f"  {number}. {op}" for number, op in enumerate(outcome.shrunk or outcome.ops[: failure.step], 1))
    return (
        f"seed {outcome.seed}: {failure.invariant} at operation {failure.step}: {failure.detail}\n"
        f"replay: gongji simulate --seed {outcome.seed} --steps {STEPS}\n{ops}"
    )


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_a_random_run_keeps_every_invariant(redis, seed) -> None:
    outcome = await execute(redis, seed, steps=STEPS)
    if outcome.failure is not None:
        await shrink(redis, outcome, seconds=60)
    assert outcome.failure is None, explained(outcome)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_each_fixed_defect_stays_fixed(redis, name) -> None:
    outcome = await run_scenario(redis, name)
    assert outcome.failure is None, f"{SCENARIOS[name].defect}\n{explained(outcome)}"


async def test_a_seed_replays_the_same_operations_and_outcomes(redis) -> None:
    first = await execute(redis, 7, steps=STEPS)
    second = await execute(redis, 7, steps=STEPS)
    replayed = await execute(redis, 7, first.ops)
    assert first.log == second.log == replayed.log
    assert first.faults and first.faults == second.faults


def draws_again_on_every_try(monkeypatch) -> None:
    """A broken wallet: each try of a draw takes from the grants anew (a take no longer keyed by claim)."""
    original = WalletStore.draw_from_grant
    tries = iter(range(1_000_000))
    monkeypatch.setattr(
        WalletStore, "draw_from_grant", lambda self, claim_id, *args: original(self, f"{claim_id}#{next(tries)}", *args)
    )


def drops_refunds(monkeypatch) -> None:
    """A broken wallet: a refund is acknowledged, and nothing is given back."""

    async def refund(self, refund_id, original_claim_id, provider_id, recipient_id, now, bucket) -> Step:
        return Step("applied", Refund(recipient=recipient_id, amount=0, to="none", at=now))

    monkeypatch.setattr(WalletStore, "refund", refund)


@pytest.mark.parametrize("breaks", [draws_again_on_every_try, drops_refunds])
async def test_the_simulation_catches_a_money_bug_and_shrinks_it_to_a_short_replayable_sequence(
    redis, monkeypatch, breaks
) -> None:
    breaks(monkeypatch)
    caught = None
    for seed in range(5):
        outcome = await execute(redis, seed, steps=100)
        if outcome.failure is not None:
            caught = outcome
            break
    assert caught is not None, "the broken wallet went unnoticed"
    assert caught.failure.invariant != "error", caught.failure  # found by a check, not a crash
    await shrink(redis, caught, seconds=15)
    assert caught.shrunk is not None and len(caught.shrunk) < caught.failure.step
    again = await execute(redis, caught.seed, caught.shrunk)
    assert again.failure is not None and again.failure.invariant == caught.failure.invariant, explained(caught)


def _employee_pays_resident_premiums(assess):
    """Issue 20's defect 2 put back: the recipient's insurance type is not read."""

    def assess_claim(claim, recipient):
        return assess(claim, recipient and Enrolled("resident", recipient.region, recipient.status))

    return assess_claim


@pytest.mark.parametrize(
    "defect",
    [
        "a premium billed by another province",
        "a resident premium for an employee",
        "a claim id squatted by another province",
    ],
)
async def test_money_round_3s_defects_put_back_are_found_by_the_simulation(redis, monkeypatch, defect) -> None:
    refusal = handlers.refusal_before_id
    if defect == "a premium billed by another province":
        monkeypatch.setattr(
            handlers,
            "refusal_before_id",
            lambda claim, province, *when: (
                None if claim.category in ("resident_premium", "ltc_premium") else refusal(claim, province, *when)
            ),
        )
    elif defect == "a resident premium for an employee":
        monkeypatch.setattr(handlers, "assess_claim", _employee_pays_resident_premiums(handlers.assess_claim))
    else:  # the province whose topic brought a claim is not asked
        monkeypatch.setattr(handlers, "refusal_before_id", lambda claim, province, *when: refusal(claim, None, *when))
    failures = [outcome.failure for seed in range(12) if (outcome := await execute(redis, seed, steps=300)).failure]
    assert failures, f"no seed of 12 found {defect}"
    assert "error" not in {failure.invariant for failure in failures}, failures  # found by a rule, not a crash


async def test_claim_records_kept_too_briefly_are_found_by_the_simulation(redis, monkeypatch) -> None:
    """The window's keep put back wrong: a day's claim records leave Redis ten days after the day,
    while copies of its claims may come for thirty. The simulation's Redis lives by the injected
    clock, so the records go as the services' expiries say, and a copy is paid again."""
    monkeypatch.setattr(
        ClaimWindow,
        "kept_until",
        lambda self, day: datetime.strptime(day, "%Y%m%d").replace(tzinfo=SHANGHAI) + timedelta(days=11),
    )
    outcome = await run_scenario(redis, "claim-window")
    assert outcome.failure is not None
    assert outcome.failure.invariant != "error", outcome.failure  # found by a check, not a crash


async def test_input_ids_kept_too_briefly_are_found_by_the_simulation(redis, monkeypatch) -> None:
    """The inputs' seen ids put back wrong: a generation of ten days, while a copy of a credit may
    come for thirty. The id is forgotten by the time its copy comes, and the copy is credited again."""
    monkeypatch.setattr(InputWindow, "generation", property(lambda self: timedelta(days=10)))
    outcome = await run_scenario(redis, "input-window")
    assert outcome.failure is not None
    assert outcome.failure.invariant != "error", outcome.failure  # found by a check, not a crash
