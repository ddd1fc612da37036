"""Wallet service: contract in, atomic steps in Redis, wallet events and draw answers out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from services.wallet.domain import MAX_GRANTS_PER_DAY, check_grant, draw_shortfall_reason
from services.wallet.store import DrawStart, WalletStore
from shared.clock import Clock, rfc3339, seconds_until_next_shanghai_day, shanghai_day
from shared.concurrency import gather_by_key
from shared.contracts import (
    AccountCredited, AccountSpent, DrawAnswered, DrawRequested, EnrollmentChanged, Payer, ReasonCode,
    RefundRequested, RelationshipEvent, SupervisionActed, WalletCommand, WalletEvent,
)
from shared.ids import derived_event_id, fingerprint
from shared.redis_functions import Step
from shared.runtime import CONFLICTS

logger = logging.getLogger("gongji.wallet")

ENDING_TYPES = frozenset({"dissolved", "terminated"})


def _person(message: AccountCredited | AccountSpent | EnrollmentChanged | SupervisionActed) -> str:
    return message.person_id


def _provider(message: WalletCommand | RelationshipEvent) -> str:
    return message.provider_id


def _recipient(message: DrawRequested | RefundRequested) -> str:
    return message.recipient_id


def _wallet_event(cause_id: str, provider_id: str, result: dict, **fields) -> WalletEvent:
    event_type = fields.pop("type", result.get("type"))
    recipient_id = fields.pop("recipient_id", result.get("recipient"))
    return WalletEvent(
        event_id=derived_event_id("wallet", cause_id, event_type, provider_id, recipient_id or ""),
        cause_id=cause_id,
        type=event_type,
        provider_id=provider_id,
        recipient_id=recipient_id,
        amount_fen=result.get("amount", 0),
        balance_fen=result.get("balance"),
        frozen_fen=result.get("frozen"),
        reason=result.get("reason"),
        occurred_at=datetime.fromisoformat(result["at"]),
        **fields,
    )


def _conflict(cause_id: str, content: str, provider_id: str, refused_type: str, now: datetime,
              recipient_id: str | None = None, amount_fen: int = 0) -> WalletEvent:
    """The refusal of an input whose id was used before for other content; nothing changed."""
    CONFLICTS.labels("wallet", refused_type).inc()
    return WalletEvent(
        event_id=derived_event_id("wallet", cause_id, "conflict", content),
        cause_id=cause_id, type=refused_type, provider_id=provider_id, recipient_id=recipient_id,
        amount_fen=amount_fen, reason=ReasonCode.CONFLICT, occurred_at=now,
    )


class _Draw:
    """One claim's draw in progress across the rounds of a batch."""

    def __init__(self, request: DrawRequested, start: DrawStart) -> None:
        self.request = request
        self.start = start
        self.needed_fen = request.amount_fen
        self.asked = 0
        self.payers: list[dict] = []

    def wants_more(self) -> bool:
        return (self.start.answer is None and not self.start.recipient_frozen and self.needed_fen > 0
                and self.asked < len(self.start.providers))

    def next_provider(self) -> str:
        return self.start.providers[self.asked]

    def took(self, result: dict) -> None:
        provider_id = self.start.providers[self.asked]
        self.asked += 1
        if result["amount"] > 0:
            self.needed_fen -= result["amount"]
            self.payers.append({"provider_id": provider_id, "provider_region": result["region"],
                                "amount_fen": result["amount"], "balance_fen": result["balance"],
                                "frozen_fen": result["frozen"]})

    def answer(self, now: str) -> dict:
        paid = self.request.amount_fen - self.needed_fen
        reason = draw_shortfall_reason(self.request.amount_fen, paid, self.start.recipient_frozen)
        return {"paid": paid, "reason": reason, "payers": self.payers, "at": now}


