"""The deep audit's rules: the books rebuilt from the topics against what Redis holds.

Pure. Redis may be ahead of the books, never behind them: the end offsets are taken before Redis is
read, and a service publishes an output only once its step is stored. What Redis holds that no
record read explains yet (a claim whose draw or result is on its way, a step whose event is not
published yet, a relationship change not yet taken in) is pending: reported with its ids, and the
checks it touches count it as Redis does. Everything else that differs is a difference.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from gongji.audit.books import ANSWERED_BY_WALLET, UNAPPLIED, Books, InputKey
from gongji.audit.opening import Opening, PairChange, PairState
from gongji.audit.rules import check_rules
from gongji.audit.spill import Shelf, models, tagged
from gongji.audit.state import TOTALS, RedisState, WalletAccount
from gongji.audit.window import Window
from services.settlement.domain import NATIONAL
from services.settlement.handlers import claim_output_id
from shared.contracts import REFUSED_BEFORE_ID, Payer, ReasonCode, RelationshipEvent, SettlementEvent, WalletEvent
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    CLAIMS,
    ENROLLMENT,
    RELATIONSHIP_COMMANDS,
    SUPERVISION,
    WALLET_COMMANDS,
)

# The invariants, as differences name them.
ACCOUNT = "account"  # balance, frozen quota, running totals and quotas per person
CLAIM = "claim"  # one result per claim; paid = Σ debits = Σ payers, each provider at most once
REFUND = "refund"  # a reversal gives back what was paid, once, to the provider for its recipient
RELATIONSHIP = "relationship"  # the relationship service and the wallet hold what the events say
CLEARING = "clearing"  # per month and province pair: accumulated = Σ settlements; statements; net rows sum to 0
ANSWER = "answer"  # every input answered once with its own figures; every answer names an input
REPUBLISHED = "republished"  # an output published again under its id must carry the same figures
HISTORY = "history"  # the topics must hold every record ever published, or the books cannot be rebuilt
IN_FLIGHT = "in-flight"  # what is pending lands within the audit's wait: a step stuck past it is a difference

PAID_STATUSES = frozenset({"settled", "partial"})
WALLET_RELATIONSHIP_TYPES = frozenset({"established", "dissolved", "terminated"})  # what the wallet applies
STATE_AFTER = {"requested": "pending", "established": "active"}  # any other change ends the pair
# The wallet event that answers each wallet input, and the input topic of each answer's type.
ANSWERED_TOPICS = frozenset({*ANSWERED_BY_WALLET.values(), CLAIMS.name, RELATIONSHIP_COMMANDS.name})
SUPERVISION_ANSWER = {"freeze": "frozen", "unfreeze": "unfrozen"}
UNREADABLE = frozenset({ReasonCode.INVALID_MESSAGE, ReasonCode.AMOUNT_OUT_OF_RANGE})  # a claim dead-lettered
# An input refused with one of these was not applied: the answer, if any, is another's (a reused id's
# first content, a copy's taken in within its window) or none (rules.py judges the window's refusals).


@dataclass(frozen=True)
class Difference:
    invariant: str
    what: str  # in words, without personal data
    ids: dict[str, str]  # what each id is -> the id (claim, provider, month, …)
    expected: Any
    found: Any


@dataclass(frozen=True)
class Pending:
    what: str
    ids: dict[str, str]


@dataclass
class AuditReport:
    differences: list[Difference]
    pending: list[Pending]
    counts: dict[str, int] = field(default_factory=dict)
    # The books' figures at the end of the records read (what Redis holds ahead of them left out):
    # the next checkpoint's opening, once the audit is clean.
    closing: Opening = field(default_factory=Opening)

    @property
    def valid(self) -> bool:
        return not self.differences

    @property
    def first(self) -> Difference | None:
        return self.differences[0] if self.differences else None


@dataclass(frozen=True)
class Effect:
    """A change of money in one account: a wallet event's, or a step Redis recorded."""

    kind: str  # credited | spent | granted | released | debited | refunded
    effect_id: str  # the input's id; for a debit or a refund, the claim's
    recipient: str | None
    amount: int
    to: str | None = None  # where a refund went back: grant or account

    @property
    def ids(self) -> dict[str, str]:
        return {"claim" if self.kind in ("debited", "refunded") else "input": self.effect_id}


class _Findings:
    def __init__(self) -> None:
        self.differences: list[Difference] = []
        self.pending: list[Pending] = []
        self.counts: Counter[str] = Counter()

    def differ(self, invariant: str, what: str, ids: dict[str, str], expected: Any, found: Any) -> None:
        self.differences.append(Difference(invariant, what, ids, expected, found))

    def pend(self, what: str, ids: dict[str, str]) -> None:
        self.pending.append(Pending(what, ids))


