"""Wallet service: contract in, atomic steps in Redis, wallet events and draw answers out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from services.wallet.domain import GrantLimits, check_grant, draw_shortfall_reason
from services.wallet.store import Bucket, WalletStore
from shared.clock import Clock, rfc3339
from shared.concurrency import gather_by_key
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    Payer,
    ReasonCode,
    RefundRequested,
    RelationshipEvent,
    SupervisionActed,
    WalletCommand,
    WalletEvent,
)
from shared.ids import derived_event_id, fingerprint, mask_person_id
from shared.policy import PolicyCache
from shared.records import AccountStep, DrawAnswer, DrawPayer, DrawPlan, Refund, Take
from shared.redis_functions import Step
from shared.runtime import CONFLICTS, Refused
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    DRAW_REQUESTS_V1,
    ENROLLMENT,
    REFUND_REQUESTS,
    RELATIONSHIP_EVENTS,
    SUPERVISION,
    WALLET_COMMANDS,
    Topic,
)
from shared.window import ClaimWindow, InputWindow

logger = logging.getLogger("gongji.wallet")

ENDING_TYPES = frozenset({"dissolved", "terminated"})
# The draw hop as a draw's output ids name it: its topic's first version, so that no id changes.
DRAW_HOP = DRAW_REQUESTS_V1.name


def _person(message: AccountCredited | AccountSpent | EnrollmentChanged | SupervisionActed) -> str:
    return message.person_id


def _provider(message: WalletCommand | RelationshipEvent) -> str:
    return message.provider_id


def _recipient(message: DrawRequested | RefundRequested) -> str:
    return message.recipient_id


def _wallet_event(
    topic: Topic, scope: str, input_id: str, provider_id: str, result: AccountStep | Refund, **fields
) -> WalletEvent:
    """The wallet event of an applied step. Its id names the input's topic and scope (the person an
    input id is unique for): two different inputs never share an output id."""
    if isinstance(result, AccountStep):  # a refund's caller names its type
        fields = {"type": result.type, "reason": result.reason, **fields}
    return WalletEvent(
        event_id=derived_event_id(
            "wallet", topic.name, scope, input_id, fields["type"], provider_id, result.recipient_id or ""
        ),
        cause_id=input_id,
        provider_id=provider_id,
        recipient_id=result.recipient_id,
        amount_fen=result.amount_fen,
        balance_fen=result.balance_fen,
        frozen_fen=result.frozen_fen,
        account_seq=result.seq,
        occurred_at=datetime.fromisoformat(result.at),
        **fields,
    )


def _unapplied(
    topic: Topic,
    scope: str,
    input_id: str,
    content: str,
    reason: ReasonCode,
    provider_id: str,
    refused_type: str,
    now: datetime,
    recipient_id: str | None = None,
    amount_fen: int = 0,
) -> WalletEvent:
    """The refusal of an input that is not applied at all: its id was used before for other content
    (CONFLICT), or it is outside its window (INPUT_TOO_OLD, INVALID_MESSAGE). Nothing changed."""
    if reason == ReasonCode.CONFLICT:
        CONFLICTS.labels("wallet", topic.name).inc()
    return WalletEvent(
        event_id=derived_event_id("wallet", topic.name, scope, input_id, reason.lower(), content),
        cause_id=input_id,
        type=refused_type,
        provider_id=provider_id,
        recipient_id=recipient_id,
        amount_fen=amount_fen,
        reason=reason,
        occurred_at=now,
    )


def _refused_as_conflict(topic: Topic, message: BaseModel, input_id: str) -> Refused:
    CONFLICTS.labels("wallet", topic.name).inc()
    return Refused(message, ReasonCode.CONFLICT, f"{input_id!r} was used before on {topic.name} for other content")


class _Draw:
    """One claim's draw in progress across the rounds of a batch, on the plan fixed at its first step."""

    def __init__(self, request: DrawRequested, plan: DrawAnswer | DrawPlan) -> None:
        self.request = request
        self.plan = plan
        self.needed_fen = request.amount_fen
        self.asked = 0
        self.payers: list[DrawPayer] = []

    def wants_more(self) -> bool:
        return (
            isinstance(self.plan, DrawPlan)
            and not self.plan.recipient_frozen
            and self.needed_fen > 0
            and self.asked < len(self.plan.providers)
        )

    def next_provider(self) -> str:
        assert isinstance(self.plan, DrawPlan)
        return self.plan.providers[self.asked]

    def took(self, step: Step[Take]) -> None:
        provider_id = self.next_provider()
        self.asked += 1
        if step.conflict:  # the claim id is another recipient's at this provider: nothing taken
            logger.error(
                "claim %s: its id drew from %s for another recipient",
                self.request.claim_id,
                mask_person_id(provider_id),
            )
            return
        take = step.result
        assert take is not None
        if take.amount_fen > 0:
            self.needed_fen -= take.amount_fen
            self.payers.append(
                DrawPayer(
                    provider_id=provider_id,
                    provider_region=take.provider_region,
                    amount_fen=take.amount_fen,
                    balance_fen=take.balance_fen,
                    frozen_fen=take.frozen_fen,
                    account_seq=take.seq,
                )
            )

    def answer(self, now: str) -> DrawAnswer:
        assert isinstance(self.plan, DrawPlan)
        paid = self.request.amount_fen - self.needed_fen
        reason = draw_shortfall_reason(self.request.amount_fen, paid, self.plan.recipient_frozen)
        return DrawAnswer(paid_fen=paid, reason=reason, payers=self.payers, at=now)


