"""Settlement service: claims in, the saga with the wallet, settlements and statistics out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from services.settlement.domain import (
    NATIONAL,
    SERVICE,
    answer_mismatch,
    assess_claim,
    clearing_contributions,
    for_province,
    output_event_id,
    refusal_before_id,
    settlement_status,
)
from services.settlement.statistics import (
    Counted,
    counted_dead_letter,
    counted_result,
    day_kept_until,
    reconciliations,
    snapshot,
)
from services.settlement.store import ClaimFacts, ClaimLimits, ClaimOwner, Counting, Kept, SettlementStore, Tallies
from shared.clock import Clock, day_start, minute_start, rfc3339, shanghai_day, shanghai_minute, shanghai_month
from shared.contracts import (
    Claim,
    ClaimContext,
    DeadLetter,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    ReasonCode,
    RefundRequested,
    SettlementEvent,
)
from shared.ids import fingerprint, mask_person_ids
from shared.money import MAX_AMOUNT_FEN
from shared.records import ClaimRecord, ClaimResult
from shared.redis_functions import Call, Step
from shared.runtime import CONFLICTS, Delivery, Refused, ToTopic
from shared.settings import Settings
from shared.topics import (
    CLAIMS,
    ENROLLMENT,
    Topic,
    pattern_of,
    province_reconciliation,
    province_settlements,
)
from shared.window import ClaimWindow, InputWindow

logger = logging.getLogger("gongji.settlement")


def claim_output_id(claim_id: str, *what: str) -> str:
    """Every output of the saga stems from one claim (the wallet's answer only completes it)."""
    return output_event_id(CLAIMS.name, NATIONAL, claim_id, *what)


def settlement_event(claim_id: str, record: ClaimRecord) -> SettlementEvent:
    """The published result of a final claim record; the same record always gives the same event,
    whether a redelivered claim or the wallet's answer brings it out."""
    result = record.result
    assert result is not None  # a final record has its result
    return SettlementEvent(
        event_id=claim_output_id(claim_id, "settlement"),
        cause_id=claim_id,
        claim_id=claim_id,
        recipient_id=record.recipient_id,
        status=result.status,
        requested_fen=record.requested_fen,
        paid_fen=result.paid_fen,
        self_pay_fen=0 if record.kind == "reverse" else record.requested_fen - result.paid_fen,
        payers=result.payers,
        reason=result.reason or None,
        category=record.category,
        service_region=record.service_region,
        reverses=record.reverses,
        clearing_month=result.month or None,
        settled_at=datetime.fromisoformat(result.at),
        recipient_region=record.recipient_region,
        claim_sent_at=datetime.fromisoformat(record.sent_at) if record.sent_at else None,
    )


@dataclass
class Publication:
    """The statistics and reconciliations due, the marks of what they publish (shard, name, mark),
    cleared once Kafka has confirmed them, and the open days as published (day -> its marks, and
    each province's revision, and when), noted then too: a publication that failed is made again."""

    outputs: list[BaseModel | ToTopic] = field(default_factory=list)
    marks: list[tuple[int, str, str]] = field(default_factory=list)
    open_days: dict[str, tuple[str, dict[str, int], datetime]] = field(default_factory=dict)


class SettlementHandlers:
    def __init__(
        self,
        store: SettlementStore,
        clock: Clock,
        limits: ClaimLimits | None = None,
        window: ClaimWindow | None = None,
        inputs: InputWindow | None = None,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        self.store = store
        self.clock = clock
        self.limits = limits or ClaimLimits.from_settings(settings)
        self.window = window or ClaimWindow.from_settings(settings)
        self.inputs = inputs or InputWindow.from_settings(settings)
        self.tallies = Tallies(store.redis, settings.statistics_shards)
        self.minutes_kept = timedelta(seconds=settings.statistics_minutes_kept_seconds)
        self.days_kept = timedelta(seconds=settings.reconciliation_days_kept_seconds)
        self.settle = timedelta(seconds=settings.reconciliation_settle_seconds)
        # An open day is summed over every province pair and type: read at most this often.
        self.open_day_interval = timedelta(seconds=settings.reconciliation_interval_seconds)
        # The open days as last published: their marks, each province's revision, and when.
        self.open_days: dict[str, tuple[str, dict[str, int], datetime | None]] = {}

    async def on_enrollment(self, changes: Sequence[EnrollmentChanged]) -> list[Refused]:
        """Keeps the service's own copy of who is insured where (for rule 4), in one pipeline. An
        event id used before for other content changes nothing and is refused visibly, and so is
        one outside its window whose id is not remembered."""
        now = self.clock.now()
        refusals = [self.inputs.refused(change.occurred_at, now) for change in changes]
        steps = await self.store.run(
            [
                self.store.record_enrollment(
                    change.event_id,
                    fingerprint(change.model_dump_json()),
                    change.person_id,
                    change.insurance_type,
                    change.region,
                    change.status,
                    self.inputs.seen_ids(self.clock, refused),
                )
                for change, refused in zip(changes, refusals, strict=True)
            ]
        )
        answers = [
            Refused(change, *refused)
            if refused and step.outcome == "refused"
            else Refused(
                change, ReasonCode.CONFLICT, "event_id used before for other content; the first enrollment stands"
            )
            for change, refused, step in zip(changes, refusals, steps, strict=True)
            if step.conflict or step.outcome == "refused"
        ]
        CONFLICTS.labels(SERVICE, ENROLLMENT.name).inc(sum(step.conflict for step in steps))
        return answers

    async def on_claim_path(self, deliveries: Sequence[Delivery]) -> list[BaseModel | ToTopic | Refused]:
        """Everything a claim waits on here, read by one consumer (one fetch loop, not three):
        claims of the national and of every province's topic, and the wallet's draw answers (both
        versions of their topic)."""
        answers = [delivery.message for delivery in deliveries if delivery.topic.model is DrawAnswered]
        claims = [delivery for delivery in deliveries if delivery.topic.model is Claim]
        # Both run to their end before a failure of either is raised as it came (the runtime tells a
        # transient one by its class): a retry never overlaps a step still running.
        settled, answered = await asyncio.gather(
            self._on_claims(
                [delivery.message for delivery in claims],  # type: ignore[misc]
                [delivery.topic.province for delivery in claims],
                [_sent_at(delivery.sent_ms) for delivery in claims],
            ),
            self._on_draw_answers(answers),  # type: ignore[arg-type]
            return_exceptions=True,
        )
        for outcome in (settled, answered):
            if isinstance(outcome, BaseException):
                raise outcome
        return [*settled, *answered]

    async def _on_claims(
        self, claims: Sequence[Claim], provinces: Sequence[str | None], sent: Sequence[datetime | None]
    ) -> list[BaseModel | ToTopic]:
        """Claims of the national topic (province None) and of each province's own: a claim sent on
        a province's topic is held to its province, and its results go to that province's
        settlements topic as well as the national one. A claim that does not belong where it was
        sent is refused before its id is taken. One
        pipeline registers the other claims' ids and reads what their steps need, one pipeline
        records every claim in batch order (so a recipient's claims apply one after another), then
        the answers are built. A claim id owned by another recipient is a conflict, with no step."""
        if not claims:
            return []
        now = self.clock.now()
        contents = [fingerprint(claim.model_dump_json()) for claim in claims]
        refusals = [
            refusal_before_id(claim, province, self.window, now)
            for claim, province in zip(claims, provinces, strict=True)
        ]
        entering = [index for index, refusal in enumerate(refusals) if refusal is None]
        registering = [(claims[index], self._owner(claims[index])) for index in entering]
        facts = dict(
            zip(
                entering,
                await self.store.claim_facts(
                    [(claim, owner, self.window.kept_ms(owner.day, self.clock)) for claim, owner in registering]
                ),
                strict=True,
            )
        )
        for index, fact in facts.items():
            # Another recipient's id, or the same id for a claim of another day: not this claim.
            if fact.owner != self._owner(claims[index]):
                refusals[index] = ReasonCode.CONFLICT
        counting, rate_limited = Counting.at(now, self.clock), _refusal(ReasonCode.RATE_LIMITED, now)
        steps = iter(
            await self.store.run(
                [
                    self._accept(claim, content, facts[index], province, sent[index], now, counting, rate_limited)
                    if claim.kind == "settle"
                    else self._reverse(claim, content, facts[index], province, sent[index], now, counting)
                    for index, (claim, content, province) in enumerate(zip(claims, contents, provinces, strict=True))
                    if refusals[index] is None
                ]
            )
        )
        outputs: list[BaseModel | ToTopic] = []
        for claim, content, refusal, province, sent_at in zip(claims, contents, refusals, provinces, sent, strict=True):
            step = next(steps) if refusal is None else None
            if step is None or step.conflict:
                answer = self._refused_before_id(claim, content, refusal or ReasonCode.CONFLICT, sent_at, now)
                outputs.extend(_also_to_provinces(answer, province))
            elif claim.kind == "settle":
                outputs.extend(self._accepted(claim, step, now))
            else:
                outputs.extend(self._reversed(claim, step, now))
        return outputs

    def _accept(
        self,
        claim: Claim,
        content: str,
        facts: ClaimFacts,
        province: str | None,
        sent_at: datetime | None,
        now: datetime,
        counting: Counting,
        rate_limited: ClaimResult,
    ) -> Call:
        """The step of a settle claim; `counting` and `rate_limited` are the batch's (one `now`)."""
        assessment = assess_claim(claim, facts.recipient)
        assert claim.amount_fen is not None  # a settle claim has it
        record = ClaimRecord(
            fingerprint=content,
            kind="settle",
            recipient_id=claim.recipient_id,
            category=claim.category,
            service_region=claim.service_region,
            recipient_region=claim.recipient_region,
            sent_at=rfc3339(sent_at) if sent_at else None,
            occurred_at=rfc3339(claim.occurred_at),
            requested_fen=claim.amount_fen,
            asked_fen=assessment.payable_fen,
            shortfall=assessment.shortfall,
            state="pending",
            province=province or "",
        )
        if assessment.refusal:
            record.state, record.result = "final", _refusal(assessment.refusal, now)
        owner = self._owner(claim)
        return self.store.accept(
            owner,
            claim.claim_id,
            record,
            self.limits,
            counting,
            rate_limited,
            self.window.kept_ms(owner.day, self.clock),
        )

    @staticmethod
    def _owner(claim: Claim) -> ClaimOwner:
        """Whom a claim's id is registered to: its recipient, and the day it occurred (its bucket)."""
        return ClaimOwner(claim.recipient_id, shanghai_day(claim.occurred_at))

    def _accepted(self, claim: Claim, step: Step[ClaimRecord], now: datetime) -> list[BaseModel | ToTopic]:
        record = step.result
        if record.state == "pending":  # new, or redelivered before the wallet answered: (re)ask
            assert record.service_region is not None  # a settle claim has it
            return [
                DrawRequested(
                    request_id=claim_output_id(claim.claim_id, "draw"),
                    claim_id=claim.claim_id,
                    recipient_id=claim.recipient_id,
                    amount_fen=record.asked_fen,
                    requested_at=now,
                    context=ClaimContext(
                        requested_fen=record.requested_fen,
                        service_region=record.service_region,
                        shortfall=record.shortfall,
                        claim_day=shanghai_day(claim.occurred_at),
                    ),
                )
            ]
        return _also_to_provinces(settlement_event(claim.claim_id, record), record.province)

    def _refused_before_id(
        self, claim: Claim, content: str, reason: ReasonCode, sent_at: datetime | None, now: datetime
    ) -> SettlementEvent:
        """A claim refused before its id was taken (shared/contracts.py: REFUSED_BEFORE_ID): nothing
        is recorded, and a claim id used before for other content, or by another recipient, keeps
        its first result. The answer describes this claim, under an id of its own content."""
        if reason == ReasonCode.CONFLICT:
            CONFLICTS.labels(SERVICE, CLAIMS.name).inc()
        what = "conflict" if reason == ReasonCode.CONFLICT else reason
        return _rejected(
            claim_output_id(claim.claim_id, what, content),
            claim.claim_id,
            claim.recipient_id,
            claim.amount_fen or 0,
            reason,
            now,
            category=claim.category,
            service_region=claim.service_region,
            recipient_region=claim.recipient_region,
            claim_sent_at=sent_at,
            reverses=claim.reverses,
        )

    def _reverse(
        self,
        claim: Claim,
        content: str,
        facts: ClaimFacts,
        province: str | None,
        sent_at: datetime | None,
        now: datetime,
        counting: Counting,
    ) -> Call:
        assert claim.reverses is not None  # the contract requires it for a reversal
        record = ClaimRecord(
            fingerprint=content,
            kind="reverse",
            recipient_id=claim.recipient_id,
            reverses=claim.reverses,
            reverses_day=facts.reverses_owner.day if facts.reverses_owner else None,
            sent_at=rfc3339(sent_at) if sent_at else None,
            occurred_at=rfc3339(claim.occurred_at),
            state="pending",
            province=province or "",
        )
        owner, original = self._owner(claim), facts.reverses_owner
        return self.store.reverse(
            owner,
            claim.claim_id,
            record,
            claim.reverses,
            original,
            shanghai_month(now),
            rfc3339(now),
            province,
            self.limits,
            counting,
            rfc3339(self.window.opens(now)),
            (
                self.window.kept_ms(owner.day, self.clock),
                self.window.kept_ms(original.day if original else owner.day, self.clock),
            ),
        )

    def _reversed(self, claim: Claim, step: Step[ClaimRecord], now: datetime) -> list[BaseModel | ToTopic]:
        record = step.result
        # A reversal sent on a province's topic reverses only claims of that province's care (or
        # the national platform's): the two provinces, when both are named, are one.
        outputs = _also_to_provinces(settlement_event(claim.claim_id, record), record.province or record.claim_province)
        assert record.result is not None and claim.reverses is not None  # a reversal is final at once
        if record.result.status == "reversed":
            assert record.reverses_day is not None  # its claim was found, where its owner's day said
            outputs.append(
                RefundRequested(
                    request_id=claim_output_id(claim.claim_id, "refund"),
                    claim_id=claim.claim_id,
                    original_claim_id=claim.reverses,
                    recipient_id=claim.recipient_id,
                    payers=record.result.payers,
                    requested_at=now,
                    claim_day=record.reverses_day,
                )
            )
        return outputs

    def answer_unreadable_claim(
        self, topic: Topic, value: bytes, letter: DeadLetter
    ) -> list[BaseModel | ToTopic] | None:
        """A claim that breaks the contract, but whose claim_id can be read, is answered where its
        sender reads answers: rejected, with the dead letter's reason and error, on the national
        settlements topic and its province's own. None for any other record (its sender gets the
        dead letter)."""
        fields = _json_object(value) if topic.model is Claim else None
        claim_id = (fields or {}).get("claim_id")
        if fields is None or not isinstance(claim_id, str) or not 1 <= len(claim_id) <= 128:
            return None
        recipient_id, amount = fields.get("recipient_id"), fields.get("amount_fen")
        event = _rejected(
            claim_output_id(claim_id, "unreadable", letter.event_id or ""),
            claim_id,
            recipient_id if isinstance(recipient_id, str) and len(recipient_id) <= 64 else "",
            amount if type(amount) is int and 1 <= amount <= MAX_AMOUNT_FEN else 0,
            letter.reason,
            self.clock.now(),
            error=mask_person_ids(letter.error),
        )
        return _also_to_provinces(event, topic.province)

    async def _on_draw_answers(self, answers: Sequence[DrawAnswered]) -> list[BaseModel | ToTopic | Refused]:
        """The wallet's answers complete their claims: one pipeline, in batch order. An answer whose
        figures do not add up, or that fits no claim recorded here, changes no claim; money drawn
        for a claim that was never recorded is given back."""
        if not answers:
            return []
        now = self.clock.now()
        checked = [
            (
                answer,
                answer_mismatch(answer.requested_fen, answer.paid_fen, [payer.amount_fen for payer in answer.payers]),
            )
            for answer in answers
        ]
        sound = [answer for answer, why in checked if why is None]
        steps = await self.store.run([self._finish(answer, now) for answer in sound])
        outputs: list[BaseModel | ToTopic | Refused] = [
            Refused(answer, ReasonCode.INVALID_MESSAGE, why) for answer, why in checked if why is not None
        ]
        for answer, step in zip(sound, steps, strict=True):
            if step.outcome == "refused":
                outputs.extend(self._refused_answer(answer, step.why, now))
                continue
            record = step.result
            outputs.extend(_also_to_provinces(settlement_event(answer.claim_id, record), record.province))
        return outputs

    def _refused_answer(self, answer: DrawAnswered, why: str, now: datetime) -> list[BaseModel | Refused]:
        logger.error("draw answer for claim %s refused: %s", answer.claim_id, why)
        if why == "unknown" and not self.window.held(answer.context.claim_day, now):
            # Its claim's day may have left Redis (docs/contract.md, the window): the claim may have
            # been paid, and giving back what it drew would refund it. An operator looks at it.
            return [
                Refused(
                    answer,
                    ReasonCode.CLAIM_TOO_OLD,
                    f"no claim is held for this answer, and the records of claims of {answer.context.claim_day} "
                    "may have left Redis: nothing is given back",
                )
            ]
        if why == "mismatch":
            return [
                Refused(
                    answer,
                    ReasonCode.INVALID_MESSAGE,
                    "the answer is not for this claim as recorded (recipient or amount asked differ)",
                )
            ]
        # No such claim: nothing will ever settle or reverse what was drawn, so it goes back now.
        return [
            Refused(answer, ReasonCode.INVALID_MESSAGE, "no such claim was recorded: what it drew is given back"),
            RefundRequested(
                request_id=claim_output_id(answer.claim_id, "unclaimed draw"),
                claim_id=claim_output_id(answer.claim_id, "unclaimed draw"),
                original_claim_id=answer.claim_id,
                recipient_id=answer.recipient_id,
                payers=answer.payers,
                requested_at=now,
                claim_day=answer.context.claim_day,
            ),
        ]

    def _finish(self, answer: DrawAnswered, now: datetime) -> Call:
        requested = answer.context.requested_fen
        shortfall = answer.reason if answer.paid_fen < answer.requested_fen else answer.context.shortfall
        result = ClaimResult(
            status=settlement_status(requested, answer.paid_fen),
            paid_fen=answer.paid_fen,
            payers=answer.payers,
            owed_fen=clearing_contributions(answer.payers, answer.context.service_region),
            reason=shortfall if answer.paid_fen < requested else None,
            at=rfc3339(now),
        )
        owner = ClaimOwner(answer.recipient_id, answer.context.claim_day)
        return self.store.finish(
            owner,
            answer.claim_id,
            answer.requested_fen,
            result,
            shanghai_month(now),
            self.window.kept_ms(owner.day, self.clock),
        )

    async def on_published(self, deliveries: Sequence[Delivery]) -> list[BaseModel]:
        """Counts every result and dead letter published, once each by its event id, in the exact
        statistics of its minute and the reconciliation of its day (services/settlement/statistics.py)."""
        now = self.clock.now()
        calls = []
        for delivery in deliveries:
            message = delivery.message
            if isinstance(message, SettlementEvent):
                event_id, counted = message.event_id, counted_result(message)
            elif isinstance(message, DeadLetter) and message.event_id is not None:
                event_id, counted = message.event_id, counted_dead_letter(message, pattern_of(message.source_topic))
            else:
                continue
            kept = self._kept(counted, now)
            if kept is not None:
                calls.append(self.tallies.count(event_id, counted, kept))
        await self.store.run(calls)
        return []

    def _kept(self, counted: Counted, now: datetime) -> Kept | None:
        """How long the event's id and sums are kept (None: its day is no longer kept, so it is not
        counted); a minute whose sums are gone already is left out of what it adds."""
        day_ms = self.clock.redis_ms(day_kept_until(counted.day, self.days_kept, self.window) - now)
        minute_ms = self.clock.redis_ms(minute_start(counted.minute) + self.minutes_kept - now)
        if day_ms <= 0:
            logger.warning("a result or dead letter of %s came after its day left Redis: not counted", counted.minute)
            return None
        if minute_ms <= 0:
            counted.minute_fields = {}
        return Kept(counted=day_ms, minute=max(1, minute_ms), day=day_ms)

    async def publication_due(self) -> Publication:
        """The snapshots of the minutes changed since they were published, and the reconciliations
        of the days changed: every province's on the national topic while the day is open (those
        whose figures moved), and once it has ended (and settled), final, on each province's own too."""
        now = self.clock.now()
        marks_of: dict[str, list[tuple[int, str, str]]] = {}
        for shard, names in (await self.tallies.changed()).items():
            for name, mark in names.items():
                marks_of.setdefault(name, []).append((shard, name, mark))
        publication = Publication()
        for name, marks in sorted(marks_of.items()):
            what, when = name.split("|", 1)
            if what == "minute":
                publication.outputs.append(snapshot(when, await self.tallies.sums("minute", when), now))
                publication.marks.extend(marks)
            elif now >= day_start(when) + timedelta(days=1) + self.settle:
                for day in reconciliations(when, await self.tallies.sums("day", when), True, now):
                    publication.outputs.extend([day, ToTopic(province_reconciliation(day.province), day)])
                publication.marks.extend(marks)
            else:
                await self._open_day(when, marks, now, publication)
        return publication

    async def _open_day(
        self, day: str, marks: list[tuple[int, str, str]], now: datetime, publication: Publication
    ) -> None:
        """An open day's reconciliations whose figures moved since this instance last published them."""
        seen = ",".join(f"{shard}:{mark}" for shard, _, mark in sorted(marks))
        seen_before, before, published_at = self.open_days.get(day, ("", {}, None))
        if seen == seen_before or (published_at is not None and now - published_at < self.open_day_interval):
            return
        moved = [
            one
            for one in reconciliations(day, await self.tallies.sums("day", day), False, now)
            if one.revision != before.get(one.province, 0)
        ]
        publication.outputs.extend(moved)
        publication.open_days[day] = (seen, {**before, **{one.province: one.revision for one in moved}}, now)

    async def published(self, publication: Publication) -> None:
        """Kafka has confirmed the publication: its marks go, and its open days are noted (a day
        no longer open is forgotten)."""
        await self.tallies.published(publication.marks)
        self.open_days |= publication.open_days
        yesterday = shanghai_minute(self.clock.now() - timedelta(days=1))[:10]
        self.open_days = {day: noted for day, noted in self.open_days.items() if day >= yesterday}


def _rejected(
    event_id: str,
    claim_id: str,
    recipient_id: str,
    requested_fen: int,
    reason: ReasonCode,
    now: datetime,
    **fields: str | datetime | None,
) -> SettlementEvent:
    """The answer to a claim refused before anything was recorded: nothing paid, all self-paid."""
    return SettlementEvent(
        event_id=event_id,
        cause_id=claim_id,
        claim_id=claim_id,
        recipient_id=recipient_id,
        status="rejected",
        requested_fen=requested_fen,
        paid_fen=0,
        self_pay_fen=requested_fen,
        payers=[],
        reason=reason,
        settled_at=now,
        **fields,
    )


def _refusal(reason: ReasonCode, now: datetime) -> ClaimResult:
    return ClaimResult(status="rejected", paid_fen=0, reason=reason, at=rfc3339(now))


def _also_to_provinces(event: SettlementEvent, province: str | None) -> list[BaseModel | ToTopic]:
    """A settlement goes to the national topic, and to the topic of the province that sent the
    claim (recorded with it; its payers' ids masked), never to another: a province that sends
    another's claim again, byte for byte, is answered nothing of it (it would have read the payers'
    ids and what they paid)."""
    return [event, ToTopic(province_settlements(province), for_province(event))] if province else [event]


def _sent_at(sent_ms: int | None) -> datetime | None:
    """A Kafka record's time as an aware datetime (None if the record carried none)."""
    return datetime.fromtimestamp(sent_ms / 1000, UTC) if sent_ms is not None and sent_ms >= 0 else None


def _json_object(value: bytes) -> dict | None:
    """A record's JSON object, or None if it is none (broken, too deeply nested, not an object)."""
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None