class _View:
    """The books and the state, indexed the ways the rules look them up."""

    def __init__(self, books: Books, state: RedisState, window: Window, opening: Opening) -> None:
        self.books = books
        self.state = state
        self.window = window
        self.opening = opening
        self.closing = Opening(records=opening.records + books.judged_records)
        # A claim's results are the books' settlements under its id; a provider's wallet events, theirs.
        self.debits: Shelf[WalletEvent] = models(books.spill, WalletEvent)  # by claim id
        self.refunds: Shelf[WalletEvent] = models(books.spill, WalletEvent)  # by claim id
        for event in books.wallet_events.values():
            if event.type == "debited":
                self.debits.add(event.claim_id or "", event)
            elif event.type == "refunded":
                self.refunds.add(event.claim_id or "", event)
        self.takes: Shelf[list[Any]] = Shelf(books.spill)  # claim id -> [provider, take]
        for provider, account in state.wallets.kept():
            for claim_id, take in account.takes.items():
                self.takes.add(claim_id, [provider, take])
        # The refund of a reversed claim is stored under the reversal's id (that of a draw for a claim
        # never recorded, under its own).
        self.refund_ids = {
            result.reverses: result.claim_id
            for result in books.settlements.values()
            if result.status == "reversed" and result.reverses
        }
        # Claims Redis holds as final whose result is not published yet: their money is counted as Redis has it.
        self.unpublished = {
            claim_id: record
            for claim_id, record in state.claims.kept()
            if record.get("status") == "final" and claim_id not in books.settlements
        }

    def claim_ids(self) -> Iterator[str]:
        """Every claim id the books or Redis name, in order."""
        sent = (key[2] for key in self.books.inputs.keys_under(CLAIMS.name))  # of one scope: in their ids' order
        return _union(sent, self.books.settlements.keys(), self.state.claims.keys())

    def sent(self, claim_id: str) -> bool:
        return (CLAIMS.name, NATIONAL, claim_id) in self.books.inputs

    def refusals(self, claim_id: str) -> list[SettlementEvent]:
        """The refusals before the id of claims sent under it and taken in (read, not broken)."""
        return [one for one in self.books.refused_before_id.get(claim_id) if one.reason not in UNREADABLE]

    def unanswered(self, claim_id: str) -> list[dict[str, Any]]:
        """The contents sent under a claim id that no refusal before the id answers: one of them
        must be recorded (a refusal answers only the claim whose figures it carries)."""
        refusals = self.refusals(claim_id)
        return [
            content
            for content in self.books.inputs.get((CLAIMS.name, NATIONAL, claim_id))
            if not any(
                content.get("recipient_id") == refusal.recipient_id
                and _answer_mismatch(CLAIMS.name, content, refusal) is None
                for refusal in refusals
            )
        ]

    def result(self, claim_id: str) -> SettlementEvent | None:
        return self.books.settlements.first(claim_id)

    def first_result(self, result: SettlementEvent) -> bool:
        """Whether it is its claim's result (the first published under its claim id)."""
        first = self.result(result.claim_id)
        return first is not None and first.event_id == result.event_id

    def results(self) -> Iterator[SettlementEvent]:
        """Each claim's result (the first published), in the claims' order."""
        for _, results in self.books.settlements.items():
            yield results[0]

    def occurred_at(self, result: SettlementEvent) -> datetime | None:
        """When the claim a result answers occurred (its records are kept by that day)."""
        contents = self.books.inputs.get((CLAIMS.name, NATIONAL, result.claim_id))
        sent = next((content for content in contents if content.get("recipient_id") == result.recipient_id), None)
        try:
            return datetime.fromisoformat(str(sent["occurred_at"])) if sent else None
        except (KeyError, ValueError):
            return None

    def wallet(self, person_id: str) -> WalletAccount:
        return self.state.wallets.first(person_id) or WalletAccount()

    def stored_refund(self, provider: str, claim_id: str) -> dict[str, Any] | None:
        refund_id = self.refund_ids.get(claim_id) or claim_output_id(claim_id, "unclaimed draw")
        return self.wallet(provider).refunds.get(refund_id)


def _union(*in_order: Iterable[Any]) -> Iterator[Any]:
    """Each value of sorted iterables once, in order, none held: `sorted(set().union(...))` streamed."""
    return (value for value, _ in groupby(heapq.merge(*in_order)))


def compare(books: Books, state: RedisState, window: Window, opening: Opening | None = None) -> AuditReport:
    """`opening`: the checkpoint's figures at the books' cut (rebuild's), else none: from scratch."""
    view = _View(books, state, window, opening or Opening())
    found = _Findings()
    for rule in (
        _history,
        _dead_lettered,
        _claims,
        _reversals,
        _accounts,
        _relationships,
        _clearing,
        _answers,
        _republished,
    ):
        rule(view, found)
    check_rules(books, found.differ, window, view.opening, view.closing)
    return AuditReport(found.differences, found.pending, _counts(view, found), view.closing)


def _counts(view: _View, found: _Findings) -> dict[str, int]:
    judged = Counter(result.status == "reversed" for result in view.results() if view.books.judged(result))
    view.closing.claims_final = view.opening.claims_final + judged[False]
    view.closing.reversals = view.opening.reversals + judged[True]
    months = (
        {month for month in view.books.clearing_rows.keys()}
        | {month for months in view.state.clearing.values() for month in months}
        | set(view.opening.clearing)
    )
    return {
        "records": sum(view.books.records.values()),  # read: after the checkpoint's cut, and the horizon before it
        "records_judged": view.books.judged_records,
        "records_in_books": view.closing.records,  # every record ever judged: the checkpoint's and these
        # Output records no service of this system wrote: not of the contract, or a statement of a
        # month its settlement never closed. Ignored, and counted.
        "foreign_records": sum(view.books.unreadable.values()) + found.counts["foreign_records"],
        "persons": sum(
            1 for _ in _union(view.state.wallets.keys(), view.books.wallet_events.keys(), sorted(view.opening.accounts))
        ),
        "claims_final": view.closing.claims_final,
        "claims_pending": found.counts["claims_pending"],
        "claims_expired": found.counts["claims_expired"],  # their records gone with their window
        "reversals": view.closing.reversals,
        "relationships": len(view.closing.pairs),
        "months": len(months),
        "differences": len(found.differences),
        "pending": len(found.pending),
    }


