"""The brief's rules, checked from the records alone, with the audit's own arithmetic.

The rest of the audit proves that the records and Redis agree; this module proves that what they
agree on is allowed. It is a second, plain implementation of the rules: it imports nothing of the
services (not their limits, not their clearing or status arithmetic), so that a rule written wrong
there is not written wrong here too. Its figures are the brief's, written again on purpose.

What it can judge from records alone, it judges; where an order between two topics would be needed
(a recipient's enrollment against a claim), it checks what holds whatever the order. One account's
wallet events come from several consumers, so their order on the topic is not the order of the
steps in Redis; each carries the account's step number (`account_seq`), which is.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from itertools import chain
from typing import Any
from zoneinfo import ZoneInfo

from gongji.audit.books import ANSWERED_BY_WALLET, UNAPPLIED, Books, json_object
from gongji.audit.opening import Opening
from gongji.audit.spill import models
from gongji.audit.window import Window
from shared.contracts import SettlementEvent, WalletEvent
from shared.topics import CLAIMS, ENROLLMENT, RELATIONSHIP_COMMANDS, WALLET_COMMANDS

RULE = "rule"  # a rule of the brief broken, though records and Redis may agree

# Rule 9: at most 3 transfers a day, each at most 2,000 yuan (200,000 fen), a day in Asia/Shanghai.
MOST_PER_GRANT_FEN = 200_000
MOST_GRANTS_A_DAY = 3
SHANGHAI = ZoneInfo("Asia/Shanghai")
# Rule 12: the only uses; an institution's code begins with H, a pharmacy's with P.
USES = frozenset({"institution", "pharmacy", "resident_premium", "ltc_premium"})
CODE_LETTER = {"institution": "H", "pharmacy": "P"}
PREMIUMS = frozenset({"resident_premium", "ltc_premium"})
NATIONAL = "national"  # the scope of claim ids in the books

Differ = Callable[[str, str, dict[str, str], Any, Any], None]


def check_rules(books: Books, differ: Differ, window: Window, opening: Opening, closing: Opening) -> None:
    """Judges what `books` holds from its cut on (rebuild's), `opening` holding what the books held
    before it; adds the figures the rules carry on to `closing`."""
    for rule in (_grants, _claims_of_their_own_care):
        rule(books, differ)
    _frozen_accounts(books, differ, opening, closing)
    _paid_claims(books, differ, opening, closing)
    _related_before_quota(books, differ, opening)
    _claims_within_their_window(books, differ, window)
    _inputs_within_their_window(books, differ, window)


# ---- rules 8-10: a grant is the provider's own, within the limits ------------------------------


def _grants(books: Books, differ: Differ) -> None:
    per_day = models(books.spill, WalletEvent)  # by (provider, day)
    for event in books.wallet_events.values():
        if event.type != "granted":
            continue
        per_day.add((event.provider_id, shanghai_day(event.occurred_at)), event)
        if not books.judged(event):
            continue  # read only to count its day's grants
        ids = {"provider": event.provider_id, "input": event.cause_id}
        if not 1 <= event.amount_fen <= MOST_PER_GRANT_FEN:
            differ(RULE, "rule 9: a grant above 2,000 yuan", ids, MOST_PER_GRANT_FEN, event.amount_fen)
        command = books.input((WALLET_COMMANDS.name, event.provider_id, event.cause_id))
        if command is not None and command.get("actor_id") != event.provider_id:
            differ(
                RULE,
                "rule 10: a grant made by someone other than the provider",
                ids,
                event.provider_id,
                command.get("actor_id"),
            )
    for (provider, day), grants in per_day.items():
        if len(grants) > MOST_GRANTS_A_DAY and books.any_judged(grants):
            differ(
                RULE,
                "rule 9: more grants in one Asia/Shanghai day than allowed",
                {"provider": provider, "day": day, "commands": " ".join(sorted(grant.cause_id for grant in grants))},
                MOST_GRANTS_A_DAY,
                len(grants),
            )


def shanghai_day(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y%m%d")


def _related_before_quota(books: Books, differ: Differ, opening: Opening) -> None:
    """Rules 2, 5, 8: quota is set only for a close relative the provider is related to."""
    established = {
        (event.provider_id, event.recipient_id)
        for event in books.relationship_events.values()
        if event.type == "established"
    } | {pair for pair, state in opening.pairs.items() if state.established}
    for event in filter(books.judged, books.wallet_events.values()):
        if event.type == "granted" and (event.provider_id, event.recipient_id or "") not in established:
            differ(
                RULE,
                "rules 2, 8: quota granted to someone never related to the provider",
                {"provider": event.provider_id, "recipient": event.recipient_id or "", "input": event.cause_id},
                "an established relationship",
                "none",
            )


# ---- rule 16: a frozen account grants and pays nothing ------------------------------------------


def _frozen_accounts(books: Books, differ: Differ, opening: Opening, closing: Opening) -> None:
    """Walking one account's events in the order of its steps, the freezes standing before a grant
    or a draw must be none. (An account with events of a release before step numbers is skipped; a
    refusal that applied nothing has no step.) From a checkpoint, the walk goes on from the freezes
    standing after the steps it folded; an event published after its cut for a step before one it
    folded (another consumer's, late) counts for the freezes, but is not judged: the steps before
    it are not all known."""
    closing.unstepped |= opening.unstepped
    closing.standing |= opening.standing
    closing.last_seq |= opening.last_seq
    for provider, of_account in books.wallet_events.items():
        events = [event for event in filter(books.judged, of_account) if event.reason not in UNAPPLIED]
        if not events:
            continue
        stepped = [event for event in events if event.account_seq is not None]
        if len(stepped) < len(events) or provider in opening.unstepped:
            closing.unstepped.add(provider)
            closing.standing.pop(provider, None)
            continue
        standing, folded_to = opening.standing.get(provider, 0), opening.last_seq.get(provider, 0)
        for event in sorted(stepped, key=lambda one: one.account_seq or 0):
            if event.type == "frozen":
                standing += 1
            elif event.type == "unfrozen":
                standing = max(0, standing - 1)
            elif event.type in ("granted", "debited") and event.amount_fen and standing:
                if (event.account_seq or 0) > folded_to:
                    differ(
                        RULE,
                        f"rule 16: {'a grant' if event.type == 'granted' else 'a draw'} from a frozen account",
                        {"provider": provider, "input": event.claim_id or event.cause_id},
                        0,
                        event.amount_fen,
                    )
        closing.standing[provider] = standing
        closing.last_seq[provider] = max(folded_to, *(event.account_seq or 0 for event in stepped))


# ---- rules 12, 13: only medical uses are paid, and only the recipient's own share --------------


def _paid_claims(books: Books, differ: Differ, opening: Opening, closing: Opening) -> None:
    # An enrollment taken in, or refused as too old on a late redelivery (it was taken in before,
    # when it came within its window: the record is the same).
    resident_insured = opening.resident | {
        key[1]
        for taken in (books.inputs, books.too_old)
        for key in taken.keys_under(ENROLLMENT.name)
        if any(content.get("insurance_type") == "resident" for content in taken.get(key))
    }
    closing.resident = resident_insured
    for result in filter(books.judged, books.settlements.values()):
        if result.status not in ("settled", "partial"):
            continue
        ids = {"claim": result.claim_id, "recipient": result.recipient_id}
        claim = _claim_of(books, result)
        if claim is None:
            continue  # the answers check names a result of no claim
        why = _not_payable(claim, result, resident_insured)
        if why is not None:
            differ(RULE, f"rule 12: {why}", ids, "nothing paid", result.paid_fen)
        elif result.paid_fen > _payable(claim):
            differ(
                RULE,
                "rule 13: more paid than the claim's own share (catalogue items at a pharmacy)",
                ids,
                _payable(claim),
                result.paid_fen,
            )


def _claims_of_their_own_care(books: Books, differ: Differ) -> None:
    """A province sends on its own topic only claims of its own care (a reversal: of a claim whose
    id names its region). Another province's claim is refused SERVICE_REGION_MISMATCH before its id
    is looked at, so that no province can take a hospital's claim id, or learn whether it exists."""
    refused = {
        (refusal.claim_id, refusal.recipient_id, refusal.requested_fen)
        for refusal in books.refused_before_id.values()
        if refusal.reason == "SERVICE_REGION_MISMATCH"
    }
    for province, claim, judged in books.sent_by_provinces.values():
        claim_id = str(claim.get("claim_id"))
        region = claim.get("service_region") if claim.get("kind") == "settle" else claim_id.split("-")[0]
        answers = [*books.settlements.get(claim_id), *books.refused_before_id.get(claim_id)]
        if str(region)[:2] == province or not answers:  # unanswered: the answers check waits for it
            continue
        if not judged and not books.any_judged(answers):
            continue  # judged by the audit that read it after its cut
        if (claim_id, claim.get("recipient_id"), claim.get("amount_fen") or 0) not in refused:
            differ(
                RULE,
                "province topics: a claim of another province's care was judged by its claim id",
                {"claim": claim_id, "province": province},
                "SERVICE_REGION_MISMATCH before the id",
                "judged by the id",
            )


def _claims_within_their_window(books: Books, differ: Differ, window: Window) -> None:
    """The idempotency window: no claim is taken ahead of the clock (by more than the skew), a claim
    is refused CLAIM_TOO_OLD only when it is, and a reversal cancels only a claim within the window
    when it is decided. (When a paid claim was taken is not in the records: it was before it was
    paid, so only its upper bound is judged.)"""
    for result in filter(books.judged, books.settlements.values()):
        ids = {"claim": result.claim_id, "recipient": result.recipient_id}
        at = _occurred_at(_claim_of(books, result))
        if at is not None and at > result.settled_at + window.skew:
            differ(
                RULE, "window: a claim was taken ahead of the clock", ids, f"by {window.skew}", at - result.settled_at
            )
        original = next(reversed(books.settlements.get(result.reverses or "")), None)  # the last published
        when = _occurred_at(_claim_of(books, original)) if original else None
        if result.status == "reversed" and when is not None and when < result.settled_at - window.length:
            differ(RULE, "window: a claim older than the window was reversed", ids, "CLAIM_TOO_OLD", "reversed")
    for refusal in filter(books.judged, books.refused_before_id.values()):
        if refusal.reason != "CLAIM_TOO_OLD":
            continue
        sent = [_occurred_at(content) for content in _contents_like(books, refusal)]
        if not any(at is not None and at < refusal.settled_at - window.length for at in sent):
            differ(
                RULE,
                "window: a claim within the window was refused as too old",
                {"claim": refusal.claim_id},
                "taken",
                "CLAIM_TOO_OLD",
            )


def _inputs_within_their_window(books: Books, differ: Differ, window: Window) -> None:
    """Every other input's window: one applied was within it when it was applied (its answer's time),
    and one refused as too old (INPUT_TOO_OLD: an answer on its topic, or a dead letter) was not."""
    answers = chain(
        (
            (ANSWERED_BY_WALLET[event.type], event.provider_id, event)
            for event in books.wallet_events.values()
            if event.type in ANSWERED_BY_WALLET
        ),
        (
            (RELATIONSHIP_COMMANDS.name, event.provider_id, event)
            for event in books.relationship_events.values()
            if event.type != "terminated"
        ),
    )
    for topic, scope, answer in answers:
        if not books.judged(answer):
            continue  # judged by the audit that read it after its cut
        ids = {"topic": topic, "input": answer.cause_id}
        at = _sent_at(books.input((topic, scope, answer.cause_id)))
        if at is None:
            continue
        if answer.reason == "INPUT_TOO_OLD":
            if at >= answer.occurred_at - window.inputs:
                differ(RULE, "window: an input within the window was refused as too old", ids, "taken", "INPUT_TOO_OLD")
        elif answer.reason not in ("CONFLICT", "INVALID_MESSAGE") and at < answer.occurred_at - window.inputs:
            differ(RULE, "window: an input older than the window was applied", ids, "INPUT_TOO_OLD", answer.type)
    for letter in books.too_old_letters:
        at = _sent_at(json_object(base64.b64decode(letter.payload)))
        if at is not None and at >= letter.at - window.inputs:
            ids = {"topic": letter.source_topic, "offset": str(letter.offset)}
            differ(RULE, "window: an input within the window was refused as too old", ids, "taken", "INPUT_TOO_OLD")


def _sent_at(content: dict[str, Any] | None) -> datetime | None:
    """When an input says it was sent: its `requested_at` (a command) or `occurred_at`."""
    try:
        return datetime.fromisoformat(str(content.get("requested_at") or content["occurred_at"])) if content else None
    except (KeyError, ValueError):
        return None


def _occurred_at(claim: dict[str, Any] | None) -> datetime | None:
    try:
        return datetime.fromisoformat(str(claim["occurred_at"])) if claim else None
    except ValueError:
        return None


def _contents_like(books: Books, answer: SettlementEvent) -> list[dict[str, Any]]:
    """What was sent under the answer's claim id with the answer's recipient and amount."""
    contents = books.inputs.get((CLAIMS.name, NATIONAL, answer.claim_id))
    return [
        content
        for content in contents
        if content.get("recipient_id") == answer.recipient_id
        # a reversal's answer carries what it gave back, not an amount of its claim
        and (answer.reverses is not None or (content.get("amount_fen") or 0) == answer.requested_fen)
    ]


def _claim_of(books: Books, result: SettlementEvent) -> dict[str, Any] | None:
    return next(iter(_contents_like(books, result)), None)


def _not_payable(claim: dict[str, Any], result: SettlementEvent, resident_insured: set[str]) -> str | None:
    category = claim.get("category")
    service_province = str(claim.get("service_region"))[:2]
    if category not in USES:
        return f"a use that is not medical ({str(category)[:32]}) was paid"
    if category in CODE_LETTER:
        code = str(claim.get("institution_code") or "")
        if not code.startswith(CODE_LETTER[category]):
            return f"a {category} claim paid under a code of another kind"
        if code[1:3] != service_province:
            return "a claim paid for an institution outside the service region's province"
    if category in PREMIUMS and str(claim.get("recipient_region"))[:2] != service_province:
        return "a premium paid to a province other than the recipient's insured one"
    if category == "resident_premium" and result.recipient_id not in resident_insured:
        return "a resident-insurance premium paid for a recipient never insured as a resident"
    return None


def _payable(claim: dict[str, Any]) -> int:
    """At a pharmacy, only the catalogue items; elsewhere the amount asked (the recipient's share)."""
    amount = int(claim.get("amount_fen") or 0)
    if claim.get("category") != "pharmacy":
        return amount
    return min(
        amount,
        sum(int(item.get("amount_fen") or 0) for item in claim.get("items") or [] if item.get("in_catalogue") is True),
    )
