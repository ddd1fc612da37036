"""The model of the wallet service: accounts, grants, draws, refunds, freezes."""

from __future__ import annotations

from datetime import datetime

from gongji.simulation.model.base import (
    MOST_GRANTS_A_DAY,
    MOST_PER_GRANT_FEN,
    WALLET_RELEVANT,
    Answer,
    ModelBase,
    Plan,
    Take,
    _distinct,
    require,
)
from services.settlement.handlers import claim_output_id
from services.wallet.domain import GrantLimits
from shared.clock import shanghai_day
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    ReasonCode,
    RefundRequested,
    RelationshipEvent,
    SupervisionActed,
    WalletCommand,
    WalletEvent,
)
from shared.ids import province_of
from shared.records import DrawAnswer, DrawPlan
from shared.redis_functions import Step
from shared.runtime import Refused


class WalletModel(ModelBase):
    # ---- wallet ---------------------------------------------------------------------------

    def _wallet_credits(self, credit: AccountCredited, group: list) -> None:
        effects = self._decided("wallet/credits", credit.person_id, credit.event_id, credit, group)
        if effects is None:
            return
        account = self.accounts[credit.person_id]
        account.credited += credit.amount_fen
        event = self._one(effects, WalletEvent, f"credit {credit.event_id}")
        require(
            event.type == "credited" and event.amount_fen == credit.amount_fen and event.balance_fen == account.balance,
            "credit",
            lambda: (
                f"credit {credit.event_id} of {self.a(credit.person_id)}: {event}, books say balance {account.balance}"
            ),
        )

    def _wallet_spends(self, spend: AccountSpent, group: list) -> None:
        effects = self._decided("wallet/spends", spend.person_id, spend.event_id, spend, group)
        if effects is None:
            return
        account = self.accounts[spend.person_id]
        allowed = not account.freezes and account.balance - account.frozen >= spend.amount_fen
        event = self._one(effects, WalletEvent, f"spend {spend.event_id}")
        require(
            event.type == ("spent" if allowed else "spend_rejected"),
            "spend-decision",
            lambda: (
                f"spend {spend.event_id} of {spend.amount_fen} by {self.a(spend.person_id)}: {event.type} "
                f"{event.reason}; books: balance {account.balance}, frozen {account.frozen}, freezes {account.freezes}"
            ),
        )
        if allowed:
            account.spent += spend.amount_fen
        require(
            event.balance_fen == account.balance,
            "balance",
            lambda: f"spend {spend.event_id}: event balance {event.balance_fen}, books {account.balance}",
        )

    def _grant_refusal(self, grant: WalletCommand, now: datetime) -> str | None:
        """Rules 1, 3, 8–10 and 16 at grant time, as the wallet knows the world."""
        provider, recipient = grant.provider_id, grant.recipient_id
        account = self.accounts[provider]
        enrollment = self.wallet_enrollment.get(provider)
        pair = self.wallet_pairs.get((provider, recipient))
        if grant.actor_id != provider or recipient == provider or grant.amount_fen > MOST_PER_GRANT_FEN:
            return "not allowed"
        if account.freezes:
            return "account frozen"
        if enrollment is None or enrollment[0] != "employee" or enrollment[2] != "normal":
            return "provider not an employee in normal standing"
        if pair is None or not pair.active or pair.region != grant.recipient_region:
            return "no active relationship with the recipient there"
        if not (self.policy.wallet_open(enrollment[1]) and self.policy.wallet_open(pair.region)):
            return "wallet closed in a region"
        if province_of(enrollment[1]) != province_of(pair.region) and not self.policy.cross_province_in_force(now):
            return "cross-province sharing not in force"
        if account.grants_by_day.get(shanghai_day(now), 0) >= MOST_GRANTS_A_DAY:
            return "daily limit reached"
        if account.balance - account.frozen < grant.amount_fen:
            return "not enough available"
        return None

    def _wallet_commands(self, grant: WalletCommand, group: list) -> None:
        effects = self._decided("wallet/commands", grant.provider_id, grant.command_id, grant, group)
        if effects is None:
            return
        now = self.clock.now()
        refusal = self._grant_refusal(grant, now)
        event = self._one(effects, WalletEvent, f"grant {grant.command_id}")
        require(
            (event.type == "granted") == (refusal is None),
            "grant-decision",
            lambda: (
                f"grant {grant.command_id} {self.a(grant.provider_id)}>{self.a(grant.recipient_id)} "
                f"{grant.amount_fen}: wallet {event.type} {event.reason or ''}, books: {refusal or 'allowed'}"
            ),
        )
        if refusal is None:
            account = self.accounts[grant.provider_id]
            account.grants[grant.recipient_id] = account.grants.get(grant.recipient_id, 0) + grant.amount_fen
            today, oldest_kept = shanghai_day(now), shanghai_day(now - GrantLimits().counters_kept)
            account.grants_by_day[today] = account.grants_by_day.get(today, 0) + 1
            account.grants_by_day = {day: n for day, n in account.grants_by_day.items() if day >= oldest_kept}
            self.draw_order[grant.recipient_id].setdefault(grant.provider_id, int(event.occurred_at.timestamp() * 1000))
            require(
                event.frozen_fen == account.frozen,
                "frozen",
                lambda: f"grant {grant.command_id}: event frozen {event.frozen_fen}, books {account.frozen}",
            )

    def _wallet_relationship_events(self, event: RelationshipEvent, group: list) -> None:
        if event.type not in WALLET_RELEVANT:
            require(not group, "answer", f"the wallet answered a {event.type} event: {group}")
            return
        effects = self._decided("wallet/relationship-events", event.provider_id, event.event_id, event, group)
        if effects is None:
            return
        pair = self.wallet_pairs[(event.provider_id, event.recipient_id)]
        released = 0
        if event.version is None or event.version > pair.version:
            if event.version is not None:
                pair.version = event.version
            if pair.active:
                released = self.accounts[event.provider_id].grants.pop(event.recipient_id, 0)
                pair.active, pair.since = False, None
            if event.type == "established":
                pair.active, pair.region, pair.since = True, event.recipient_region or "", event.version or 0
        expected = [("released", released)] if released else []
        require(
            [(e.type, e.amount_fen) for e in effects] == expected,
            "release",
            lambda: (
                f"{event.type} v{event.version} {self.a(event.provider_id)}>{self.a(event.recipient_id)}: "
                f"wallet {[(e.type, e.amount_fen) for e in effects]}, books {expected}"
            ),
        )

    def _wallet_enrollment(self, change: EnrollmentChanged, group: list) -> None:
        effects = self._decided("wallet/enrollment", change.person_id, change.event_id, change, group)
        if effects is not None:
            self.wallet_enrollment[change.person_id] = (change.insurance_type, change.region, change.status)
            require(not effects, "answer", f"wallet enrollment {change.event_id}: {effects}")

    def _wallet_supervision(self, action: SupervisionActed, group: list) -> None:
        effects = self._decided("wallet/supervision", action.person_id, action.event_id, action, group)
        if effects is None:
            return
        freezes = self.accounts[action.person_id].freezes
        if action.action == "freeze":
            freezes.append(action.event_id)
        elif action.lifts:
            if action.lifts in freezes:
                freezes.remove(action.lifts)
        elif freezes:
            freezes.pop(0)
        event = self._one(effects, WalletEvent, f"supervision {action.event_id}")
        require(
            event.type == ("frozen" if action.action == "freeze" else "unfrozen")
            and event.standing_freezes == len(freezes),
            "freezes",
            lambda: (
                f"{action.action} {action.event_id} of {self.a(action.person_id)}: {event.type} with "
                f"{event.standing_freezes} standing, books {freezes}"
            ),
        )

    def plan(self, claim_id: str, recipient: str) -> Plan:
        """A draw's plan, fixed at its first step: the recipient's providers by first grant, and its freeze."""
        key = (claim_id, recipient)
        if key not in self.plans:
            order = self.draw_order[recipient]
            self.plans[key] = Plan(
                sorted(order, key=lambda provider: (order[provider], provider)), bool(self.accounts[recipient].freezes)
            )
        return self.plans[key]

    def take(self, claim_id: str, provider: str, recipient: str, needed: int) -> int:
        """A provider's take for a claim: once per claim, of the claim's recipient only, nothing while frozen."""
        prior = self.takes.get((claim_id, provider))
        if prior is not None:
            return prior.amount if prior.recipient == recipient else 0
        account = self.accounts[provider]
        amount = 0 if account.freezes else max(0, min(account.grants.get(recipient, 0), needed))
        pair = self.wallet_pairs.get((provider, recipient))
        self.takes[(claim_id, provider)] = Take(recipient, amount, pair.since if pair and pair.active else None)
        if amount:
            account.grants[recipient] -= amount
            account.paid += amount
        return amount

    def observe_plan(self, request: DrawRequested, plan: DrawAnswer | DrawPlan) -> None:
        """Instance A's first step of a draw (a rebalance mid-draw)."""
        if isinstance(plan, DrawAnswer):
            require(
                (request.claim_id, request.recipient_id) in self.answers,
                "draw-plan",
                f"draw {request.claim_id}: an answer the books never saw",
            )
            return
        expected = self.plan(request.claim_id, request.recipient_id)
        require(
            (plan.providers, plan.recipient_frozen) == (expected.providers, expected.frozen),
            "draw-plan",
            lambda: (
                f"draw {request.claim_id} of {self.a(request.recipient_id)}: plan "
                f"{[self.a(p) for p in plan.providers]} frozen={plan.recipient_frozen}, books "
                f"{[self.a(p) for p in expected.providers]} frozen={expected.frozen}"
            ),
        )

    def observe_take(self, request: DrawRequested, provider: str, needed: int, step: Step) -> None:
        """Instance A's take from one provider."""
        expected = self.take(request.claim_id, provider, request.recipient_id, needed)
        taken = 0 if step.conflict else step.result.amount_fen
        require(
            taken == expected,
            "paid-once",
            lambda: f"draw {request.claim_id}: {self.a(provider)} gave {taken}, books say {expected}",
        )

    def _late(self, request: DrawRequested | RefundRequested, day: str, group: list) -> bool:
        """A draw or refund for a day whose records may be gone is not made: dead-lettered."""
        if self.day_held(day):
            return False
        require(  # every copy of it in the batch refused (a copy delivered twice is refused twice)
            bool(group) and all(isinstance(output, Refused) for output in group),
            "claim-window",
            lambda: f"{type(request).__name__} {request.claim_id} of {day}: its day's records may be gone, yet {group}",
        )
        return True

    def _wallet_draw_requests(self, request: DrawRequested, group: list) -> None:
        if self._late(request, request.context.claim_day, group):
            return
        key = (request.claim_id, request.recipient_id)
        if key in self.answers:
            return  # its stored answer again: the id check holds it to the first
        plan = self.plan(*key)
        needed, payers = request.amount_fen, []
        for provider in [] if plan.frozen else plan.providers:
            if needed <= 0:
                break
            if amount := self.take(request.claim_id, provider, request.recipient_id, needed):
                payers.append((provider, amount))
                needed -= amount
        paid = request.amount_fen - needed
        self.answers[key] = Answer(paid, payers)
        effects = _distinct(group)
        answer = self._one(effects, DrawAnswered, f"draw {request.claim_id}")
        debits = [(e.provider_id, e.amount_fen) for e in effects if isinstance(e, WalletEvent)]
        got = [(payer.provider_id, payer.amount_fen) for payer in answer.payers]
        require(
            answer.paid_fen == paid and got == payers and debits == payers,
            "draw",
            lambda: (
                f"draw {request.claim_id} of {self.a(request.recipient_id)} for {request.amount_fen}: wallet paid "
                f"{answer.paid_fen} by {[(self.a(p), n) for p, n in got]} "
                f"(debits {[(self.a(p), n) for p, n in debits]}), "
                f"books {paid} by {[(self.a(p), n) for p, n in payers]} (plan {[self.a(p) for p in plan.providers]}, "
                f"recipient frozen {plan.frozen})"
            ),
        )
        reason = (
            ReasonCode.ACCOUNT_FROZEN if plan.frozen else ReasonCode.NO_QUOTA if paid < request.amount_fen else None
        )
        require(
            answer.reason == reason, "draw", lambda: f"draw {request.claim_id}: reason {answer.reason}, books {reason}"
        )

    def _wallet_refund_requests(self, request: RefundRequested, group: list) -> None:
        if self._late(request, request.claim_day, group):
            return
        expected = {}
        for payer in request.payers:
            key = (request.claim_id, payer.provider_id)
            if key not in self.refunds:
                self.refunds[key] = self._give_back(request, payer.provider_id)
            if self.refunds[key][0]:
                expected[payer.provider_id] = self.refunds[key]
        got = {event.provider_id: (event.amount_fen, event.refunded_to) for event in _distinct(group)}
        require(
            got == expected,
            "refund",
            lambda: (
                f"refund {request.claim_id} of {request.original_claim_id} for {self.a(request.recipient_id)}: "
                f"wallet {[(self.a(p), n) for p, n in got.items()]}, "
                f"books {[(self.a(p), n) for p, n in expected.items()]}"
            ),
        )

    def _give_back(self, request: RefundRequested, provider: str) -> tuple[int, str]:
        """What a refund returns from one provider, and where to: that claim's take for that
        recipient, once, into the grant while the relationship it was drawn under lasts."""
        take = self.takes.get((request.original_claim_id, provider))
        if take is None or take.recipient != request.recipient_id or take.refunded_by or take.amount <= 0:
            return 0, "none"
        original = self.claims.get(request.original_claim_id)
        reversed_here = original is not None and original.reversed_by == request.claim_id
        unclaimed = request.claim_id == claim_output_id(request.original_claim_id, "unclaimed draw") and (
            original is None or original.recipient != request.recipient_id
        )
        require(
            reversed_here or unclaimed,
            "refund-without-reversal",
            f"refund {request.claim_id} gives back claim {request.original_claim_id}, which settlement did not reverse",
        )
        take.refunded_by = request.claim_id
        account = self.accounts[provider]
        account.refunded += take.amount
        pair = self.wallet_pairs.get((provider, request.recipient_id))
        if pair is not None and pair.active and pair.since == take.since:
            account.grants[request.recipient_id] = account.grants.get(request.recipient_id, 0) + take.amount
            return take.amount, "grant"
        return take.amount, "account"