# ---- claims: one result each; paid = Σ debits = Σ payers ----------------------------------------


def _claims(view: _View, found: _Findings) -> None:
    for claim_id in view.claim_ids():
        results = view.books.settlements.get(claim_id)
        record = view.state.claims.first(claim_id)
        ids = {"claim": claim_id}
        if not results:
            if record is None and view.refusals(claim_id) and not view.unanswered(claim_id):
                continue  # every claim sent under it refused before the id was taken
            found.counts["claims_pending"] += 1
            if record is None:
                found.pend("claim not yet taken in by settlement", ids)
            elif record["status"] == "pending":
                found.pend("claim drawing: the wallet's answer is on its way", ids)
            else:
                found.pend("claim final in Redis, its result not yet published", ids)
            continue
        if not view.books.any_judged(results):
            continue  # judged by the audit that read it after its cut
        result = results[0]
        ids["recipient"] = result.recipient_id
        if len(results) > 1:
            found.differ(CLAIM, "a claim has more than one result", ids, 1, len(results))
        if record is None and (sent := view.occurred_at(result)) and view.window.left_redis(sent):
            found.counts["claims_expired"] += 1  # its record kept the window and its grace, and left
        elif record is None or record.get("status") != "final":
            found.differ(
                CLAIM,
                "a result published for a claim settlement does not hold as final",
                ids,
                "final",
                record["status"] if record else "no record",
            )
        elif (record["result"]["status"], record["result"]["paid"]) != (result.status, result.paid_fen):
            found.differ(
                CLAIM,
                "the published result differs from settlement's record",
                ids,
                record["result"]["paid"],
                result.paid_fen,
            )
        if result.status != "reversed":
            _paid_once(view, result, ids, found)


def _paid_once(view: _View, result: SettlementEvent, ids: dict[str, str], found: _Findings) -> None:
    payers = {payer.provider_id: payer.amount_fen for payer in result.payers}
    if len(payers) != len(result.payers):
        found.differ(CLAIM, "a provider is named twice among a claim's payers", ids, len(payers), len(result.payers))
    if sum(payers.values()) != result.paid_fen:
        found.differ(CLAIM, "the payers do not add up to what was paid", ids, result.paid_fen, sum(payers.values()))
    fitting = (
        "rejected" if result.paid_fen == 0 else "settled" if result.paid_fen == result.requested_fen else "partial"
    )
    if result.paid_fen > result.requested_fen or fitting != result.status:
        found.differ(CLAIM, "the status does not fit the amounts", ids, fitting, result.status)
    debits: dict[str, list[WalletEvent]] = defaultdict(list)
    for debit in view.debits.get(result.claim_id):
        debits[debit.provider_id].append(debit)
    takes = dict(view.takes.get(result.claim_id))
    for provider in sorted(set(payers) | set(debits)):
        by_provider = {**ids, "provider": provider}
        events = debits.get(provider, [])
        if not events and (takes.get(provider) or {}).get("amount") == payers.get(provider):
            continue  # drawn, its debit event on its way: the account's books count it as pending
        if len(events) > 1:
            found.differ(CLAIM, "a provider was debited more than once for a claim", by_provider, 1, len(events))
        debited = sum(event.amount_fen for event in events)
        if debited != payers.get(provider, 0):
            found.differ(
                CLAIM,
                "what the wallet debited differs from what settlement recorded",
                by_provider,
                payers.get(provider, 0),
                debited,
            )
        if any(event.recipient_id != result.recipient_id for event in events):
            found.differ(
                CLAIM,
                "a debit for the claim names another recipient",
                by_provider,
                result.recipient_id,
                next(event.recipient_id for event in events if event.recipient_id != result.recipient_id),
            )
    for provider, take in sorted(takes.items()):
        if take["recipient"] == result.recipient_id and take["amount"] != payers.get(provider, 0):
            found.differ(
                CLAIM,
                "what the wallet holds as drawn differs from what settlement recorded",
                {**ids, "provider": provider},
                payers.get(provider, 0),
                take["amount"],
            )


# ---- reversals: what was paid goes back, once, to the providers for the claim's recipient --------


