"""The simulator's model, what its parts share: breaches, the books' records, and taking note of
what a handler did (gongji/simulation/model/__init__.py puts the parts together)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from gongji.simulation.cast import Cast
from shared.clock import Clock
from shared.contracts import (
    Claim,
    DrawAnswered,
    DrawRequested,
    ReasonCode,
    RefundRequested,
    RelationshipCommand,
    SettlementEvent,
    WalletCommand,
    WalletEvent,
)
from shared.policy import Policy
from shared.runtime import Delivery, Refused, ToTopic
from shared.settings import Settings

SHANGHAI = ZoneInfo("Asia/Shanghai")


def day_of(moment: datetime) -> str:
    """The Asia/Shanghai day of a moment, YYYYMMDD."""
    return moment.astimezone(SHANGHAI).strftime("%Y%m%d")


TIMES = {"occurred_at", "settled_at", "answered_at", "requested_at"}
WALLET_RELEVANT = ("established", "dissolved", "terminated")


class Breach(AssertionError):
    """An invariant that does not hold: its name (what shrinking keeps failing) and the evidence."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def require(condition: bool, invariant: str, detail: str | Callable[[], str]) -> None:
    if not condition:
        raise Breach(invariant, detail() if callable(detail) else detail)


@dataclass
class Account:
    credited: int = 0
    spent: int = 0
    paid: int = 0
    refunded: int = 0
    grants: dict[str, int] = field(default_factory=dict)  # recipient -> remaining quota, while related
    freezes: list[str] = field(default_factory=list)  # standing supervision freezes, oldest first
    grants_by_day: dict[str, int] = field(default_factory=dict)

    @property
    def balance(self) -> int:
        return self.credited - self.spent - self.paid + self.refunded

    @property
    def frozen(self) -> int:
        return sum(self.grants.values())


@dataclass
class WalletPair:
    """A relationship as the wallet holds it: the newest version applied, and whether it is active."""

    version: int = 0
    active: bool = False
    region: str = ""
    since: int | None = None  # the version that established it: a refund goes back to the grant only while it lasts


@dataclass
class Take:
    recipient: str
    amount: int
    since: int | None
    refunded_by: str | None = None


@dataclass
class Plan:
    providers: list[str]
    frozen: bool


@dataclass
class Answer:
    paid: int
    payers: list[tuple[str, int]]


@dataclass
class ClaimBook:
    claim_id: str
    kind: str
    recipient: str
    content: str
    status: str = "pending"
    requested: int = 0
    payable: int = 0
    service_region: str | None = None
    result: str = ""
    paid: int = 0
    payers: list[tuple[str, str, int]] = field(default_factory=list)
    owed: dict[str, int] = field(default_factory=dict)
    month: str | None = None
    reverses: str | None = None
    reversed_by: str | None = None
    province: str | None = None  # whose own topic sent it (None: the national one)
    occurred_at: datetime | None = None


@dataclass
class RelEnrollment:
    insurance_type: str
    region: str
    status: str
    generation: int


@dataclass
class RelPair:
    """A relationship as the relationship service decided it, from its events."""

    state: str = "none"  # none | pending | active
    version: int = 0
    wallet_version: int = 0  # the newest version the wallet must apply (established, dissolved, terminated)
    region: str = ""
    request_generation: int = 0  # the recipient's enrollment generation the request was decided on


def _identity(output: BaseModel) -> str:
    return getattr(output, "event_id", None) or output.request_id  # type: ignore[attr-defined]


def _distinct(outputs: list) -> list:
    """One of each: an input delivered twice in a batch answers twice with the same ids."""
    seen, distinct = set(), []
    for output in outputs:
        key = (output.reason, id(output.message)) if isinstance(output, Refused) else _identity(output)
        if key not in seen:
            seen.add(key)
            distinct.append(output)
    return distinct


# The brief's figures, written again here: the model keeps its own arithmetic (rule 9).
MOST_PER_GRANT_FEN = 200_000
MOST_GRANTS_A_DAY = 3


def _owed(payers, service_region: str) -> dict[str, int]:
    """Rule 15, the model's own: what each payer's province owes the service region's, cross-province only."""
    owed: dict[str, int] = defaultdict(int)
    for payer in payers:
        if payer.provider_region[:2] != service_region[:2]:
            owed[f"{payer.provider_region[:2]}>{service_region[:2]}"] += payer.amount_fen
    return dict(owed)


def _is_conflict(output) -> bool:
    return getattr(output, "reason", None) == ReasonCode.CONFLICT


def input_key(message: BaseModel | Delivery) -> tuple:
    if isinstance(message, Delivery):
        message = message.message
    if isinstance(message, (Claim, DrawRequested, DrawAnswered)):
        return (message.claim_id, message.recipient_id)
    if isinstance(message, RefundRequested):
        return (message.request_id,)
    if isinstance(message, (RelationshipCommand, WalletCommand)):
        return (message.command_id,)
    return (message.event_id,)  # type: ignore[attr-defined]


