"""The simulator's model (its own books, apart from the audit's): a plain model of every account, quota, draw, claim,
refund, clearing sum and relationship, updated from each input a handler consumed and the outputs
it produced (also the outputs of an instance that crashed before publishing them: its steps are
stored). Each decision of the system is checked where it is made — money only moves where the
rules allow, exactly as much as they say — and after every step the books are compared with what
Redis holds. Where the answer legitimately depends on order (which of two refusal reasons, which
instance wrote first) the model asserts the decision, never the wording."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel

from gongji.simulation.cast import Cast
from services.relationship.store import RelationshipStore
from services.settlement.handlers import claim_output_id
from services.settlement.store import SettlementStore
from services.wallet.domain import GrantLimits, account_breaches
from services.wallet.store import PREFIX as WALLET_PREFIX
from services.wallet.store import DrawPlan, WalletStore
from shared.clock import Clock, shanghai_day, shanghai_month
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    Claim,
    ClaimCategory,
    ClearingRow,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    KinshipRecorded,
    ReasonCode,
    RefundRequested,
    RelationshipCommand,
    RelationshipEvent,
    SettlementEvent,
    SupervisionActed,
    WalletCommand,
    WalletEvent,
)
from shared.ids import PROVINCE_CODES, province_of
from shared.policy import Policy
from shared.records import ClaimRecord
from shared.redis_functions import Step
from shared.runtime import Delivery, Refused, ToTopic

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


class Model:
    """What the rules say every account, quota, draw, claim and relationship must be now."""

    def __init__(self, cast: Cast, clock: Clock, shard_of: Callable[[str], str]) -> None:
        self.cast = cast
        self.clock = clock
        self.shard_of = shard_of
        self.policy = Policy()
        self.seen: dict[tuple[str, str, str], str] = {}
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
        self.owners: dict[str, str] = {}
        self.claims: dict[str, ClaimBook] = {}
        self.clearing: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.closed: dict[str, dict[str, int]] = {}
        # relationship
        self.rel_enrollment: dict[str, RelEnrollment] = {}
        self.pairs: dict[tuple[str, str], RelPair] = defaultdict(RelPair)

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
                if not self.misplaced(claim, item.topic.province):
                    self.owners.setdefault(claim.claim_id, claim.recipient_id)
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

    def _fresh(self, inbox: str, scope: str, input_id: str, message: BaseModel) -> str:
        content = message.model_dump_json()
        prior = self.seen.setdefault((inbox, scope, input_id), content)
        if prior is content:
            return "new"
        return "duplicate" if prior == content else "conflict"

    def _decided(self, inbox: str, scope: str, input_id: str, message: BaseModel, group: list) -> list | None:
        """The effect outputs of a new input; None for a duplicate (its stored answer again) or a
        conflict (which must be refused as one and change nothing)."""
        state = self._fresh(inbox, scope, input_id, message)
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

    def observe_plan(self, request: DrawRequested, plan: DrawPlan) -> None:
        """Instance A's first step of a draw (a rebalance mid-draw)."""
        if plan.answer is not None:
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
        taken = 0 if step.conflict else step.result["amount"]
        require(
            taken == expected,
            "paid-once",
            lambda: f"draw {request.claim_id}: {self.a(provider)} gave {taken}, books say {expected}",
        )

    def _wallet_draw_requests(self, request: DrawRequested, group: list) -> None:
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

    # ---- settlement -------------------------------------------------------------------------

    def _settlement_enrollment(self, change: EnrollmentChanged, group: list) -> None:
        effects = self._decided("settlement/enrollment", change.person_id, change.event_id, change, group)
        if effects is not None:
            self.settlement_enrollment[change.person_id] = (change.insurance_type, change.region, change.status)
            require(not effects, "answer", f"settlement enrollment {change.event_id}: {effects}")

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
        record = self.claims.get(claim.claim_id)
        if self.owners[claim.claim_id] != claim.recipient_id or (record and record.content != claim.model_dump_json()):
            require(
                any(_is_conflict(output) for output in group),
                "reused-id",
                lambda: f"{what}: its id is another's (owner {self.a(self.owners[claim.claim_id])}), yet {group}",
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
        if record is None or self.shard_of(record.recipient) != self.shard_of(answer.recipient_id):
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

    # ---- relationship ---------------------------------------------------------------------

    def _relationship_enrollment(self, change: EnrollmentChanged, group: list) -> None:
        effects = self._decided("relationship/enrollment", change.person_id, change.event_id, change, group)
        if effects is None:
            return
        person = change.person_id
        before = self.rel_enrollment.get(person)
        facts = (change.insurance_type, change.region, change.status)
        changed = before is None or (before.insurance_type, before.region, before.status) != facts
        generation = (before.generation if before else 0) + (1 if changed else 0)
        self.rel_enrollment[person] = RelEnrollment(*facts, generation)
        ending = (
            {pair for pair, held in self.pairs.items() if held.state != "none" and person in pair}
            if changed and before
            else set()
        )
        ended = {(e.provider_id, e.recipient_id) for e in effects}
        require(
            all(e.type == "terminated" and e.reason == ReasonCode.INSURANCE_CHANGED for e in effects)
            and ended == ending,
            "rule-7",
            lambda: (
                f"enrollment {change.event_id} of {self.a(person)} ended "
                f"{sorted(f'{self.a(p)}>{self.a(r)}' for p, r in ended)}, books: "
                f"{sorted(f'{self.a(p)}>{self.a(r)}' for p, r in ending)} must end"
            ),
        )
        for event in effects:
            self._change(event, "none")

    def _relationship_kinship(self, fact: KinshipRecorded, group: list) -> None:
        effects = self._decided("relationship/kinship", fact.person_id, fact.event_id, fact, group)
        require(not effects, "answer", f"kinship {fact.event_id}: {effects}")

    def _change(self, event: RelationshipEvent, state: str) -> None:
        pair = self.pairs[(event.provider_id, event.recipient_id)]
        require(
            event.version == pair.version + 1,
            "pair-version",
            lambda: (
                f"{event.type} {self.a(event.provider_id)}>{self.a(event.recipient_id)} has version "
                f"{event.version}; the pair was at {pair.version}"
            ),
        )
        pair.version, pair.state = event.version, state  # type: ignore[assignment]
        if event.type in WALLET_RELEVANT:
            pair.wallet_version = pair.version

    def _eligible(self, provider: str, recipient: str, region: str) -> bool:
        """Rules 3, 4 as the relationship service knows both parties (policy may race: the wallet holds it at grant)."""
        p, r = self.rel_enrollment.get(provider), self.rel_enrollment.get(recipient)
        return (
            p is not None
            and p.insurance_type == "employee"
            and p.status == "normal"
            and r is not None
            and r.status == "normal"
            and r.region == region
        )

    def _relationship_commands(self, command: RelationshipCommand, group: list) -> None:
        effects = self._decided("relationship/commands", command.provider_id, command.command_id, command, group)
        if effects is None:
            return
        provider, recipient = command.provider_id, command.recipient_id
        pair = self.pairs[(provider, recipient)]
        between = f"{self.a(provider)}>{self.a(recipient)}"
        what = f"{command.action} {command.command_id} {between} by {self.a(command.actor_id)}"
        types = [event.type for event in effects]
        require(
            types
            in (["requested"], ["established"], ["declined"], ["dissolved"], ["rejected"], ["rejected", "terminated"]),
            "answer",
            f"{what}: {types}",
        )
        first = effects[0]
        if first.type == "rejected":
            require(first.version is None, "pair-version", f"{what}: a refusal carries version {first.version}")
            if len(effects) == 2:
                require(pair.state == "pending", "relationship-decision", f"{what}: ended a {pair.state} request")
                self._change(effects[1], "none")
            return
        recipient_now = self.rel_enrollment.get(recipient)
        allowed = {
            "requested": command.action == "request"
            and command.actor_id == provider
            and pair.state == "none"
            and self._eligible(provider, recipient, command.recipient_region or ""),
            "established": command.action == "accept"
            and command.actor_id == recipient
            and pair.state == "pending"
            and recipient_now is not None
            and recipient_now.generation == pair.request_generation
            and self._eligible(provider, recipient, pair.region),
            "declined": command.action == "decline" and command.actor_id == recipient and pair.state == "pending",
            "dissolved": command.action == "dissolve"
            and command.actor_id in (provider, recipient)
            and pair.state != "none",
        }[first.type]
        require(
            allowed,
            "relationship-decision",
            lambda: (
                f"{what}: {first.type}, books: pair {pair.state}, provider {self.rel_enrollment.get(provider)}, "
                f"recipient {recipient_now}, requested for {pair.region} at generation {pair.request_generation}"
            ),
        )
        if first.type == "requested":
            pair.region = command.recipient_region or ""
            pair.request_generation = recipient_now.generation if recipient_now else 0
        self._change(first, {"requested": "pending", "established": "active"}.get(first.type, "none"))

    # ---- after every step: the books against what Redis holds ------------------------------

    async def check(
        self, wallet: WalletStore, relationships: RelationshipStore, settlement: SettlementStore, quiet: bool
    ) -> int:
        """Every invariant; `quiet`: nothing is in flight, so every saga has ended. Returns how many were checked."""
        people = [person.person_id for person in self.cast.people.values()]
        results = await asyncio.gather(
            self._check_accounts(wallet, people),
            self._check_relationships(wallet, relationships, people, quiet),
            self._check_claims(settlement, quiet),
            return_exceptions=True,
        )
        for result in results:  # the first breach in a fixed order, so that a replay names the same one
            if isinstance(result, BaseException):
                raise result
        return sum(results)  # type: ignore[arg-type]

    async def _check_accounts(self, wallet: WalletStore, people: list[str]) -> int:
        snapshots = await asyncio.gather(*(wallet.snapshot(person) for person in people))
        for snapshot in snapshots:
            breaches = account_breaches(snapshot)
            require(not breaches, "account", "; ".join(breaches))
            books = self.accounts.get(snapshot.person_id, Account())
            held = (
                snapshot.balance_fen,
                snapshot.frozen_fen,
                snapshot.credited_fen,
                snapshot.spent_fen,
                snapshot.paid_fen,
                snapshot.refunded_fen,
                snapshot.grants_fen,
            )
            kept = (books.balance, books.frozen, books.credited, books.spent, books.paid, books.refunded, books.grants)
            require(
                held == kept,
                "books",
                lambda: (
                    f"{self.a(snapshot.person_id)}: wallet holds balance, frozen, credited, spent, paid, refunded, "
                    "grants = "
                    f"{held[:6]} {self._aliased(held[6])}, the books {kept[:6]} {self._aliased(kept[6])}"
                ),
            )
            require(
                snapshot.grants_by_day == books.grants_by_day,
                "daily-count",
                lambda: (
                    f"{self.a(snapshot.person_id)}: grants by day {snapshot.grants_by_day}, books {books.grants_by_day}"
                ),
            )
        return 4 * len(snapshots)

    def _aliased(self, amounts: dict[str, int]) -> dict[str, int]:
        return {self.a(person): amount for person, amount in amounts.items()}

    async def _check_relationships(
        self, wallet: WalletStore, relationships: RelationshipStore, people: list[str], quiet: bool
    ) -> int:
        pairs = sorted(
            set(self.pairs) | {(self.cast.id(link.provider), self.cast.id(link.recipient)) for link in self.cast.links}
        )
        held_by_wallet, stored = await asyncio.gather(
            asyncio.gather(
                *(wallet.redis.hgetall(f"{WALLET_PREFIX}{{p:{person}}}:relationships") for person in people)
            ),
            asyncio.gather(*(relationships.relationship(*pair) for pair in pairs)),
        )
        for provider, held in zip(people, held_by_wallet, strict=True):
            active = {recipient.decode(): region.decode() for recipient, region in held.items()}
            kept = {
                recipient: pair.region
                for (p, recipient), pair in self.wallet_pairs.items()
                if p == provider and pair.active
            }
            require(
                active == kept,
                "wallet-relationships",
                lambda: (
                    f"{self.a(provider)}: the wallet holds {self._aliased(active)} active, books {self._aliased(kept)}"
                ),
            )
        for (provider, recipient), relationship in zip(pairs, stored, strict=True):
            kept = self.pairs.get((provider, recipient), RelPair())
            what = f"{self.a(provider)}>{self.a(recipient)}"
            if kept.state == "none":
                require(
                    relationship is None,
                    "relationship-state",
                    lambda: (
                        f"{what}: the relationship service holds {relationship}, its events ended it (v{kept.version})"
                    ),
                )
            else:
                require(
                    relationship is not None
                    and (relationship.state, relationship.recipient_region, relationship.version)
                    == (kept.state, kept.region, kept.version),
                    "relationship-state",
                    lambda: f"{what}: the relationship service holds {relationship}, its events say {kept}",
                )
                assert relationship is not None
                generation = self.rel_enrollment[recipient].generation
                require(
                    relationship.recipient_generation == generation,
                    "rule-7",
                    lambda: (
                        f"{what} is {kept.state}, decided on the recipient's enrollment generation "
                        f"{relationship.recipient_generation}; the recipient has changed since (now {generation})"
                    ),
                )
            in_wallet = self.wallet_pairs.get((provider, recipient), WalletPair())
            if quiet:
                require(
                    in_wallet.version == kept.wallet_version,
                    "relationship-delivery",
                    f"{what}: nothing in flight, yet the wallet applied v{in_wallet.version} of v{kept.wallet_version}",
                )
            if in_wallet.version == kept.wallet_version:
                require(
                    in_wallet.active == (kept.state == "active"),
                    "wallet-relationships",
                    lambda: (
                        f"{what}: active in the wallet {in_wallet.active}, in the relationship service {kept.state}"
                    ),
                )
        return len(people) + 2 * len(pairs)

    async def _check_claims(self, settlement: SettlementStore, quiet: bool) -> int:
        months = sorted(set(self.clearing) | set(self.closed))
        stored, accumulated = await asyncio.gather(
            self._stored_claims(settlement), asyncio.gather(*(settlement.accumulators(month) for month in months))
        )
        require(
            set(stored) == set(self.claims),
            "claims",
            lambda: (
                f"settlement holds claims {sorted(set(stored) - set(self.claims))} the books never saw and lacks "
                f"{sorted(set(self.claims) - set(stored))}"
            ),
        )
        takes_by_claim: dict[tuple[str, str], list[Take]] = defaultdict(list)
        for (claim_id, _), take in self.takes.items():
            takes_by_claim[(claim_id, take.recipient)].append(take)
        for claim_id, book in self.claims.items():
            record = stored[claim_id]
            result = record.result
            held = (
                record.recipient_id,
                record.kind,
                record.state == "pending",
                result.status if result else "",
                result.paid_fen if result else 0,
                [(p.provider_id, p.provider_region, p.amount_fen) for p in result.payers] if result else [],
                (result.month if result else None) or None,
                record.reversed_by,
            )
            kept = (
                book.recipient,
                book.kind,
                book.status == "pending",
                book.result,
                book.paid,
                book.payers,
                book.month,
                book.reversed_by,
            )
            require(held == kept, "claims", lambda: f"claim {claim_id}: settlement holds {held}, books {kept}")
            if book.kind != "settle":
                continue
            takes = takes_by_claim.pop((claim_id, book.recipient), [])
            drawn = sum(take.amount for take in takes)
            refunded = sum(take.amount for take in takes if take.refunded_by)
            if book.status == "pending":
                require(not quiet, "saga-ended", f"claim {claim_id}: still pending with nothing in flight")
                require(drawn <= book.payable, "paid-once", f"claim {claim_id}: drew {drawn} of {book.payable} asked")
            else:
                require(
                    drawn == book.paid, "paid-once", f"claim {claim_id}: settled {book.paid}, the wallet drew {drawn}"
                )
            require(
                refunded <= (book.paid if book.reversed_by else 0),
                "refunded-once",
                f"claim {claim_id}: refunded {refunded} of {book.paid} paid, reversed by {book.reversed_by}",
            )
            if quiet and book.reversed_by:
                require(
                    refunded == book.paid,
                    "refunded-once",
                    f"claim {claim_id}: reversed by {book.reversed_by}, yet only {refunded} of {book.paid} went back",
                )
        for (
            claim_id,
            recipient,
        ), takes in takes_by_claim.items():  # drawn for a claim never recorded for that recipient
            kept_back = sum(take.amount for take in takes if not take.refunded_by)
            require(
                not quiet or kept_back == 0,
                "unclaimed-draw",
                f"claim {claim_id} of {self.a(recipient)}: {kept_back} drawn for no recorded claim "
                "was never given back",
            )
        for month, totals in zip(months, accumulated, strict=True):
            kept_totals = {name: value for name, value in self.clearing[month].items()}
            require(
                totals == kept_totals,
                "clearing",
                lambda: f"{month}: the accumulators hold {totals}, the claims of the month add up to {kept_totals}",
            )
        return 3 * len(self.claims) + len(months)

    @staticmethod
    async def _stored_claims(settlement: SettlementStore) -> dict[str, ClaimRecord]:
        return {claim_id: record async for claim_id, record in settlement.all_claims()}