def _reversals(view: _View, found: _Findings) -> None:
    reversals = models(view.books.spill, SettlementEvent)  # by the claim reversed, as first published
    for result in view.books.settlements.values():
        if result.status == "reversed" and view.first_result(result):
            reversals.add(result.reverses or "", result)
    for original_id, of_original in reversals.items():
        if not view.books.any_judged(of_original):
            continue  # judged by the audit that read it after its cut
        reversal = of_original[0]
        ids = {"claim": original_id, "reversal": reversal.claim_id, "recipient": reversal.recipient_id}
        if len(of_original) > 1:
            found.differ(REFUND, "a claim was reversed more than once", ids, 1, len(of_original))
        original = view.result(original_id)
        if original is None or original.status not in PAID_STATUSES or original.recipient_id != reversal.recipient_id:
            found.differ(
                REFUND,
                "a reversal of no paid claim of its recipient",
                ids,
                "a paid claim of the recipient",
                original.status if original else "no result",
            )
            continue
        if reversal.paid_fen != original.paid_fen:
            found.differ(
                REFUND, "a reversal gives back other than what was paid", ids, original.paid_fen, reversal.paid_fen
            )
        _refunded_once(view, original, ids, found)
    for claim_id in _union(view.refunds.keys(), view.debits.keys()):
        if claim_id in reversals:
            continue
        refunds = view.refunds.get(claim_id)
        judged = view.books.any_judged((*refunds, *view.debits.get(claim_id)))
        if view.result(claim_id) or claim_id in view.state.claims or view.sent(claim_id):
            # (A reversal settlement holds as made, whose result is on its way, is pending under claims.)
            reversed_in_redis = (view.state.claims.first(claim_id) or {}).get("reversed_by")
            if judged and refunds and not reversed_in_redis:
                found.differ(
                    REFUND,
                    "a refund for a claim that was not reversed",
                    {"claim": claim_id},
                    0,
                    sum(event.amount_fen for event in refunds),
                )
        else:
            _unclaimed_draw_given_back(view, claim_id, found, judged)


def _refunded_once(view: _View, original: SettlementEvent, ids: dict[str, str], found: _Findings) -> None:
    paid = {payer.provider_id: payer.amount_fen for payer in original.payers}
    refunds: dict[str, list[WalletEvent]] = defaultdict(list)
    for refund in view.refunds.get(original.claim_id):
        refunds[refund.provider_id].append(refund)
    for provider in sorted(set(paid) | set(refunds)):
        by_provider = {**ids, "provider": provider}
        events = refunds.get(provider, [])
        if not events:
            stored = view.stored_refund(provider, original.claim_id)
            if stored is None:
                found.pend("refund on its way to the wallet", by_provider)
            elif stored["amount"] == 0:
                found.differ(REFUND, "a refund gave nothing back", by_provider, paid[provider], 0)
            continue  # applied, its event on its way: the account's books count it as pending
        if len(events) > 1:
            found.differ(REFUND, "a provider was refunded more than once for a claim", by_provider, 1, len(events))
        refunded = sum(event.amount_fen for event in events)
        if refunded != paid.get(provider, 0):
            found.differ(
                REFUND, "refunded differs from what the provider paid", by_provider, paid.get(provider, 0), refunded
            )
        if any(event.recipient_id != original.recipient_id for event in events):
            found.differ(
                REFUND,
                "a refund went to the quota of another recipient",
                by_provider,
                original.recipient_id,
                next(event.recipient_id for event in events if event.recipient_id != original.recipient_id),
            )


def _unclaimed_draw_given_back(view: _View, claim_id: str, found: _Findings, judged: bool) -> None:
    """Money drawn for a claim settlement never recorded is given back at once (in full)."""
    debited: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    for debit in view.debits.get(claim_id):
        debited[debit.provider_id] += debit.amount_fen
    for refund in view.refunds.get(claim_id):
        refunded[refund.provider_id] += refund.amount_fen
    for provider in sorted(set(debited) | set(refunded)):
        ids = {"claim": claim_id, "provider": provider}
        if refunded[provider] > debited[provider] and judged:
            found.differ(
                REFUND, "more given back than a never-recorded claim drew", ids, debited[provider], refunded[provider]
            )
        elif refunded[provider] < debited[provider] and view.stored_refund(provider, claim_id) is None:
            found.pend("draw for a claim never recorded, to be given back", ids)


# ---- accounts: balance, frozen quota and quotas per person ---------------------------------------


def _event_effect(view: _View, event: WalletEvent) -> Effect | None:
    if event.type in ("credited", "spent"):
        return Effect(event.type, event.cause_id, None, event.amount_fen)
    if event.type in ("granted", "released"):
        return Effect(event.type, event.cause_id, event.recipient_id, event.amount_fen)
    if event.type == "debited":
        return Effect("debited", event.claim_id or "", event.recipient_id, event.amount_fen)
    if event.type == "refunded":
        # A refund published before events said where it went: as the wallet stored it.
        to = event.refunded_to or (view.stored_refund(event.provider_id, event.claim_id or "") or {}).get("to")
        return Effect("refunded", event.claim_id or "", event.recipient_id, event.amount_fen, to)
    return None


def _stored_effects(account: WalletAccount) -> list[Effect]:
    """The money steps Redis recorded for one account, by the ids the events carry."""
    effects = []
    for topic, kind in (
        ("credits", "credited"),
        ("spends", "spent"),
        ("commands", "granted"),
        ("relationship-events", "released"),
    ):
        effects += [
            Effect(kind, input_id, result.get("recipient"), result["amount"])
            for input_id, result in account.applied.get(topic, {}).items()
            if result.get("type") == kind
        ]
    for claim_id, take in account.takes.items():
        if take["amount"] > 0:
            effects.append(Effect("debited", claim_id, take["recipient"], take["amount"]))
        if take.get("refunded_by"):
            effects.append(
                Effect(
                    "refunded",
                    claim_id,
                    take["recipient"],
                    take["amount"],
                    (account.refunds.get(take["refunded_by"]) or {}).get("to"),
                )
            )
    return effects