class WalletHandlers:
    """Each `on_*` takes a batch: messages of one account in order, different accounts concurrently."""

    def __init__(self, store: WalletStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def on_credits(self, credits: Sequence[AccountCredited]) -> list[WalletEvent]:
        return await gather_by_key(credits, _person, self._credit)

    async def _credit(self, credit: AccountCredited) -> list[WalletEvent]:
        content = fingerprint(credit.model_dump_json())
        step = await self.store.credit(credit.event_id, content, credit.person_id, credit.amount_fen,
                                       rfc3339(self.clock.now()))
        if step.conflict:
            logger.warning("credit %s refused: CONFLICT", credit.event_id)
            return []
        return [_wallet_event(credit.event_id, credit.person_id, step.result)]

    async def on_spends(self, spends: Sequence[AccountSpent]) -> list[WalletEvent]:
        return await gather_by_key(spends, _person, self._spend)

    async def _spend(self, spend: AccountSpent) -> list[WalletEvent]:
        now = self.clock.now()
        content = fingerprint(spend.model_dump_json())
        step = await self.store.spend(spend.event_id, content, spend.person_id, spend.amount_fen, rfc3339(now))
        if step.conflict:
            return [_conflict(spend.event_id, content, spend.person_id, "spend_rejected", now,
                              amount_fen=spend.amount_fen)]
        return [_wallet_event(spend.event_id, spend.person_id, step.result)]

    async def on_commands(self, commands: Sequence[WalletCommand]) -> list[WalletEvent]:
        return await gather_by_key(commands, _provider, self._grant)

    async def _grant(self, command: WalletCommand) -> list[WalletEvent]:
        now = self.clock.now()
        content = fingerprint(command.model_dump_json())
        refusal = check_grant(command)
        step = await self.store.grant(
            command.command_id, content, command.provider_id, command.recipient_id, command.recipient_region,
            command.amount_fen, refusal or "", shanghai_day(now), MAX_GRANTS_PER_DAY,
            seconds_until_next_shanghai_day(now) + 3600, rfc3339(now),
        )
        if step.conflict:
            return [_conflict(command.command_id, content, command.provider_id, "grant_rejected", now,
                              command.recipient_id, command.amount_fen)]
        if step.result["type"] == "granted":
            first_grant_ms = int(datetime.fromisoformat(step.result["at"]).timestamp() * 1000)
            await self.store.index_provider(command.recipient_id, command.provider_id, first_grant_ms)
        return [_wallet_event(command.command_id, command.provider_id, step.result)]

    async def on_relationship_events(self, relationship_events: Sequence[RelationshipEvent]) -> list[WalletEvent]:
        return await gather_by_key(relationship_events, _provider, self._relationship_event)

    async def _relationship_event(self, event: RelationshipEvent) -> list[WalletEvent]:
        if event.type != "established" and event.type not in ENDING_TYPES:
            return []
        step = await self.store.relationship_changed(
            event.event_id, fingerprint(event.model_dump_json()), event.type, event.provider_id,
            event.recipient_id, event.recipient_region or "", rfc3339(self.clock.now()),
        )
        if step.result.get("type") == "released":
            return [_wallet_event(event.event_id, event.provider_id, step.result)]
        return []

    async def on_enrollment(self, changes: Sequence[EnrollmentChanged]) -> list[WalletEvent]:
        return await gather_by_key(changes, _person, self._enrollment)

    async def _enrollment(self, change: EnrollmentChanged) -> list[WalletEvent]:
        await self.store.record_enrollment(change.event_id, fingerprint(change.model_dump_json()),
                                           change.person_id, change.insurance_type, change.region, change.status)
        return []

    async def on_supervision(self, actions: Sequence[SupervisionActed]) -> list[WalletEvent]:
        return await gather_by_key(actions, _person, self._supervise)

    async def _supervise(self, action: SupervisionActed) -> list[WalletEvent]:
        step = await self.store.supervise(action.event_id, fingerprint(action.model_dump_json()),
                                          action.person_id, action.action, action.reason, rfc3339(self.clock.now()))
        return [] if step.conflict else [_wallet_event(action.event_id, action.person_id, step.result)]

    async def on_draw_requests(self, requests: Sequence[DrawRequested]) -> list[BaseModel]:
        """Draws on the recipients' grants in the order they were first made (the earliest provider
        first: predictable for families, and it leaves later quota for later care). Each provider's
        step is atomic and happens once per claim however often it is asked.

        The batch runs in rounds, one pipeline each: round k asks every open claim's k-th provider.
        Claims of one recipient keep their batch order at every provider, so the outcome is the
        same as drawing them one after another."""
        now = rfc3339(self.clock.now())
        starts = await self.store.draw_begin([(request.claim_id, request.recipient_id) for request in requests])
        draws = [_Draw(request, start) for request, start in zip(requests, starts, strict=True)]
        while open_draws := [draw for draw in draws if draw.wants_more()]:
            calls = [self.store.draw_from_grant(draw.request.claim_id, draw.next_provider(), draw.request.recipient_id,
                                                draw.needed_fen, now) for draw in open_draws]
            for draw, step in zip(open_draws, await self.store.run(calls), strict=True):
                draw.took(step.result)
        finishing = [draw for draw in draws if draw.start.answer is None]
        answers = await self.store.run([
            self.store.draw_finish(draw.request.claim_id, draw.request.recipient_id, draw.answer(now))
            for draw in finishing
        ])
        for draw, step in zip(finishing, answers, strict=True):
            draw.start = DrawStart(step.result, draw.start.recipient_frozen, draw.start.providers)
        return [output for draw in draws for output in self._draw_outputs(draw.request, draw.start.answer)]

    def _draw_outputs(self, request: DrawRequested, answer: dict) -> list[BaseModel]:
        at = datetime.fromisoformat(answer["at"])
        debits = [
            WalletEvent(
                event_id=derived_event_id("wallet", request.claim_id, "debited", payer["provider_id"]),
                cause_id=request.request_id, type="debited", provider_id=payer["provider_id"],
                recipient_id=request.recipient_id, amount_fen=payer["amount_fen"], balance_fen=payer["balance_fen"],
                frozen_fen=payer["frozen_fen"], claim_id=request.claim_id, occurred_at=at,
            )
            for payer in answer["payers"]
        ]
        return [*debits, DrawAnswered(
            event_id=derived_event_id("wallet", request.request_id, "answered"),
            claim_id=request.claim_id, recipient_id=request.recipient_id, requested_fen=request.amount_fen,
            paid_fen=answer["paid"], reason=answer["reason"], context=request.context, answered_at=at,
            payers=[Payer(provider_id=p["provider_id"], provider_region=p["provider_region"],
                          amount_fen=p["amount_fen"]) for p in answer["payers"]],
        )]

    async def on_refund_requests(self, requests: Sequence[RefundRequested]) -> list[WalletEvent]:
        return await gather_by_key(requests, _recipient, self._refund)

    async def _refund(self, request: RefundRequested) -> list[WalletEvent]:
        events = []
        now = rfc3339(self.clock.now())
        for payer in request.payers:
            step: Step = await self.store.refund(request.claim_id, request.original_claim_id,
                                                 payer.provider_id, request.recipient_id, now)
            if step.result["amount"] != payer.amount_fen:
                logger.error("refund of %s from %s: drew %s, asked %s", request.original_claim_id,
                             payer.provider_id, step.result["amount"], payer.amount_fen)
            if step.result["amount"] > 0:
                events.append(_wallet_event(request.request_id, payer.provider_id, step.result,
                                            type="refunded", claim_id=request.original_claim_id))
        return events
