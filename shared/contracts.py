"""Wire contract v1: one pydantic model per public topic, plus the internal saga messages.

This module is the single source of truth: services, tests, the AsyncAPI document and the load
generator all import it. Inputs ignore unknown fields (senders may add fields freely); every
field named in the contract keeps its name and meaning.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shared.ids import claim_id_prefix, claim_id_region, validate_person_id, validate_region
from shared.money import PositiveFen

PersonId = Annotated[str, AfterValidator(validate_person_id)]
Region = Annotated[str, AfterValidator(validate_region)]
InputId = Annotated[str, Field(min_length=1, max_length=128)]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: Any) -> Any:
    """Times on the wire are RFC 3339 strings with an offset: an epoch number is not a time.
    (An aware datetime built in code is a time already.)"""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 time with an offset, e.g. 2026-03-02T10:15:00+08:00")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]


class ReasonCode(StrEnum):
    NOT_CLOSE_RELATIVE = "NOT_CLOSE_RELATIVE"
    KINSHIP_UNVERIFIED = "KINSHIP_UNVERIFIED"
    SELF_RELATIONSHIP = "SELF_RELATIONSHIP"
    DUPLICATE_RELATIONSHIP = "DUPLICATE_RELATIONSHIP"
    PROVIDER_NOT_EMPLOYEE = "PROVIDER_NOT_EMPLOYEE"
    PROVIDER_STATUS_ABNORMAL = "PROVIDER_STATUS_ABNORMAL"
    RECIPIENT_NOT_INSURED = "RECIPIENT_NOT_INSURED"
    RECIPIENT_STATUS_ABNORMAL = "RECIPIENT_STATUS_ABNORMAL"
    RECIPIENT_MISMATCH = "RECIPIENT_MISMATCH"
    REGION_WALLET_CLOSED = "REGION_WALLET_CLOSED"
    CROSS_PROVINCE_NOT_IN_FORCE = "CROSS_PROVINCE_NOT_IN_FORCE"
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    RELATIONSHIP_NOT_ACTIVE = "RELATIONSHIP_NOT_ACTIVE"
    TRANSFER_AMOUNT_OVER_LIMIT = "TRANSFER_AMOUNT_OVER_LIMIT"
    DAILY_TRANSFER_LIMIT = "DAILY_TRANSFER_LIMIT"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    CATEGORY_NOT_ALLOWED = "CATEGORY_NOT_ALLOWED"
    NOT_IN_CATALOGUE = "NOT_IN_CATALOGUE"
    NO_QUOTA = "NO_QUOTA"
    CONFLICT = "CONFLICT"
    UNKNOWN_CLAIM = "UNKNOWN_CLAIM"
    ALREADY_REVERSED = "ALREADY_REVERSED"
    INSURANCE_CHANGED = "INSURANCE_CHANGED"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    # wave 2
    SERVICE_REGION_MISMATCH = "SERVICE_REGION_MISMATCH"
    NOT_REVERSIBLE = "NOT_REVERSIBLE"
    CLAIM_TOO_OLD = "CLAIM_TOO_OLD"
    AMOUNT_OUT_OF_RANGE = "AMOUNT_OUT_OF_RANGE"
    # A province sent more claims than it may (per recipient a day, or in a minute).
    RATE_LIMITED = "RATE_LIMITED"
    # An input other than a claim (enrollment, credit, spend, kinship, supervision, command) older
    # than its topic's idempotency window: its id may no longer be recognised, so it is not applied.
    INPUT_TOO_OLD = "INPUT_TOO_OLD"


# A claim refused for one of these reasons was never recorded: they are decided from the claim and
# the topic it came on alone (or its id is another's already), before its id is taken, so that the id
# stays free for the one sender it names. Every other refusal of a claim is its recorded result.
REFUSED_BEFORE_ID: frozenset[ReasonCode] = frozenset(
    {
        ReasonCode.CONFLICT,
        ReasonCode.INVALID_MESSAGE,
        ReasonCode.AMOUNT_OUT_OF_RANGE,
        ReasonCode.SERVICE_REGION_MISMATCH,
        ReasonCode.CLAIM_TOO_OLD,
    }
)


class Kinship(StrEnum):
    """What `relative_id` is to `person_id`: the close relatives of rule 2, and only these."""

    SPOUSE = "spouse"
    PARENT = "parent"
    CHILD = "child"
    SIBLING = "sibling"
    GRANDPARENT = "grandparent"
    MATERNAL_GRANDPARENT = "maternal_grandparent"
    GRANDCHILD = "grandchild"
    MATERNAL_GRANDCHILD = "maternal_grandchild"


class ClaimCategory(StrEnum):
    """Rule 12: the only uses of shared money."""

    INSTITUTION = "institution"
    PHARMACY = "pharmacy"
    RESIDENT_PREMIUM = "resident_premium"
    LTC_PREMIUM = "ltc_premium"


CODED_CATEGORIES = frozenset({ClaimCategory.INSTITUTION, ClaimCategory.PHARMACY})


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ConsumedOutput(BaseModel):
    """An output that another service consumes: like an input, it ignores fields it does not know,
    so that a release which adds a field never has its messages refused by the release before it."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# ---- inputs from provincial systems -------------------------------------------------------