def output_key(inputs: set[tuple], output) -> tuple:
    """The input of the batch (`inputs`: their keys) that an output answers."""
    if isinstance(output, Refused):
        return input_key(output.message)
    if isinstance(output, (SettlementEvent, DrawRequested, DrawAnswered)):
        return (output.claim_id, output.recipient_id)
    if isinstance(output, RefundRequested):  # of a reversal, or of a draw answer that fits no claim
        reversal = (output.claim_id, output.recipient_id)
        return reversal if reversal in inputs else (output.original_claim_id, output.recipient_id)
    if isinstance(output, WalletEvent) and output.type == "debited":
        return (output.claim_id, output.recipient_id)
    return (output.cause_id,)


class ModelBase:
    """The model's state and what every service's part shares: taking note of a batch's outputs."""

    def __init__(self, cast: Cast, clock: Clock, shard_of: Callable[[str], str]) -> None:
        self.cast = cast
        self.clock = clock
        self.shard_of = shard_of
        self.policy = Policy()
        self.seen: dict[tuple[str, str, str], tuple[str, datetime]] = {}  # -> (content, when applied)
        self.outputs: dict[str, dict] = {}
        # wallet
        self.accounts: dict[str, Account] = defaultdict(Account)
        self.wallet_enrollment: dict[str, tuple[str, str, str]] = {}
        self.wallet_pairs: dict[tuple[str, str], WalletPair] = defaultdict(WalletPair)
        self.draw_order: dict[str, dict[str, int]] = defaultdict(dict)  # recipient -> provider -> first grant (ms)
        self.plans: dict[tuple[str, str], Plan] = {}
        self.answers: dict[tuple[str, str], Answer] = {}
        self.takes: dict[tuple[str, str], Take] = {}  # (claim, provider)
        self.refunds: dict[tuple[str, str], tuple[int, str]] = {}  # (refund id, provider) -> (amount, where to)
        # settlement
        self.settlement_enrollment: dict[str, tuple[str, str, str]] = {}
        self.owners: dict[str, tuple[str, str]] = {}  # claim id -> (recipient, the day its claim occurred)
        self.claims: dict[str, ClaimBook] = {}
        self.clearing: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.closed: dict[str, dict[str, int]] = {}
        # relationship
        self.rel_enrollment: dict[str, RelEnrollment] = {}
        self.pairs: dict[tuple[str, str], RelPair] = defaultdict(RelPair)
        # The idempotency window, the model's own reading of the settings and its own arithmetic.
        settings = Settings()
        self.window = timedelta(seconds=settings.claim_window_seconds)
        self.grace = timedelta(seconds=settings.claim_record_grace_seconds)
        self.skew = timedelta(seconds=settings.claim_clock_skew_seconds)
        # Every other input's: taken only within it; its id recognised at least this plus the grace.
        self.input_window = timedelta(seconds=settings.input_window_seconds)
        # How long an id is surely recognised after it is taken: the longer window and the grace.
        self.memory = max(self.window, self.input_window) + self.grace

    def too_old(self, occurred_at: datetime) -> bool:
        return occurred_at < self.clock.now() - self.window

    def kept_until(self, day: str) -> datetime:
        """When the records of claims that occurred on `day` leave Redis."""
        midnight = datetime.strptime(day, "%Y%m%d").replace(tzinfo=SHANGHAI)
        return midnight + timedelta(days=1) + self.window + self.grace

    def day_held(self, day: str) -> bool:
        """Whether the wallet still draws and refunds for claims of `day`: half the grace left."""
        return self.clock.now() < self.kept_until(day) - self.grace / 2

    def forget_expired(self) -> None:
        """After the clock moved: a claim whose day's records left Redis is forgotten, with its id's
        owner and its draw, as Redis forgot them."""
        gone = {claim_id for claim_id, (_, day) in self.owners.items() if self.kept_until(day) <= self.clock.now()}
        for claim_id in gone:
            del self.owners[claim_id]
            self.claims.pop(claim_id, None)
        for book in (self.plans, self.answers, self.takes):
            for key in [key for key in book if key[0] in gone]:
                del book[key]

    def a(self, person_id: str | None) -> str:
        return self.cast.alias(person_id)

    # ---- what the handlers did ------------------------------------------------------------

    def observe(self, inbox: str, batch: list[BaseModel | Delivery], outputs: list) -> None:
        """`batch`: what the handler took (Deliveries on the claim path), `outputs`: what it returned."""
        copies = [output for output in outputs if isinstance(output, ToTopic)]
        outputs = [output for output in outputs if not isinstance(output, ToTopic)]
        for copy in copies:
            self._province_copy(inbox, copy, outputs)
        for output in outputs:
            if not isinstance(output, Refused):
                self._same_id_same_content(output)
        inputs = {input_key(message) for message in batch}
        groups: dict[tuple, list] = defaultdict(list)
        for output in outputs:
            groups[output_key(inputs, output)].append(output)
        for item in batch:  # every claim id of the batch is registered before any claim is decided
            if isinstance(item, Delivery) and isinstance(claim := item.message, Claim):
                if not self.too_old(claim.occurred_at) and not self.misplaced(claim, item.topic.province):
                    self.owners.setdefault(claim.claim_id, (claim.recipient_id, day_of(claim.occurred_at)))
        explain = getattr(self, "_" + inbox.split("/")[0] + "_" + inbox.split("/")[1].replace("-", "_"))
        for message in batch:
            explain(message, groups.get(input_key(message), []))
        unexplained = set(groups) - inputs
        require(
            not unexplained, "unexplained-output", lambda: f"{inbox}: outputs for no input of the batch {unexplained}"
        )

    def _province_copy(self, inbox: str, copy: ToTopic, outputs: list) -> None:
        """A province's copy of an answer on its own topic: the same answer, the payers' ids masked."""
        answer = next(
            (output for output in outputs if getattr(output, "event_id", None) == copy.message.event_id), None
        )
        require(
            isinstance(answer, SettlementEvent)
            and isinstance(copy.message, SettlementEvent)
            and copy.message.model_dump(exclude={"payers"}) == answer.model_dump(exclude={"payers"})
            and [payer.amount_fen for payer in copy.message.payers] == [payer.amount_fen for payer in answer.payers]
            and not {payer.provider_id for payer in copy.message.payers}
            & {payer.provider_id for payer in answer.payers},
            "province-copy",
            lambda: f"{inbox}: {copy.topic.name} got {copy.message}, the answer is {answer}",
        )

    def _same_id_same_content(self, output: BaseModel) -> None:
        identity = _identity(output)
        content = output.model_dump(mode="json", exclude=TIMES)
        prior = self.outputs.setdefault(identity, content)
        require(
            prior == content,
            "output-id-collision",
            lambda: f"{type(output).__name__} {identity} was published with other content: {prior} / {content}",
        )

    def _outside_window(self, message: BaseModel) -> ReasonCode | None:
        """An input the window does not let in (a relationship event, internal, has none: it is
        ordered by its version)."""
        at = getattr(message, "requested_at", None) or message.occurred_at  # type: ignore[attr-defined]
        if at < self.clock.now() - self.input_window:
            return ReasonCode.INPUT_TOO_OLD
        return ReasonCode.INVALID_MESSAGE if at > self.clock.now() + self.skew else None

    def _fresh(self, inbox: str, scope: str, input_id: str, message: BaseModel, group: list) -> str:
        """New, a duplicate, a conflict, or refused: outside its window and not remembered. An id
        applied longer ago than the window and its grace may have been forgotten: the same id for
        other content may then be taken as new."""
        key, content, now = (inbox, scope, input_id), message.model_dump_json(), self.clock.now()
        # A relationship event (internal) has no window: it is ordered by its version.
        outside = inbox != "wallet/relationship-events" and self._outside_window(message) is not None
        prior = self.seen.get(key)
        if prior is not None and prior[0] == content:
            return "duplicate"  # its stored answer, however late
        forgotten = prior is None or (
            now - prior[1] > self.input_window + self.grace and not any(_is_conflict(output) for output in group)
        )
        if not forgotten:
            return "conflict"
        if outside:
            return "refused"
        self.seen[key] = (content, now)
        return "new"

    def _decided(self, inbox: str, scope: str, input_id: str, message: BaseModel, group: list) -> list | None:
        """The effect outputs of a new input; None for one refused as outside its window or as a
        conflict (each changing nothing) or a duplicate (its stored answer again)."""
        state = self._fresh(inbox, scope, input_id, message, group)
        if state == "refused":
            reason = self._outside_window(message)
            require(
                bool(group) and all(getattr(output, "reason", None) == reason for output in group),
                "input-window",
                lambda: (
                    f"{inbox}: {input_id!r} of {self.a(scope)} outside the window was not refused {reason}: {group}"
                ),
            )
            return None
        if state == "conflict":  # whatever else it did shows in the books
            require(
                any(_is_conflict(output) for output in group),
                "reused-id",
                f"{inbox}: id {input_id!r} of {self.a(scope)} reused for other content was not refused as CONFLICT",
            )
            return None
        if state == "duplicate":
            return None
        return [output for output in _distinct(group) if not _is_conflict(output)]

    def _one(self, effects: list, kind: type, what: str):
        found = [output for output in effects if isinstance(output, kind)]
        require(len(found) == 1, "answer", lambda: f"{what}: expected one {kind.__name__}, got {effects}")
        return found[0]
