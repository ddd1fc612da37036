"""Claims and clearing (rules 12–15): pure decisions, no Kafka or Redis."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from shared.clock import shanghai_month
from shared.contracts import Claim, ClaimCategory, ClearingRow, Payer, ReasonCode, SettlementEvent
from shared.ids import claim_id_region, derived_event_id, mask_person_id, province_of, region_or_none
from shared.window import ClaimWindow

SERVICE = "settlement"
NATIONAL = "national"  # the scope of claim ids; other input ids are unique per person (scope: the person id)

ALLOWED_CATEGORIES: frozenset[str] = frozenset(category.value for category in ClaimCategory)
# An institution code's first letter says what it is: H a hospital or clinic, P a pharmacy.
CODE_LETTERS: dict[str, str] = {ClaimCategory.INSTITUTION: "H", ClaimCategory.PHARMACY: "P"}


def output_event_id(input_topic: str, scope: str, input_id: str, *what: str) -> str:
    """The id of an output of one input (`what` tells several outputs of one input apart), so that
    two different inputs never give the same id."""
    return derived_event_id(SERVICE, input_topic, scope, input_id, *what)


@dataclass(frozen=True)
class Assessment:
    """What the shared funds may be asked to pay for a claim, and why not all of it."""

    payable_fen: int
    refusal: ReasonCode | None = None  # nothing may be paid
    shortfall: ReasonCode | None = None  # part of it must be self-paid


PREMIUMS: frozenset[str] = frozenset({ClaimCategory.RESIDENT_PREMIUM, ClaimCategory.LTC_PREMIUM})


def refusal_before_id(claim: Claim, province: str | None, window: ClaimWindow, now: datetime) -> ReasonCode | None:
    """Why a claim is refused from it, its topic and the clock alone, before its id is taken or any
    state read: not where it belongs (SERVICE_REGION_MISMATCH, so that the id stays free for its own
    sender), else outside the idempotency window (CLAIM_TOO_OLD, or ahead of the clock)."""
    return _misplaced(claim, province) or window.refusal(claim.occurred_at, now)


def _misplaced(claim: Claim, province: str | None) -> ReasonCode | None:
    """A claim sent on a province's own topic (`province`) is for care in that province (a reversal:
    its id's region is), an institution's code lies in the service region's province (the service
    region decides who is paid in clearing), and a premium is owed to the recipient's own insured
    province (rule 12c)."""
    region = claim.service_region if claim.kind == "settle" else claim_id_region(claim.claim_id)
    assert region is not None  # the contract requires it of either kind
    if province is not None and province_of(region) != province:
        return ReasonCode.SERVICE_REGION_MISMATCH
    if claim.kind != "settle":
        return None
    assert claim.recipient_region is not None  # a settle claim has it
    if claim.category in PREMIUMS and province_of(region) != province_of(claim.recipient_region):
        return ReasonCode.SERVICE_REGION_MISMATCH
    code = claim.institution_code
    if claim.category in CODE_LETTERS and code is not None:
        code_region = region_or_none(code[1:7])
        if code_region is None or province_of(code_region) != province_of(region):
            return ReasonCode.SERVICE_REGION_MISMATCH
    return None


@dataclass(frozen=True)
class Enrolled:
    """What settlement's copy of the enrollment says of a recipient."""

    insurance_type: str  # employee | resident
    region: str
    status: str  # normal | suspended | terminated


def assess_claim(claim: Claim, recipient: Enrolled | None) -> Assessment:
    """Rule 12 (only medical uses; only catalogue items at pharmacies; a resident-insurance premium
    only for a resident-insured recipient, a long-term-care premium for either scheme) and rule 4
    (the recipient is insured, status normal, in the region the claim states)."""
    assert claim.amount_fen is not None and claim.category is not None  # a settle claim has them
    if claim.category not in ALLOWED_CATEGORIES:
        return Assessment(0, ReasonCode.CATEGORY_NOT_ALLOWED)
    letter = CODE_LETTERS.get(claim.category)
    if letter is not None and not (claim.institution_code or "").startswith(letter):
        # A pharmacy passing as an institution would skip the catalogue check.
        return Assessment(0, ReasonCode.CATEGORY_NOT_ALLOWED)
    if recipient is None:
        return Assessment(0, ReasonCode.RECIPIENT_NOT_INSURED)
    if recipient.status != "normal":
        return Assessment(0, ReasonCode.RECIPIENT_STATUS_ABNORMAL)
    if recipient.region != claim.recipient_region:
        return Assessment(0, ReasonCode.RECIPIENT_MISMATCH)
    if claim.category == ClaimCategory.RESIDENT_PREMIUM and recipient.insurance_type != "resident":
        return Assessment(0, ReasonCode.CATEGORY_NOT_ALLOWED)
    if claim.category != ClaimCategory.PHARMACY:
        return Assessment(claim.amount_fen)
    in_catalogue = sum(item.amount_fen for item in claim.items or [] if item.in_catalogue)
    payable = min(claim.amount_fen, in_catalogue)
    if payable == 0:
        return Assessment(0, ReasonCode.NOT_IN_CATALOGUE)
    return Assessment(payable, shortfall=ReasonCode.NOT_IN_CATALOGUE if payable < claim.amount_fen else None)


