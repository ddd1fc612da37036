"""Personal accounts, quotas and draws (rules 3, 8–11, 16): the limits and pure checks.

The stateful checks (balance, frozen, today's count) run inside the store's atomic step, with the
limits below passed in, so that this module stays the one place where the numbers are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from shared.contracts import ReasonCode, WalletCommand
from shared.ids import mask_person_id
from shared.money import yuan

# Rule 9: each wallet account may make at most 3 transfers a day, each at most 2,000 yuan.
MAX_GRANT_FEN = yuan(2000)
MAX_GRANTS_PER_DAY = 3


@dataclass(frozen=True)
class GrantLimits:
    """The size of one grant and the daily count (the Redis step refuses beyond them too), and how
    long the daily counts are kept (days older are dropped)."""

    max_amount_fen: int = MAX_GRANT_FEN
    max_per_day: int = MAX_GRANTS_PER_DAY
    counters_kept: timedelta = timedelta(days=7)


def check_grant(command: WalletCommand) -> ReasonCode | None:
    """The refusals that need no state: who acts, and the size of one transfer."""
    if command.actor_id != command.provider_id:
        return ReasonCode.NOT_AUTHORIZED
    if command.recipient_id == command.provider_id:
        return ReasonCode.SELF_RELATIONSHIP
    if command.amount_fen > MAX_GRANT_FEN:
        return ReasonCode.TRANSFER_AMOUNT_OVER_LIMIT
    return None


def draw_shortfall_reason(requested_fen: int, paid_fen: int, recipient_frozen: bool) -> ReasonCode | None:
    """Why a draw paid less than asked: the recipient's account is frozen, or the grants ran short."""
    if recipient_frozen:
        return ReasonCode.ACCOUNT_FROZEN
    return ReasonCode.NO_QUOTA if paid_fen < requested_fen else None


@dataclass(frozen=True)
class AccountSnapshot:
    """One account as the audit reads it, with the running totals kept beside the balance."""

    person_id: str
    balance_fen: int
    frozen_fen: int
    credited_fen: int
    spent_fen: int
    paid_fen: int
    refunded_fen: int
    grants_fen: dict[str, int] = field(default_factory=dict)
    grants_by_day: dict[str, int] = field(default_factory=dict)


def account_breaches(account: AccountSnapshot) -> list[str]:
    """The money invariants of one account; an empty list means it is sound."""
    breaches = []
    if not 0 <= account.frozen_fen <= account.balance_fen:
        breaches.append(f"frozen {account.frozen_fen} outside 0..balance {account.balance_fen}")
    if account.frozen_fen != sum(account.grants_fen.values()):
        breaches.append(f"frozen {account.frozen_fen} != sum of grants {sum(account.grants_fen.values())}")
    if any(remaining < 0 for remaining in account.grants_fen.values()):
        breaches.append("a grant below zero")
    ledger = account.credited_fen - account.spent_fen - account.paid_fen + account.refunded_fen
    if account.balance_fen != ledger:
        breaches.append(f"balance {account.balance_fen} != credits - spends - paid + refunds = {ledger}")
    for day, count in account.grants_by_day.items():
        if count > MAX_GRANTS_PER_DAY:
            breaches.append(f"{count} grants on {day}, more than {MAX_GRANTS_PER_DAY}")
    return [f"{mask_person_id(account.person_id)}: {breach}" for breach in breaches]