class WalletHandlers:
    """Each `on_*` takes a batch: messages of one account in order, different accounts concurrently."""

    def __init__(
        self,
        store: WalletStore,
        clock: Clock,
        policy: PolicyCache,
        limits: GrantLimits | None = None,
        window: ClaimWindow | None = None,
        inputs: InputWindow | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy
        self.limits = limits or GrantLimits()
        self.window = window or ClaimWindow.from_settings(Settings())
        self.inputs = inputs or InputWindow.from_settings(Settings())

    def _bucket(self, day: str) -> Bucket:
        return Bucket(day, self.window.kept_ms(day, self.clock))

    def _too_old(self, request: DrawRequested | RefundRequested, day: str, now: datetime) -> Refused | None:
        """A draw or refund for a claim whose day's records may have left Redis is not made: drawing
        again could pay twice, and a refund would find nothing to give back. An operator sees it."""
        if self.window.held(day, now):
            return None
        return Refused(
            request,
            ReasonCode.CLAIM_TOO_OLD,
            f"the records of claims of {day} may have left Redis (the idempotency window): nothing is done",
        )

    async def on_credits(self, credits: Sequence[AccountCredited]) -> list[WalletEvent | Refused]:
        return await gather_by_key(credits, _person, self._credit)

    async def _credit(self, credit: AccountCredited) -> list[WalletEvent | Refused]:
        now = self.clock.now()
        refused = self.inputs.refused(credit.occurred_at, now)
        content = fingerprint(credit.model_dump_json())
        step = await self.store.credit(
            credit.event_id,
            content,
            credit.person_id,
            credit.amount_fen,
            rfc3339(now),
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return [Refused(credit, *refused)]
        if step.conflict:
            return [_refused_as_conflict(ACCOUNT_CREDITS, credit, credit.event_id)]
        return [_wallet_event(ACCOUNT_CREDITS, credit.person_id, credit.event_id, credit.person_id, step.result)]

    async def on_spends(self, spends: Sequence[AccountSpent]) -> list[WalletEvent]:
        return await gather_by_key(spends, _person, self._spend)

    async def _spend(self, spend: AccountSpent) -> list[WalletEvent]:
        now = self.clock.now()
        content = fingerprint(spend.model_dump_json())

        def unapplied(reason: ReasonCode) -> list[WalletEvent]:
            return [
                _unapplied(
                    ACCOUNT_SPENDS,
                    spend.person_id,
                    spend.event_id,
                    content,
                    reason,
                    spend.person_id,
                    "spend_rejected",
                    now,
                    amount_fen=spend.amount_fen,
                )
            ]

        refused = self.inputs.refused(spend.occurred_at, now)
        seen = self.inputs.seen_ids(self.clock, refused)
        step = await self.store.spend(spend.event_id, content, spend.person_id, spend.amount_fen, rfc3339(now), seen)
        if refused and step.outcome == "refused":
            return unapplied(refused[0])
        if step.conflict:
            return unapplied(ReasonCode.CONFLICT)
        return [_wallet_event(ACCOUNT_SPENDS, spend.person_id, spend.event_id, spend.person_id, step.result)]

    async def on_commands(self, commands: Sequence[WalletCommand]) -> list[WalletEvent]:
        return await gather_by_key(commands, _provider, self._grant)

    async def _grant(self, command: WalletCommand) -> list[WalletEvent]:
        now = self.clock.now()
        content = fingerprint(command.model_dump_json())

        def unapplied(reason: ReasonCode) -> list[WalletEvent]:
            return [
                _unapplied(
                    WALLET_COMMANDS,
                    command.provider_id,
                    command.command_id,
                    content,
                    reason,
                    command.provider_id,
                    "grant_rejected",
                    now,
                    command.recipient_id,
                    command.amount_fen,
                )
            ]

        refused = self.inputs.refused(command.requested_at, now)
        refusal = check_grant(command)
        step = await self.store.grant(
            command.command_id,
            content,
            command.actor_id,
            command.provider_id,
            command.recipient_id,
            command.recipient_region,
            command.amount_fen,
            refusal or "",
            self.limits,
            await self.policy.get(),
            now,
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return unapplied(refused[0])
        if step.conflict:
            return unapplied(ReasonCode.CONFLICT)
        if step.result.type == "granted":
            first_grant_ms = int(datetime.fromisoformat(step.result.at).timestamp() * 1000)
            await self.store.index_provider(command.recipient_id, command.provider_id, first_grant_ms)
        return [
            _wallet_event(WALLET_COMMANDS, command.provider_id, command.command_id, command.provider_id, step.result)
        ]

    async def on_relationship_events(
        self, relationship_events: Sequence[RelationshipEvent]
    ) -> list[WalletEvent | Refused]:
        return await gather_by_key(relationship_events, _provider, self._relationship_event)

    async def _relationship_event(self, event: RelationshipEvent) -> list[WalletEvent | Refused]:
        if event.type != "established" and event.type not in ENDING_TYPES:
            return []
        step = await self.store.relationship_changed(
            event.event_id,
            fingerprint(event.model_dump_json()),
            event.type,
            event.provider_id,
            event.recipient_id,
            event.recipient_region or "",
            event.version,
            rfc3339(self.clock.now()),
            self.inputs.seen_ids(self.clock),
        )
        if step.conflict:
            return [_refused_as_conflict(RELATIONSHIP_EVENTS, event, event.event_id)]
        if step.result.type == "released":
            return [
                _wallet_event(RELATIONSHIP_EVENTS, event.provider_id, event.event_id, event.provider_id, step.result)
            ]
        return []

    async def on_enrollment(self, changes: Sequence[EnrollmentChanged]) -> list[Refused]:
        return await gather_by_key(changes, _person, self._enrollment)

    async def _enrollment(self, change: EnrollmentChanged) -> list[Refused]:
        refused = self.inputs.refused(change.occurred_at, self.clock.now())
        step = await self.store.record_enrollment(
            change.event_id,
            fingerprint(change.model_dump_json()),
            change.person_id,
            change.insurance_type,
            change.region,
            change.status,
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return [Refused(change, *refused)]
        return [_refused_as_conflict(ENROLLMENT, change, change.event_id)] if step.conflict else []

    async def on_supervision(self, actions: Sequence[SupervisionActed]) -> list[WalletEvent | Refused]:
        return await gather_by_key(actions, _person, self._supervise)

    async def _supervise(self, action: SupervisionActed) -> list[WalletEvent | Refused]:
        now = self.clock.now()
        refused = self.inputs.refused(action.occurred_at, now)
        step = await self.store.supervise(
            action.event_id,
            fingerprint(action.model_dump_json()),
            action.person_id,
            action.action,
            action.lifts,
            rfc3339(now),
            self.inputs.seen_ids(self.clock, refused),
        )
        if refused and step.outcome == "refused":
            return [Refused(action, *refused)]
        if step.conflict:
            return [_refused_as_conflict(SUPERVISION, action, action.event_id)]
        return [
            _wallet_event(
                SUPERVISION,
                action.person_id,
                action.event_id,
                action.person_id,
                step.result,
                standing_freezes=step.result.standing_freezes,
            )
        ]

    async def on_draw_requests(self, requests: Sequence[DrawRequested]) -> list[BaseModel | Refused]:
        """Draws on the recipients' grants in the order they were first made (the earliest provider
        first: predictable for families, and it leaves later quota for later care). Each provider's
        step is atomic and happens once per claim however often it is asked, and a retried draw
        follows the plan of its first try.

        The batch runs in rounds, one pipeline each: round k asks every open claim's k-th provider.
        Claims of one recipient keep their batch order at every provider, so the outcome is the
        same as drawing them one after another."""
        at = self.clock.now()
        now = rfc3339(at)
        refusals = {
            request.request_id: refusal
            for request in requests
            if (refusal := self._too_old(request, request.context.claim_day, at))
        }
        requests = [request for request in requests if request.request_id not in refusals]
        buckets = {request.claim_id: self._bucket(request.context.claim_day) for request in requests}
        plans = await self.store.draw_begin(
            [(request.claim_id, request.recipient_id, buckets[request.claim_id]) for request in requests]
        )
        draws = [_Draw(request, plan) for request, plan in zip(requests, plans, strict=True)]
        while open_draws := [draw for draw in draws if draw.wants_more()]:
            calls = [
                self.store.draw_from_grant(
                    draw.request.claim_id,
                    draw.next_provider(),
                    draw.request.recipient_id,
                    draw.needed_fen,
                    now,
                    buckets[draw.request.claim_id],
                )
                for draw in open_draws
            ]
            for draw, step in zip(open_draws, await self.store.run(calls), strict=True):
                draw.took(step)
        finishing = [draw for draw in draws if isinstance(draw.plan, DrawPlan)]
        answers = await self.store.run(
            [
                self.store.draw_finish(
                    draw.request.claim_id, draw.request.recipient_id, draw.answer(now), buckets[draw.request.claim_id]
                )
                for draw in finishing
            ]
        )
        for draw, step in zip(finishing, answers, strict=True):
            assert step.result is not None
            draw.plan = step.result
        return [
            *refusals.values(),
            *(output for draw in draws for output in self._draw_outputs(draw.request, draw.plan)),
        ]

    def _draw_outputs(self, request: DrawRequested, answer: DrawAnswer | DrawPlan) -> list[BaseModel]:
        assert isinstance(answer, DrawAnswer)  # every draw is answered by now
        at = datetime.fromisoformat(answer.at)
        debits = [
            WalletEvent(
                event_id=derived_event_id("wallet", DRAW_HOP, request.claim_id, "debited", payer.provider_id),
                cause_id=request.request_id,
                type="debited",
                provider_id=payer.provider_id,
                recipient_id=request.recipient_id,
                amount_fen=payer.amount_fen,
                balance_fen=payer.balance_fen,
                frozen_fen=payer.frozen_fen,
                account_seq=payer.account_seq,
                claim_id=request.claim_id,
                occurred_at=at,
            )
            for payer in answer.payers
        ]
        return [
            *debits,
            DrawAnswered(
                event_id=derived_event_id("wallet", DRAW_HOP, request.request_id, "answered"),
                claim_id=request.claim_id,
                recipient_id=request.recipient_id,
                requested_fen=request.amount_fen,
                paid_fen=answer.paid_fen,
                reason=answer.reason,
                context=request.context,
                answered_at=at,
                payers=[
                    Payer(provider_id=p.provider_id, provider_region=p.provider_region, amount_fen=p.amount_fen)
                    for p in answer.payers
                ],
            ),
        ]

    async def on_refund_requests(self, requests: Sequence[RefundRequested]) -> list[WalletEvent | Refused]:
        return await gather_by_key(requests, _recipient, self._refund)

    async def _refund(self, request: RefundRequested) -> list[WalletEvent | Refused]:
        at = self.clock.now()
        if refusal := self._too_old(request, request.claim_day, at):
            return [refusal]
        events: list[WalletEvent | Refused] = []
        now, bucket = rfc3339(at), self._bucket(request.claim_day)
        for payer in request.payers:
            step = await self.store.refund(
                request.claim_id, request.original_claim_id, payer.provider_id, request.recipient_id, now, bucket
            )
            refund = step.result
            assert refund is not None
            if refund.amount_fen != payer.amount_fen:
                logger.error(
                    "refund of %s from %s: drew %s, asked %s",
                    request.original_claim_id,
                    mask_person_id(payer.provider_id),
                    refund.amount_fen,
                    payer.amount_fen,
                )
            if refund.amount_fen > 0:
                events.append(
                    _wallet_event(
                        REFUND_REQUESTS,
                        request.claim_id,
                        request.request_id,
                        payer.provider_id,
                        refund,
                        type="refunded",
                        claim_id=request.original_claim_id,
                        refunded_to=refund.to,
                    )
                )
        return events