def _accounts(view: _View, found: _Findings) -> None:
    opening = view.opening
    for person in _union(
        view.state.wallets.keys(), view.books.wallet_events.keys(), sorted({*opening.accounts, *opening.quotas})
    ):
        account = view.wallet(person)
        sums, quotas = Counter(opening.accounts.get(person, {})), Counter(opening.quotas.get(person, {}))
        published = set()
        for event in view.books.wallet_events.get(person):
            if (effect := _event_effect(view, event)) is not None:
                published.add((effect.kind, effect.effect_id))
                if view.books.judged(event):
                    _add_effect(sums, quotas, effect)
        view.closing.accounts[person], view.closing.quotas[person] = Counter(sums), Counter(quotas)
        for effect in _stored_effects(account):
            if (effect.kind, effect.effect_id) not in published:
                found.pend(f"{effect.kind} in Redis, its event not yet published", {"person": person, **effect.ids})
                _add_effect(sums, quotas, effect)
        _account_books(person, account, sums, quotas, found)


def _add_effect(sums: Counter[str], quotas: Counter[str], effect: Effect) -> None:
    sums[effect.kind] += effect.amount
    change = {"granted": 1, "released": -1, "debited": -1, "refunded": 1 if effect.to == "grant" else 0}.get(
        effect.kind, 0
    )
    if change:
        quotas[effect.recipient or ""] += change * effect.amount


def _account_books(
    person: str, account: WalletAccount, sums: Counter[str], quotas: Counter[str], found: _Findings
) -> None:
    expected = {
        "credited": sums["credited"],
        "spent": sums["spent"],
        "paid": sums["debited"],
        "refunded": sums["refunded"],
        "balance": sums["credited"] - sums["spent"] - sums["debited"] + sums["refunded"],
        "frozen": sum(quotas.values()),
    }
    if not 0 <= expected["frozen"] <= expected["balance"]:  # rule 8: quota is frozen out of the account
        found.differ(
            ACCOUNT,
            "the books freeze more than the balance, or hold a balance below zero",
            {"person": person},
            f"0 <= frozen <= balance {expected['balance']}",
            expected["frozen"],
        )
    for recipient, quota in sorted(quotas.items()):
        if quota < 0:
            found.differ(
                ACCOUNT,
                "the books hold a quota below zero",
                {"provider": person, "recipient": recipient},
                ">= 0",
                quota,
            )
    for name in TOTALS:
        if account.totals.get(name, 0) != expected[name]:
            found.differ(
                ACCOUNT,
                f"{name} differs from the books",
                {"person": person},
                expected[name],
                account.totals.get(name, 0),
            )
    for recipient in sorted(set(quotas) | set(account.grants)):
        if account.grants.get(recipient, 0) != quotas[recipient]:
            found.differ(
                ACCOUNT,
                "a quota differs from the books",
                {"provider": person, "recipient": recipient},
                quotas[recipient],
                account.grants.get(recipient, 0),
            )


# ---- relationships: the same state in the relationship service and the wallet -------------------


def _relationships(view: _View, found: _Findings) -> None:
    wallet_pairs = {
        (provider, recipient)
        for provider, account in view.state.wallets.kept()
        for recipient in (*account.relationships, *account.relationship_versions)
    }
    for pair in sorted(
        set(_changed_pairs(view.books))
        | set(view.state.relationships)
        | set(view.state.relationship_versions)
        | wallet_pairs
        | set(view.opening.pairs)
    ):
        history = sorted(_changes(view.books, pair), key=lambda event: _change_order(view.books, event))
        ids = {"provider": pair[0], "recipient": pair[1]}
        versions = Counter(event.version for event in history if event.version is not None)
        twice = [count for version, count in versions.items() if count > 1 and _judged_version(view, history, version)]
        if twice:
            found.differ(RELATIONSHIP, "two changes of a pair carry one version", ids, 1, max(twice))
        folded = view.opening.pairs.get(pair, PairState())
        state = PairState(
            _newer(folded.newest, history),
            _newer(folded.wallet, [event for event in history if event.type in WALLET_RELATIONSHIP_TYPES]),
            folded.established or any(event.type == "established" for event in history),
        )
        if state.newest or state.established:
            view.closing.pairs[pair] = state
        _relationship_service(view, pair, state.newest, ids, found)
        _wallet_relationship(view, pair, state.wallet, ids, found)


def _changes(books: Books, pair: tuple[str, str]) -> list[RelationshipEvent]:
    return [
        event for event in books.relationship_events.get(pair) if event.type != "rejected"
    ]  # a refusal changes no pair


def _changed_pairs(books: Books) -> Iterator[tuple[str, str]]:
    for pair, events in books.relationship_events.items():
        if any(event.type != "rejected" for event in events):
            yield pair


def _judged_version(view: _View, history: list[RelationshipEvent], version: int) -> bool:
    return view.books.any_judged(event for event in history if event.version == version)


