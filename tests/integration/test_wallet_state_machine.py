"""Random sequences of wallet operations against the real Redis; after every step every account
involved satisfies the money invariants (the same check `gongji audit` makes)."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from redis.asyncio import Redis

from services.wallet.domain import account_breaches
from services.wallet.handlers import WalletHandlers
from services.wallet.store import WalletStore
from shared.clock import FixedClock
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    DrawRequested,
    EnrollmentChanged,
    RefundRequested,
    RelationshipEvent,
    SupervisionActed,
    WalletCommand,
)
from shared.credentials import redis_options
from shared.policy import PolicyCache
from shared.principals import OPERATOR
from shared.settings import Settings
from tests.integration.conftest import integration_redis_url
from tests.integration.test_wallet_rules import NOON, context
from tests.support import new_id, new_person_id

amounts = st.integers(min_value=1, max_value=250_000)


class WalletMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(
            integration_redis_url(Settings().redis_url), **redis_options(Settings(), OPERATOR.name)
        )
        self.wallet = WalletHandlers(WalletStore(self.redis), FixedClock(NOON), PolicyCache(self.redis, 0))
        self.providers = [new_person_id() for _ in range(2)]
        self.recipients = [new_person_id() for _ in range(2)]
        self.related: set[tuple[str, str]] = set()
        self.draws: list[tuple[str, str, list]] = []  # (claim, recipient, payers)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    @initialize()
    def enroll(self) -> None:
        self.run(self.wallet.store.load())
        for provider in self.providers:
            self.run(
                self.wallet.on_enrollment(
                    [
                        EnrollmentChanged(
                            event_id=new_id(),
                            person_id=provider,
                            insurance_type="employee",
                            region="440300",
                            status="normal",
                            occurred_at=NOON,
                        )
                    ]
                )
            )

    @rule(who=st.integers(0, 1), amount=amounts)
    def credit(self, who: int, amount: int) -> None:
        self.run(
            self.wallet.on_credits(
                [AccountCredited(event_id=new_id(), person_id=self.providers[who], amount_fen=amount, occurred_at=NOON)]
            )
        )

    @rule(who=st.integers(0, 1), amount=amounts)
    def spend(self, who: int, amount: int) -> None:
        self.run(
            self.wallet.on_spends(
                [AccountSpent(event_id=new_id(), person_id=self.providers[who], amount_fen=amount, occurred_at=NOON)]
            )
        )

    @rule(who=st.integers(0, 1), to=st.integers(0, 1), kind=st.sampled_from(["established", "dissolved", "terminated"]))
    def relationship(self, who: int, to: int, kind: str) -> None:
        pair = (self.providers[who], self.recipients[to])
        self.run(
            self.wallet.on_relationship_events(
                [
                    RelationshipEvent(
                        event_id=new_id(),
                        cause_id=new_id(),
                        type=kind,
                        provider_id=pair[0],
                        recipient_id=pair[1],
                        recipient_region="510100",
                        occurred_at=NOON,
                    )
                ]
            )
        )
        (self.related.add if kind == "established" else self.related.discard)(pair)

    @rule(who=st.integers(0, 1), to=st.integers(0, 1), amount=amounts, day=st.integers(1, 3))
    def grant(self, who: int, to: int, amount: int, day: int) -> None:
        self.wallet.clock.set(NOON.replace(day=day))
        self.run(
            self.wallet.on_commands(
                [
                    WalletCommand(
                        command_id=new_id(),
                        action="grant",
                        actor_id=self.providers[who],
                        provider_id=self.providers[who],
                        recipient_id=self.recipients[to],
                        recipient_region="510100",
                        amount_fen=amount,
                        requested_at=NOON,
                    )
                ]
            )
        )

    @rule(to=st.integers(0, 1), amount=amounts, repeat=st.integers(1, 3))
    def draw(self, to: int, amount: int, repeat: int) -> None:
        claim = new_id("claim")
        request = DrawRequested(
            request_id=new_id(),
            claim_id=claim,
            recipient_id=self.recipients[to],
            amount_fen=amount,
            context=context(amount),
            requested_at=NOON,
        )
        for _ in range(repeat):
            answer = self.run(self.wallet.on_draw_requests([request]))[-1]
        assert answer.paid_fen <= amount
        if answer.paid_fen:
            self.draws.append((claim, self.recipients[to], answer.payers))

    @precondition(lambda self: self.draws)
    @rule(data=st.data())
    def reverse(self, data) -> None:
        claim, recipient, payers = self.draws.pop(data.draw(st.integers(0, len(self.draws) - 1)))
        self.run(
            self.wallet.on_refund_requests(
                [
                    RefundRequested(
                        claim_day="20260302",
                        request_id=new_id(),
                        claim_id=new_id("rev"),
                        original_claim_id=claim,
                        recipient_id=recipient,
                        payers=payers,
                        requested_at=NOON,
                    )
                ]
            )
        )

    @rule(who=st.integers(0, 1), action=st.sampled_from(["freeze", "unfreeze"]))
    def supervise(self, who: int, action: str) -> None:
        self.run(
            self.wallet.on_supervision(
                [
                    SupervisionActed(
                        event_id=new_id(), person_id=self.providers[who], action=action, reason="test", occurred_at=NOON
                    )
                ]
            )
        )

    @invariant()
    def every_account_is_sound(self) -> None:
        for provider in self.providers:
            snapshot = self.run(self.wallet.store.snapshot(provider))
            assert account_breaches(snapshot) == []


TestWalletMachine = WalletMachine.TestCase
TestWalletMachine.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