class EnrollmentChanged(_Input):
    """`gongji.enrollment.v1`: a person's insurance relationship as the insured region records it."""

    event_id: InputId
    person_id: PersonId
    insurance_type: Literal["employee", "resident"]
    region: Region
    status: Literal["normal", "suspended", "terminated"]
    occurred_at: Timestamp


class AccountCredited(_Input):
    """`gongji.account-credits.v1`: money paid into an employee's personal account."""

    event_id: InputId
    person_id: PersonId
    amount_fen: PositiveFen
    occurred_at: Timestamp


class AccountSpent(_Input):
    """`gongji.account-spends.v1`: the employee spends their own account (never frozen funds)."""

    event_id: InputId
    person_id: PersonId
    amount_fen: PositiveFen
    occurred_at: Timestamp


class KinshipRecorded(_Input):
    """`gongji.kinship.v1`: civil-registry fact, *relative_id is person_id's kinship*."""

    event_id: InputId
    person_id: PersonId
    relative_id: PersonId
    kinship: Kinship
    occurred_at: Timestamp


class SupervisionActed(_Input):
    """`gongji.supervision.v1`: misuse freezes an account (rule 16); an unfreeze lifts one freeze.

    Each freeze stands on its own: the account stays frozen while any freeze stands. An unfreeze
    lifts the freeze whose `event_id` it names in `lifts`, or without `lifts` the oldest standing one."""

    event_id: InputId
    person_id: PersonId
    action: Literal["freeze", "unfreeze"]
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S")
    lifts: InputId | None = None
    occurred_at: Timestamp


class ClaimItem(_Input):
    code: str = Field(min_length=1, max_length=64)
    in_catalogue: bool
    amount_fen: PositiveFen


class Claim(_Input):
    """`gongji.claims.v1`: a settlement (`settle`) or a refund of a settled claim (`reverse`).

    `claim_id` names its sender: the service region, then for care at an institution or pharmacy
    its `institution_code`, then the sender's serial (`440300-H44030500012-000000871`, a premium
    `440300-<serial>`); a reversal's begins with the service region of the claim it reverses. A
    premium (`resident_premium`, `ltc_premium`) is owed to the recipient's insured province; a
    `resident_premium` only for the resident-insured. A claim that breaks the contract but whose id
    can be read is answered `rejected`, `INVALID_MESSAGE`, on its sender's settlements topics.
    `category` is a plain string on the wire so that an unknown use is refused with
    `CATEGORY_NOT_ALLOWED` (a business answer), not dead-lettered.
    """

    claim_id: InputId
    kind: Literal["settle", "reverse"] = "settle"
    recipient_id: PersonId
    recipient_region: Region | None = None
    category: str | None = Field(default=None, max_length=64)
    institution_code: str | None = Field(default=None, max_length=64)
    service_region: Region | None = None
    amount_fen: PositiveFen | None = None
    items: list[ClaimItem] | None = Field(default=None, max_length=1000)
    reverses: InputId | None = None
    occurred_at: Timestamp

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Claim:
        if self.kind == "settle":
            missing = [
                name
                for name in ("recipient_region", "category", "service_region", "amount_fen")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"a settle claim needs {', '.join(missing)}")
            # The code's letter tells a clinic from a pharmacy: without it a pharmacy could claim as
            # an institution and have items outside the catalogue paid.
            if self.category in CODED_CATEGORIES and self.institution_code is None:
                raise ValueError(f"a claim of category {self.category} needs institution_code")
            assert self.service_region is not None
            _check_claim_id(
                self.claim_id,
                claim_id_prefix(self.service_region, self.institution_code),
                "the service region, then the institution code (for care at an institution or pharmacy)",
            )
        elif self.reverses is None:
            raise ValueError("a reverse claim needs `reverses`: the claim_id it undoes")
        elif region := claim_id_region(self.reverses):
            _check_claim_id(self.claim_id, f"{region}-", "the service region its reversed claim's id begins with")
        elif claim_id_region(self.claim_id) is None:  # it reverses a claim recorded before the id rule
            raise ValueError(
                "claim_id must be <a service region>-<serial>: a region of the sender's, then the sender's own serial"
            )
        return self