def _newer(folded: PairChange | None, history: list[RelationshipEvent]) -> PairChange | None:
    """A pair's newest change: the last one read, unless the checkpoint's carries a later version."""
    if not history:
        return folded
    last = history[-1]
    if folded and folded.version is not None and (last.version is None or last.version < folded.version):
        return folded
    return PairChange(last.type, last.version, last.recipient_region)


def _change_order(books: Books, event: RelationshipEvent) -> tuple[bool, int]:
    """A change carries the pair's version; the oldest events, from before versions, keep the order read."""
    return (
        event.version is not None,
        event.version if event.version is not None else books.offsets.first(event.event_id) or 0,
    )


def _relationship_service(
    view: _View, pair: tuple[str, str], newest: PairChange | None, ids: dict[str, str], found: _Findings
) -> None:
    published = newest.version if newest and newest.version is not None else 0
    held = view.state.relationship_versions.get(pair, 0)
    if held > published:
        found.pend("relationship change in the relationship service, its event not yet published", ids)
    elif held < published:
        found.differ(
            RELATIONSHIP, "the relationship service holds an older version than its events", ids, published, held
        )
    else:
        expected = STATE_AFTER.get(newest.type, "ended") if newest else "ended"
        stored = view.state.relationships.get(pair)
        holds = stored["state"] if stored else "ended"
        if holds != expected:
            found.differ(
                RELATIONSHIP, "the relationship service holds another state than its events", ids, expected, holds
            )


def _wallet_relationship(
    view: _View, pair: tuple[str, str], newest: PairChange | None, ids: dict[str, str], found: _Findings
) -> None:
    provider, recipient = pair
    account = view.wallet(provider)
    published = newest.version if newest and newest.version is not None else 0
    held = account.relationship_versions.get(recipient, 0)
    if held > published:
        found.pend("relationship change taken in by the wallet after the records read", ids)
        return
    if held < published:
        found.pend("relationship change not yet taken in by the wallet", ids)
        return
    active = newest is not None and newest.type == "established"
    holds = "active" if recipient in account.relationships else "ended"
    if holds != ("active" if active else "ended"):
        found.differ(
            RELATIONSHIP,
            "the wallet holds another relationship state than the relationship service",
            ids,
            "active" if active else "ended",
            holds,
        )
    elif active and newest and account.relationships[recipient] != newest.region:
        found.differ(
            RELATIONSHIP,
            "the wallet holds another region for the recipient",
            ids,
            newest.region,
            account.relationships[recipient],
        )
    if not active and account.grants.get(recipient, 0):
        found.differ(
            RELATIONSHIP, "a quota stands for a relationship that has ended", ids, 0, account.grants[recipient]
        )


# ---- clearing: per month and province pair, accumulated = Σ settlements -------------------------


def _clearing(view: _View, found: _Findings) -> None:
    books: dict[str, Counter[str]] = defaultdict(Counter, {m: Counter(t) for m, t in view.opening.clearing.items()})
    for result in view.results():
        if view.books.judged(result) and (counted := _clearing_of(view, result)):
            month, owed, sign = counted
            _accumulate(books[month], owed, sign)
    view.closing.clearing = {month: Counter(totals) for month, totals in books.items()}
    for record in view.unpublished.values():  # counted as Redis counted them; reported pending under claims
        result = record["result"]
        if result.get("owed"):
            _accumulate(books[result["month"]], result["owed"], 1 if record["kind"] == "settle" else -1)
    months = set(books) | {month for months in view.state.clearing.values() for month in months}
    for month in sorted(months):
        _same_lines(
            month,
            _lines(books[month]),
            _lines(view.state.accumulators(month)),
            "accumulated differs from the settlements of the month",
            found,
        )
    _statements(view, books, found)
    for shard, closed_months in sorted(view.state.closed.items()):
        for month, closed in sorted(closed_months.items()):
            now = view.state.clearing.get(shard, {}).get(month, {})
            if {k: v for k, v in closed.items() if v} != {k: v for k, v in now.items() if v}:
                found.differ(
                    CLEARING,
                    "a month changed after it was closed",
                    {"month": month, "shard": str(shard)},
                    _lines(closed),
                    _lines(now),
                )


def _clearing_of(view: _View, result: SettlementEvent) -> tuple[str, dict[str, int], int] | None:
    """A paid claim adds its cross-province amounts in its month; a reversal takes its claim's back."""
    if result.status in PAID_STATUSES and result.service_region:
        return result.clearing_month or "", _cross_province(result.payers, result.service_region), 1
    original = view.result(result.reverses or "") if result.status == "reversed" else None
    if original and original.service_region:
        return result.clearing_month or "", _cross_province(result.payers, original.service_region), -1
    return None


def _cross_province(payers: list[Payer], service_region: str) -> dict[str, int]:
    """Rule 15, the audit's own: what each payer's province owes the service region's, cross-province only."""
    owed: Counter[str] = Counter()
    for payer in payers:
        if payer.provider_region[:2] != service_region[:2]:
            owed[f"{payer.provider_region[:2]}>{service_region[:2]}"] += payer.amount_fen
    return dict(owed)