def answer_mismatch(requested_fen: int, paid_fen: int, payer_amounts: list[int]) -> str | None:
    """Why the wallet's answer cannot be right, or None: it pays between 0 and what was asked, and
    its payers add up to what it pays."""
    if not 0 <= paid_fen <= requested_fen:
        return f"paid {paid_fen} is outside 0..{requested_fen} asked"
    if sum(payer_amounts) != paid_fen or any(amount <= 0 for amount in payer_amounts):
        return f"the payers' amounts do not add up to paid {paid_fen}"
    return None


def statistics_category(kind: str, category: str | None) -> str:
    """The category a result is counted under on the dashboard: one of the allowed uses, `reversal`,
    or `not_allowed` for any other text a sender wrote (so that the table stays small)."""
    if kind == "reverse":
        return "reversal"
    return category if category in ALLOWED_CATEGORIES and category is not None else "not_allowed"


def settlement_status(requested_fen: int, paid_fen: int) -> str:
    if paid_fen == 0:
        return "rejected"
    return "settled" if paid_fen == requested_fen else "partial"


def clearing_contributions(payers: list[Payer], service_region: str) -> dict[str, int]:
    """Rule 15: what each provider's province pays the service region's province, cross-province only.
    Keys are "<payer province>><payee province>"."""
    payee = province_of(service_region)
    owed: dict[str, int] = defaultdict(int)
    for payer in payers:
        if province_of(payer.provider_region) != payee:
            owed[f"{province_of(payer.provider_region)}>{payee}"] += payer.amount_fen
    return dict(owed)


def for_province(event: SettlementEvent) -> SettlementEvent:
    """A province's copy of a settlement: the payers are other people than the province's patient
    (their relatives, insured elsewhere), so their resident ids are masked; their regions and
    amounts, which the province's books need, stay. The national platform's copy has them whole."""
    return event.model_copy(
        update={
            "payers": [
                payer.model_copy(update={"provider_id": mask_person_id(payer.provider_id)}) for payer in event.payers
            ]
        }
    )


def clearing_row_provinces(row: ClearingRow) -> tuple[str, ...]:
    """The provinces a statement row concerns, each of which gets it on its own topic: a gross
    row its payer and its payee, a net row its province."""
    if row.row == "net":
        assert row.province is not None
        return (row.province,)
    assert row.payer_province is not None and row.payee_province is not None
    return (row.payer_province, row.payee_province)


def month_has_ended(month: str, now: datetime) -> bool:
    """Only an ended month may be closed: its last claims may still come until midnight Asia/Shanghai."""
    return shanghai_month(now) > month


@dataclass(frozen=True)
class GrossLine:
    payer_province: str
    payee_province: str
    amount_fen: int  # paid less reversed in the month
    claims: int  # claims paid in the month
    reversals: int = 0  # reversals in the month, whatever month their claims were paid in


def gross_lines(totals: dict[str, int]) -> list[GrossLine]:
    """A month's accumulator (`"35>53"`: fen, `"35>53#claims"`, `"35>53#reversals"`: counts) as
    sorted gross lines; a pair with nothing in the month is left out."""
    lines = [
        GrossLine(pair[:2], pair[3:], amount, totals.get(f"{pair}#claims", 0), totals.get(f"{pair}#reversals", 0))
        for pair, amount in sorted(totals.items())
        if "#" not in pair
    ]
    return [line for line in lines if line.amount_fen or line.claims or line.reversals]


def net_positions(lines: list[GrossLine]) -> dict[str, int]:
    """One position per province: what it receives minus what it pays. They sum to zero."""
    net: dict[str, int] = defaultdict(int)
    for line in lines:
        net[line.payee_province] += line.amount_fen
        net[line.payer_province] -= line.amount_fen
    assert sum(net.values()) == 0, "net positions must sum to zero"
    return dict(sorted(net.items()))