def _check_claim_id(claim_id: str, prefix: str, what: str) -> None:
    """A claim id names who may use it (its service region and institution): one sent by anyone
    else is refused before the id is taken, so that the id stays its owner's."""
    if not claim_id.startswith(prefix) or len(claim_id) == len(prefix):
        raise ValueError(f"claim_id must be {prefix}<serial>: {what}, then the sender's own serial")


# ---- inputs from the app channel ----------------------------------------------------------


class RelationshipCommand(_Input):
    """`gongji.relationship-commands.v1`. `kinship` is what the recipient is to the provider;
    it is a plain string so that a relative who is not close is refused with `NOT_CLOSE_RELATIVE`."""

    command_id: InputId
    action: Literal["request", "accept", "decline", "dissolve"]
    actor_id: PersonId
    provider_id: PersonId
    recipient_id: PersonId
    recipient_region: Region | None = None
    kinship: str | None = Field(default=None, max_length=64)
    requested_at: Timestamp

    @model_validator(mode="after")
    def _request_is_complete(self) -> RelationshipCommand:
        if self.action == "request" and (self.recipient_region is None or self.kinship is None):
            raise ValueError("a request needs recipient_region and kinship")
        return self


class WalletCommand(_Input):
    """`gongji.wallet-commands.v1`: the provider sets quota for a recipient (irrevocable)."""

    command_id: InputId
    action: Literal["grant"]
    actor_id: PersonId
    provider_id: PersonId
    recipient_id: PersonId
    recipient_region: Region
    amount_fen: PositiveFen
    requested_at: Timestamp


# ---- outputs ------------------------------------------------------------------------------


class RelationshipEvent(_ConsumedOutput):
    """`gongji.relationship-events.v1`, keyed by provider_id."""

    event_id: str
    cause_id: str
    type: Literal["requested", "established", "rejected", "declined", "dissolved", "terminated"]
    provider_id: str
    recipient_id: str
    recipient_region: str | None = None
    kinship: str | None = None
    reason: ReasonCode | None = None
    # Every change of one (provider, recipient) pair gets the next version: a consumer applies an
    # event only if it is newer than what it holds, so a late, older event never undoes a newer one.
    version: int | None = None
    occurred_at: datetime


class WalletEvent(_Output):
    """`gongji.wallet-events.v1`, keyed by provider_id (the account holder). Balance and frozen
    are the account's after the change."""

    event_id: str
    cause_id: str
    type: Literal[
        "granted",
        "grant_rejected",
        "released",
        "credited",
        "spent",
        "spend_rejected",
        "debited",
        "refunded",
        "frozen",
        "unfrozen",
    ]
    provider_id: str
    recipient_id: str | None = None
    amount_fen: int
    balance_fen: int | None = None
    frozen_fen: int | None = None
    claim_id: str | None = None
    reason: ReasonCode | None = None
    # On `frozen`/`unfrozen`: how many supervision freezes stand after this one (0: free to use).
    standing_freezes: int | None = None
    # On `refunded`: where the money went back, the recipient's grant (the relationship it was drawn
    # under lasts) or the provider's account; the books of quotas follow it.
    refunded_to: Literal["grant", "account"] | None = None
    # The account's step number (from 1, never reused): one account's events come from several
    # consumers, so their order on the topic is not the order the steps were applied; this is.
    account_seq: int | None = None
    occurred_at: datetime