def _accumulate(month: Counter[str], owed: dict[str, int], sign: int) -> None:
    count = "#claims" if sign == 1 else "#reversals"
    for pair, amount in owed.items():
        month[pair] += sign * amount
        month[pair + count] += 1


Line = tuple[int, int, int]  # amount, claims, reversals of one province pair in one month


def _lines(totals: dict[str, int]) -> dict[str, Line]:
    """A month's totals (`"44>51"`: fen, `"44>51#claims"`, `"44>51#reversals"`) per province pair;
    a pair with nothing in the month is left out."""
    lines = {
        pair: (amount, totals.get(f"{pair}#claims", 0), totals.get(f"{pair}#reversals", 0))
        for pair, amount in totals.items()
        if "#" not in pair
    }
    return {pair: line for pair, line in sorted(lines.items()) if any(line)}


def _same_lines(
    month: str, expected: dict[str, Line], found_lines: dict[str, Line], what: str, found: _Findings
) -> None:
    for pair in sorted(set(expected) | set(found_lines)):
        if not _counted_alike(expected.get(pair, (0, 0, 0)), found_lines.get(pair, (0, 0, 0))):
            found.differ(CLEARING, what, {"month": month, "pair": pair}, expected.get(pair), found_lines.get(pair))


def _counted_alike(expected: Line, held: Line) -> bool:
    """The amount, and the claims less the reversals, always; the counts apart too, unless the month
    was counted by the release before reversals were counted apart (it took a reversal off `claims`
    and counted none)."""
    (amount, claims, reversals), (held_amount, held_claims, held_reversals) = expected, held
    return (
        amount == held_amount
        and claims - reversals == held_claims - held_reversals
        and held_reversals in (0, reversals)
    )


def _statements(view: _View, books: dict[str, Counter[str]], found: _Findings) -> None:
    """A published statement is the month's settlements: gross rows per pair, net rows summing to zero.
    A statement of a month this system's settlement never closed is none of its own (counted apart)."""
    closed_months = {month for months in view.state.closed.values() for month in months}
    rows_by_month = defaultdict(list)
    for row in view.books.clearing_rows.values():
        if not view.books.judged(row):
            continue  # judged by the audit that read it after its cut
        if row.month in closed_months:
            rows_by_month[row.month].append(row)
        else:
            found.counts["foreign_records"] += 1
    for month, rows in sorted(rows_by_month.items()):
        _same_lines(
            month,
            _lines(books[month]),
            {
                f"{row.payer_province}>{row.payee_province}": (row.amount_fen, row.claims, row.reversals)
                for row in rows
                if row.row == "gross"
            },
            "a statement's gross row differs from the settlements of the month",
            found,
        )
        net = {row.province or "": row.amount_fen for row in rows if row.row == "net"}
        if sum(net.values()):
            found.differ(CLEARING, "a statement's net rows do not sum to zero", {"month": month}, 0, sum(net.values()))
        positions: Counter[str] = Counter()
        for pair, (amount, _, _) in _lines(books[month]).items():
            positions[pair[3:]] += amount  # the payee receives
            positions[pair[:2]] -= amount  # the payer pays
        for province in sorted(set(positions) | set(net)):
            if positions.get(province, 0) != net.get(province, 0):
                found.differ(
                    CLEARING,
                    "a statement's net row differs from the settlements of the month",
                    {"month": month, "province": province},
                    positions.get(province, 0),
                    net.get(province, 0),
                )


# ---- answers: every input answered once, with its figures ----------------------------------------


def _answers(view: _View, found: _Findings) -> None:
    answers = tagged(view.books.spill, WalletEvent, SettlementEvent, RelationshipEvent)  # by input
    # Inputs answered though not applied: refused as outside their window (rules.py judges the
    # refusal), or as a conflict (the id was taken before, its answer with it: from a checkpoint,
    # maybe before what was read).
    refused: set[InputKey] = set()
    for event in view.books.wallet_events.values():
        if event.type in ANSWERED_BY_WALLET and event.reason not in UNAPPLIED:
            answers.add((ANSWERED_BY_WALLET[event.type], event.provider_id, event.cause_id), event)
        elif event.type in ANSWERED_BY_WALLET:
            refused.add((ANSWERED_BY_WALLET[event.type], event.provider_id, event.cause_id))
    for result in view.books.settlements.values():
        answers.add((CLAIMS.name, NATIONAL, result.claim_id), result)
    for refusal in view.books.refused_before_id.values():
        key = (CLAIMS.name, NATIONAL, refusal.claim_id)
        if not view.books.judged(refusal):
            continue  # judged by the audit that read it after its cut
        if (refusal.status, refusal.paid_fen, refusal.payers) != ("rejected", 0, []):
            found.differ(
                ANSWER,
                "a refusal before the claim id was taken pays or names payers",
                _input_ids(key),
                "rejected, nothing paid",
                f"{refusal.status}, {refusal.paid_fen} paid",
            )
        elif refusal.reason in UNREADABLE:
            if refusal.claim_id not in view.books.dead_lettered_claims:
                found.differ(
                    ANSWER,
                    "a refusal of a broken claim names no dead-lettered claim",
                    _input_ids(key),
                    "a dead letter of a claim with this id",
                    "none",
                )
        elif _standing_input(view.books, key, refusal) is None:
            found.differ(
                ANSWER,
                "a refusal describes no claim sent under its id",
                _input_ids(key),
                "a claim of its figures",
                "none",
            )
    for change in view.books.relationship_events.values():
        if change.reason not in UNAPPLIED:
            answers.add(_relationship_cause(view.books, change), change)
        else:
            refused.add(_relationship_cause(view.books, change))
    for key, events in answers.items():
        if not view.books.any_judged(events):
            continue  # judged by the audit that read them after its cut
        topic = key[0]
        # An accept refused for a changed insurance also ends the request: two answers. An enrollment
        # change ends every relationship of the person.
        ends_request = topic == RELATIONSHIP_COMMANDS.name and {e.type for e in events} == {"rejected", "terminated"}
        if topic != ENROLLMENT.name and len(events) > (2 if ends_request else 1):
            found.differ(ANSWER, "an input has more than one answer", _input_ids(key), 1, len(events))
        for event in filter(view.books.judged, events):
            content = _standing_input(view.books, key, event)
            if content is None:
                found.differ(ANSWER, "an output names no input", _input_ids(key), "an input", "none")
            elif mismatch := _answer_mismatch(topic, content, event):
                figure, expected, answered = mismatch
                found.differ(
                    ANSWER, f"an answer's {figure} differs from its input's", _input_ids(key), expected, answered
                )
    for key in view.books.inputs.keys():
        if key[0] == CLAIMS.name and key not in answers and view.refusals(key[2]) and not view.unanswered(key[2]):
            continue  # every claim sent under the id was refused before it was taken
        if key[0] in ANSWERED_TOPICS and key not in answers and key not in refused:
            found.pend("input not yet answered", _input_ids(key))


