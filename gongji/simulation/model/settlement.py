"""The model of the settlement service: claims, reversals, clearing."""

from __future__ import annotations

from datetime import datetime

from gongji.simulation.model.base import ClaimBook, ModelBase, _distinct, _is_conflict, _owed, day_of, require
from shared.clock import shanghai_month
from shared.contracts import (
    Claim,
    ClaimCategory,
    ClearingRow,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    ReasonCode,
    RefundRequested,
    SettlementEvent,
)
from shared.ids import PROVINCE_CODES
from shared.runtime import Delivery, Refused


class SettlementModel(ModelBase):
    # ---- settlement -------------------------------------------------------------------------

    def _settlement_enrollment(self, change: EnrollmentChanged, group: list) -> None:
        effects = self._decided("settlement/enrollment", change.person_id, change.event_id, change, group)
        if effects is not None:
            self.settlement_enrollment[change.person_id] = (change.insurance_type, change.region, change.status)
            require(not effects, "answer", f"settlement enrollment {change.event_id}: {effects}")

    def _settlement_published(self, delivery: Delivery, group: list) -> None:
        """Counting a published result or dead letter in the statistics answers nothing (what it
        counted is checked against the topics at the end of a run: World.check_statistics)."""
        require(not group, "answer", f"settlement answered a result or dead letter it counted: {group}")

    @staticmethod
    def misplaced(claim: Claim, province: str | None) -> bool:
        """Refused before its id is taken: a claim sent on a province's own topic (`province`) for
        care in another province (a reversal: its id names the region), an institution's code or a
        premium's insured region in another province than the service region."""
        region = claim.service_region if claim.kind == "settle" else claim.claim_id.split("-")[0]
        if province is not None and (region or "")[:2] != province:
            return True
        if claim.kind != "settle":
            return False
        service_province = (claim.service_region or "")[:2]
        if claim.category in ("resident_premium", "ltc_premium"):
            return (claim.recipient_region or "")[:2] != service_province
        code = claim.institution_code or ""
        if claim.category in ("institution", "pharmacy"):
            return (
                not (len(code) >= 7 and code[1:7].isascii() and code[1:7].isdigit() and code[1:3] in PROVINCE_CODES)
                or code[1:3] != service_province
            )
        return False

    def payable(self, claim: Claim) -> int:
        """Rules 4, 12, 13, 15: what the shared funds may be asked to pay for a claim."""
        assert claim.amount_fen is not None
        if claim.category not in {category.value for category in ClaimCategory}:
            return 0
        if letter := {"institution": "H", "pharmacy": "P"}.get(claim.category):
            if not (claim.institution_code or "").startswith(letter):
                return 0
        enrollment = self.settlement_enrollment.get(claim.recipient_id)
        if enrollment is None or enrollment[2] != "normal" or enrollment[1] != claim.recipient_region:
            return 0
        if claim.category == ClaimCategory.RESIDENT_PREMIUM and enrollment[0] != "resident":
            return 0
        if claim.category == ClaimCategory.PHARMACY:
            return min(claim.amount_fen, sum(item.amount_fen for item in claim.items or [] if item.in_catalogue))
        return claim.amount_fen

    def open_month(self, now: datetime) -> str:
        month = shanghai_month(now)
        while month in self.closed:
            year, number = int(month[:4]), int(month[5:])
            month = f"{year + number // 12:04d}-{number % 12 + 1:02d}"
        return month

    def _accumulate(self, month: str, owed: dict[str, int], sign: int) -> None:
        for pair, amount in owed.items():
            self.clearing[month][pair] += sign * amount
            self.clearing[month][pair + ("#claims" if sign == 1 else "#reversals")] += 1

    def _settlement_claim_path(self, delivery: Delivery, group: list) -> None:
        if isinstance(delivery.message, Claim):
            self._settlement_claim(delivery.message, delivery.topic.province, group)
        else:
            self._settlement_draw_answer(delivery.message, group)  # type: ignore[arg-type]

    def _settlement_claim(self, claim: Claim, province: str | None, group: list) -> None:
        what = f"{claim.kind} {claim.claim_id} of {self.a(claim.recipient_id)}" + (
            f" from {province}" if province else ""
        )
        if self.misplaced(claim, province):  # its id's other claims in the batch answer in the same group
            require(
                any(
                    isinstance(output, SettlementEvent)
                    and output.status == "rejected"
                    and output.reason == ReasonCode.SERVICE_REGION_MISMATCH
                    and (output.requested_fen, output.category) == (claim.amount_fen or 0, claim.category)
                    for output in group
                ),
                "claim-decision",
                lambda: f"{what}: misplaced, refused before its id is taken, yet {group}",
            )
            return
        if self.too_old(claim.occurred_at):  # refused before any state is read
            require(
                any(
                    isinstance(output, SettlementEvent)
                    and output.status == "rejected"
                    and output.reason == ReasonCode.CLAIM_TOO_OLD
                    and output.requested_fen == (claim.amount_fen or 0)
                    for output in group
                ),
                "claim-window",
                lambda: f"{what}: occurred {claim.occurred_at}, older than the window, yet {group}",
            )
            return
        record = self.claims.get(claim.claim_id)
        owner = (claim.recipient_id, day_of(claim.occurred_at))
        if self.owners[claim.claim_id] != owner or (record and record.content != claim.model_dump_json()):
            require(
                any(_is_conflict(output) for output in group),
                "reused-id",
                lambda: f"{what}: its id is another's (owner {self.owners[claim.claim_id]}), yet {group}",
            )
            return
        if record is not None:
            return  # a redelivery: its stored result (or its draw request) again
        effects = [
            output for output in _distinct(group) if not _is_conflict(output)
        ]  # a reuse of its id may share the batch
        record = self.claims[claim.claim_id] = ClaimBook(
            claim.claim_id,
            claim.kind,
            claim.recipient_id,
            claim.model_dump_json(),
            reverses=claim.reverses,
            province=province,
            occurred_at=claim.occurred_at,
        )
        if claim.kind == "settle":
            record.requested, record.payable, record.service_region = (
                claim.amount_fen,
                self.payable(claim),
                claim.service_region,
            )
            if record.payable == 0:
                record.status, record.result = "final", "rejected"
                event = self._one(effects, SettlementEvent, what)
                require(
                    event.status == "rejected" and event.paid_fen == 0 and len(effects) == 1,
                    "claim-decision",
                    lambda: f"{what}: {event.status} paid {event.paid_fen}, books: nothing payable",
                )
            else:
                request = self._one(effects, DrawRequested, what)
                require(
                    request.amount_fen == record.payable
                    and request.context.requested_fen == claim.amount_fen
                    and len(effects) == 1,
                    "claim-decision",
                    lambda: f"{what}: asks the wallet for {request.amount_fen}, books: {record.payable} payable",
                )
            return
        self._reverse(claim, record, effects)

    def _reverse(self, reversal: Claim, record: ClaimBook, effects: list) -> None:
        what = f"reversal {reversal.claim_id} of {reversal.reverses} by {self.a(reversal.recipient_id)}"
        original = self.claims.get(reversal.reverses or "")
        if record.province is not None and not self.known_to(original, record.province):
            original = None  # another province's claim looks to a province exactly like an unknown one
        reversible = (
            original is not None
            and original.occurred_at is not None
            and not self.too_old(original.occurred_at)  # a reversal comes within its claim's window
            and original.kind == "settle"
            and original.recipient == reversal.recipient_id
            and original.result in ("settled", "partial")
            and original.reversed_by is None
        )
        event = self._one(effects, SettlementEvent, what)
        refunds = [output for output in effects if isinstance(output, RefundRequested)]
        record.status = "final"
        if not reversible:
            record.result = "rejected"
            known = f"{original.kind} {original.result} of {self.a(original.recipient)}" if original else "unknown here"
            require(
                event.status == "rejected" and event.paid_fen == 0 and not refunds,
                "reversal-decision",
                lambda: (
                    f"{what}: {event.status} paid {event.paid_fen} back, books: not reversible ({known}"
                    f"{', reversed by ' + original.reversed_by if original and original.reversed_by else ''})"
                ),
            )
            return
        assert original is not None
        record.result, record.paid, record.payers, record.owed = (
            "reversed",
            original.paid,
            original.payers,
            original.owed,
        )
        record.month = self.open_month(self.clock.now())
        original.reversed_by = reversal.claim_id
        self._accumulate(record.month, original.owed, -1)
        payers = [(p.provider_id, p.provider_region, p.amount_fen) for p in event.payers]
        require(
            event.status == "reversed"
            and event.paid_fen == original.paid
            and payers == original.payers
            and event.clearing_month == record.month,
            "reversal-decision",
            lambda: (
                f"{what}: {event.status} paid {event.paid_fen} in {event.clearing_month}, books: "
                f"reversed {original.paid} in {record.month}"
            ),
        )
        require(
            len(refunds) == 1
            and [(p.provider_id, p.amount_fen) for p in refunds[0].payers] == [(p, n) for p, _, n in original.payers],
            "reversal-decision",
            lambda: f"{what}: refund requests {refunds}, books: {original.payers}",
        )

    @staticmethod
    def known_to(original: ClaimBook | None, province: str) -> bool:
        """A province may reverse a claim it sent itself, or one of its care sent on the national topic."""
        if original is None:
            return False
        if original.province is not None:
            return original.province == province
        return original.kind == "settle" and (original.service_region or "")[:2] == province

    def _settlement_draw_answer(self, answer: DrawAnswered, group: list) -> None:
        what = f"answer for {answer.claim_id} of {self.a(answer.recipient_id)}"
        effects = _distinct(group)
        amounts = [payer.amount_fen for payer in answer.payers]
        if not (
            0 <= answer.paid_fen <= answer.requested_fen
            and sum(amounts) == answer.paid_fen
            and all(n > 0 for n in amounts)
        ):
            require(
                [type(e) for e in effects] == [Refused], "answer-check", f"{what}: figures do not add up, yet {effects}"
            )
            return
        record = self.claims.get(answer.claim_id)
        unknown = record is None or self.shard_of(record.recipient) != self.shard_of(answer.recipient_id)
        if unknown and not self.day_held(answer.context.claim_day):  # its claim may have been paid and gone
            require([type(e) for e in effects] == [Refused], "answer-check", f"{what}: late and unknown, yet {effects}")
            return
        if unknown:
            refunds = [e for e in effects if isinstance(e, RefundRequested)]
            require(
                len(refunds) == 1
                and refunds[0].payers == answer.payers
                and not any(isinstance(e, SettlementEvent) for e in effects),
                "answer-check",
                lambda: f"{what}: no such claim recorded, so what it drew must go back; got {effects}",
            )
            return
        if record.kind != "settle" or record.recipient != answer.recipient_id or record.payable != answer.requested_fen:
            require(
                [type(e) for e in effects] == [Refused],
                "answer-check",
                lambda: f"{what}: not for claim {record.claim_id} as recorded, yet {effects}",
            )
            return
        if record.status == "final":
            return  # a redelivered answer: the stored settlement again
        record.status, record.paid = "final", answer.paid_fen
        record.result = (
            "rejected" if answer.paid_fen == 0 else "settled" if answer.paid_fen == record.requested else "partial"
        )
        record.payers = [(p.provider_id, p.provider_region, p.amount_fen) for p in answer.payers]
        record.owed = _owed(answer.payers, record.service_region or "")
        record.month = self.open_month(self.clock.now())
        self._accumulate(record.month, record.owed, 1)
        event = self._one(effects, SettlementEvent, what)
        require(
            (event.status, event.paid_fen, event.clearing_month) == (record.result, record.paid, record.month)
            and [(p.provider_id, p.amount_fen) for p in event.payers] == [(p, n) for p, _, n in record.payers],
            "settlement",
            lambda: (
                f"{what}: {event.status} {event.paid_fen} in {event.clearing_month}, books "
                f"{record.result} {record.paid} in {record.month}"
            ),
        )
        drawn = self.answers.get((answer.claim_id, answer.recipient_id))
        require(
            drawn is not None and (drawn.paid, drawn.payers) == (record.paid, [(p, n) for p, _, n in record.payers]),
            "paid-as-drawn",
            lambda: (
                f"{what}: settled {record.paid} by {record.payers}, the wallet drew "
                f"{(drawn.paid, drawn.payers) if drawn else 'nothing'}"
            ),
        )

    def close_month(self, month: str, rows: list[ClearingRow]) -> None:
        self.closed[month] = dict(self.clearing[month])
        totals = self.closed[month]
        expected = [
            (pair[:2], pair[3:], amount, totals.get(f"{pair}#claims", 0), totals.get(f"{pair}#reversals", 0))
            for pair, amount in sorted(totals.items())
            if "#" not in pair
        ]
        expected = [line for line in expected if any(line[2:])]
        got = [
            (row.payer_province, row.payee_province, row.amount_fen, row.claims, row.reversals)
            for row in rows
            if row.row == "gross"
        ]
        require(got == expected, "clearing-statement", lambda: f"{month}: statement {got}, books {expected}")
        require(
            sum(row.amount_fen for row in rows if row.row == "net") == 0,
            "clearing-statement",
            f"{month}: net rows do not sum to zero",
        )