class Payer(_ConsumedOutput):
    provider_id: str
    provider_region: str
    amount_fen: int


class SettlementEvent(_Output):
    """`gongji.settlements.v1`, keyed by recipient_id. For a reversal, `claim_id` is the
    reversing claim's id, `reverses` the original's, and `paid_fen` what went back."""

    event_id: str
    cause_id: str
    claim_id: str
    recipient_id: str
    status: Literal["settled", "partial", "rejected", "reversed"]
    requested_fen: int
    paid_fen: int
    self_pay_fen: int
    payers: list[Payer]
    reason: ReasonCode | None = None
    category: str | None = None
    service_region: str | None = None
    reverses: str | None = None
    clearing_month: str | None = None
    settled_at: datetime
    # Why a claim that breaks the contract was refused (reason INVALID_MESSAGE or AMOUNT_OUT_OF_RANGE).
    error: str | None = None
    # The recipient's insured region (参保地区划), as the claim stated it. A reversal carries its
    # claim's category, service region and insured region.
    recipient_region: str | None = None
    # When the claim was sent (its Kafka record's time; of the first copy taken): the statistics'
    # latency is settled_at less this.
    claim_sent_at: datetime | None = None


class ClearingRow(_Output):
    """`gongji.clearing.v1`, keyed by month. `gross` rows: what payer_province's funds paid for
    care in payee_province in the month, less what reversals in the month took back; `net` rows:
    one per province, positive = it receives; they sum to 0. `claims` counts the claims paid in the
    month and `reversals` the reversals made in it, apart: a reversal of a claim of an earlier,
    closed month takes its amount back in the open month without changing any month's claims."""

    event_id: str
    month: str
    row: Literal["gross", "net"]
    payer_province: str | None = None
    payee_province: str | None = None
    province: str | None = None
    amount_fen: int
    claims: int
    reversals: int = 0
    closed_at: datetime


class DeadLetter(_Output):
    """`gongji.dead-letters.v1`, keyed by the source message's key. `event_id` is derived from
    (service, topic, partition, offset, and the message's place in a record that carries several:
    an internal hop's, one batch's for one partition): a record is dead-lettered under one id however
    often it is seen. Such a message's `error` starts with its place (`message 3 of the record: …`),
    and its `payload` and `source_key` are its own.
    `reason`: `INVALID_MESSAGE` (it breaks the contract, or it failed every try: `error` says how),
    `AMOUNT_OUT_OF_RANGE`, `CONFLICT` (its id was used before for other content), `INPUT_TOO_OLD`
    (outside its topic's window), or `CLAIM_TOO_OLD` (a draw or refund for a claim whose day's
    records may have left Redis: an operator's case). The operator
    reads them whole; each sender reads its own on its own topic, person ids masked
    (`gongji.province.PP.dead-letters.v1`, `gongji.registry.…`, `gongji.app.…`, `gongji.supervisor.…`)."""

    event_id: str | None = None
    source_topic: str
    partition: int
    offset: int
    error: str
    payload: str  # base64 of the raw value, its first 64 KiB when it is larger
    payload_bytes: int | None = None  # the raw value's size
    payload_sha256: str | None = None  # of the whole raw value
    at: datetime
    service: str
    source_key: str
    reason: ReasonCode = ReasonCode.INVALID_MESSAGE


class StatisticsCount(_Output):
    key: str
    count: int
    amount_fen: int


class LatencyBucket(_Output):
    """Results whose latency (settled_at less claim_sent_at) was at most `le_ms`, and more than
    the bucket below: bounds of two significant digits (1, 2, … 99, 100, 110, … 990, 1000, 1100, …)."""

    le_ms: int
    count: int