def _input_ids(key: InputKey) -> dict[str, str]:
    topic, scope, input_id = key
    return {"topic": topic, "input": input_id} | ({} if scope == NATIONAL else {"person": scope})


def _relationship_cause(books: Books, change: RelationshipEvent) -> InputKey:
    """A change answers a command of the provider, or ends the pair on an enrollment change of either party."""
    for scope in (change.provider_id, change.recipient_id):
        if change.type == "terminated" and books.input((ENROLLMENT.name, scope, change.cause_id)) is not None:
            return (ENROLLMENT.name, scope, change.cause_id)
    return (RELATIONSHIP_COMMANDS.name, change.provider_id, change.cause_id)


def _standing_input(books: Books, key: InputKey, answer: Any) -> dict[str, Any] | None:
    """The content an answer is for: the first taken in; for a claim id, one its recipient sent with
    the answer's figures, else the first its recipient sent (claim ids are national: another
    recipient's use of the id is refused; and which of the claims topics was read first is no
    order of sending)."""
    if key[0] != CLAIMS.name:
        return books.input(key)
    own = [content for content in books.inputs.get(key) if content.get("recipient_id") == answer.recipient_id]
    alike = next((content for content in own if _answer_mismatch(CLAIMS.name, content, answer) is None), None)
    if alike is not None or (isinstance(answer, SettlementEvent) and answer.reason in REFUSED_BEFORE_ID):
        return alike  # a refusal before the id describes only a claim of its own figures
    return own[0] if own else None


def _answer_mismatch(topic: str, content: dict[str, Any], answer: Any) -> tuple[str, Any, Any] | None:
    """(the figure, the input's, the answer's) for the first figure that differs, or None."""
    pairs: list[tuple[str, Any, Any]] = []
    if topic in (ACCOUNT_CREDITS.name, ACCOUNT_SPENDS.name, WALLET_COMMANDS.name):
        pairs.append(("amount", content.get("amount_fen"), answer.amount_fen))
    if topic in (WALLET_COMMANDS.name, RELATIONSHIP_COMMANDS.name):
        pairs.append(("recipient", content.get("recipient_id"), answer.recipient_id))
    if topic == SUPERVISION.name:
        pairs.append(("type", SUPERVISION_ANSWER.get(content.get("action", "")), answer.type))
    if topic == CLAIMS.name:
        if content.get("kind", "settle") == "settle":
            pairs.append(("amount", content.get("amount_fen"), answer.requested_fen))
        else:
            pairs.append(("reversed claim", content.get("reverses"), answer.reverses))
    return next(((name, expected, got) for name, expected, got in pairs if expected != got), None)


def _dead_lettered(view: _View, found: _Findings) -> None:
    """An input that breaks the contract is answered by its dead letter: until it is, it is pending."""
    for topic, partition, offset in view.books.undead:
        found.pend(
            "an input that breaks the contract, not yet dead-lettered",
            {"topic": topic, "partition": str(partition), "offset": str(offset)},
        )


def _history(view: _View, found: _Findings) -> None:
    for (topic, partition), offset in sorted(view.books.truncated.items()):
        found.differ(
            HISTORY,
            "a partition no longer holds its first records (retention): the books are incomplete",
            {"topic": topic, "partition": str(partition)},
            0,
            offset,
        )


def _republished(view: _View, found: _Findings) -> None:
    for topic, event_id in view.books.clashes:
        found.differ(
            REPUBLISHED,
            "an output was published again under its id with other figures",
            {"topic": topic, "event": event_id},
            "the same figures",
            "other figures",
        )