class StatisticsSnapshot(_Output):
    """`gongji.statistics.v1`, keyed by minute: the results and dead letters of one Asia/Shanghai
    minute so far, exact: folded from `gongji.settlements.v1` and `gongji.dead-letters.v1`, each
    event id once (its first copy's minute), the counts kept in Redis with the ids counted. A result
    counts in the minute of its `settled_at`. `instance` is always `gongji` (readers that sum over
    instances stay right). Of one minute, keep the snapshot with the highest `revision` (the results
    and dead letters counted in it so far: it only grows); one revision always has the same figures."""

    event_id: str
    instance: str
    minute: str
    by_status: list[StatisticsCount]
    by_category: list[StatisticsCount]
    by_province_pair: list[StatisticsCount]
    rejections_by_reason: list[StatisticsCount]
    published_at: datetime
    revision: int = 0
    # Reversals by the pair their claim paid across (payer province > service province): a month's
    # `by_province_pair` less these is the month's clearing, pair by pair.
    reversals_by_province_pair: list[StatisticsCount] = Field(default_factory=list)
    # Dead letters by the pattern of their source topic (`gongji.province.PP.claims.v1`); amount 0.
    dead_letters: list[StatisticsCount] = Field(default_factory=list)
    latency: list[LatencyBucket] = Field(default_factory=list)
    latency_p50_ms: int | None = None
    latency_p99_ms: int | None = None


class ReconciliationLine(_Output):
    """One line of a day's reconciliation: settlements (settled or partly, a count), their medical
    total (what was claimed) and the amount paid from mutual aid (个人账户共济支付), and refunds
    (reversals: a count, and what went back)."""

    key: str
    settlements: int = 0
    medical_fen: int = 0
    mutual_aid_fen: int = 0
    refunds: int = 0
    refunded_fen: int = 0


class ReconciliationSide(_Output):
    """A province's day from one side: as the service province (就医地: care given in it; the
    counter-province is the patient's insured province) or as the insured province (参保地: its
    insured patients' care; the counter-province is where it was given). By clearing type: 11
    outpatient (care at an institution), 21 inpatient (no claim says so yet: always 0), 41 pharmacy,
    99 other (the resident and long-term-care premiums)."""

    total: ReconciliationLine
    by_clearing_type: list[ReconciliationLine]
    by_counter_province: list[ReconciliationLine]


class ReconciliationDay(_Output):
    """`gongji.reconciliation.v1` (every province, the national platform's) and
    `gongji.province.PP.reconciliation.v1` (its own), keyed by province: a province's Asia/Shanghai
    day (对账), folded exactly from the settlements as the statistics are. A result counts on the day
    of its `settled_at`, a refund on the day of its reversal. `final` once the day has ended (and a
    minute more for results settled just before midnight); a later result of the day publishes it
    again. Of one (province, day), keep the highest `revision` (the results counted in it)."""

    event_id: str
    province: str
    day: str  # YYYY-MM-DD
    final: bool
    revision: int
    as_service: ReconciliationSide
    as_insured: ReconciliationSide
    published_at: datetime


# ---- internal saga between settlement and wallet ------------------------------------------


class ClaimContext(_ConsumedOutput):
    """What settlement needs to finish a claim, carried through the draw and echoed back by the
    wallet, so that finishing needs no read."""

    requested_fen: int
    service_region: str
    shortfall: ReasonCode | None = None
    # The Asia/Shanghai day (YYYYMMDD) the claim occurred: the bucket its record is kept in.
    claim_day: str = Field(pattern=r"^\d{8}$")


class DrawRequested(_ConsumedOutput):
    """Settlement asks wallet to pay `amount_fen` of claim `claim_id` from the recipient's grants."""

    request_id: str
    claim_id: str
    recipient_id: str
    amount_fen: int
    context: ClaimContext
    requested_at: datetime


class DrawAnswered(_ConsumedOutput):
    """Wallet's answer: what each provider's grant paid; the rest is self-pay."""

    event_id: str
    claim_id: str
    recipient_id: str
    requested_fen: int
    paid_fen: int
    payers: list[Payer]
    reason: ReasonCode | None = None
    context: ClaimContext
    answered_at: datetime


class RefundRequested(_ConsumedOutput):
    """Settlement tells wallet to put back what a reversed claim drew: it cannot be refused."""

    request_id: str
    claim_id: str
    original_claim_id: str
    recipient_id: str
    payers: list[Payer]
    requested_at: datetime
    # The Asia/Shanghai day (YYYYMMDD) the original claim occurred: the bucket its draw is kept in.
    claim_day: str = Field(pattern=r"^\d{8}$")
