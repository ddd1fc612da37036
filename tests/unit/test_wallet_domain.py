"""Rules 8–10 limits and the account invariants as pure functions."""

from __future__ import annotations

from services.wallet.domain import (
    MAX_GRANT_FEN,
    MAX_GRANTS_PER_DAY,
    AccountSnapshot,
    account_breaches,
    check_grant,
    draw_shortfall_reason,
)
from shared.contracts import ReasonCode, WalletCommand
from shared.ids import make_person_id

PROVIDER = make_person_id("110101", "19600101", 1)
RECIPIENT = make_person_id("310101", "19900101", 2)


def grant(amount_fen: int, actor: str = PROVIDER, recipient: str = RECIPIENT) -> WalletCommand:
    return WalletCommand.model_validate(
        {
            "command_id": "g",
            "action": "grant",
            "actor_id": actor,
            "provider_id": PROVIDER,
            "recipient_id": recipient,
            "recipient_region": "510100",
            "amount_fen": amount_fen,
            "requested_at": "2026-03-02T10:00:00+08:00",
        }
    )


def test_the_limits_are_3_a_day_of_2000_yuan() -> None:
    assert (MAX_GRANT_FEN, MAX_GRANTS_PER_DAY) == (200_000, 3)


def test_200_000_fen_passes_and_200_001_is_over_the_limit() -> None:
    assert check_grant(grant(200_000)) is None
    assert check_grant(grant(200_001)) == ReasonCode.TRANSFER_AMOUNT_OVER_LIMIT


def test_only_the_provider_grants_and_not_to_themselves() -> None:
    assert check_grant(grant(100, actor=RECIPIENT)) == ReasonCode.NOT_AUTHORIZED
    assert check_grant(grant(100, recipient=PROVIDER)) == ReasonCode.SELF_RELATIONSHIP


def test_why_a_draw_paid_less() -> None:
    assert draw_shortfall_reason(100, 100, False) is None
    assert draw_shortfall_reason(100, 40, False) == ReasonCode.NO_QUOTA
    assert draw_shortfall_reason(100, 0, True) == ReasonCode.ACCOUNT_FROZEN


def snapshot(**fields) -> AccountSnapshot:
    values = {
        "person_id": PROVIDER,
        "balance_fen": 1000,
        "frozen_fen": 300,
        "credited_fen": 1500,
        "spent_fen": 200,
        "paid_fen": 400,
        "refunded_fen": 100,
        "grants_fen": {RECIPIENT: 300},
        "grants_by_day": {"20260302": 3},
    } | fields
    return AccountSnapshot(**values)


def test_a_sound_account_has_no_breach() -> None:
    assert account_breaches(snapshot()) == []


def test_each_invariant_can_fail() -> None:
    assert "outside 0..balance" in account_breaches(snapshot(frozen_fen=1200, grants_fen={RECIPIENT: 1200}))[0]
    assert "sum of grants" in account_breaches(snapshot(grants_fen={RECIPIENT: 299}))[0]
    assert any("below zero" in b for b in account_breaches(snapshot(grants_fen={RECIPIENT: 301, "x": -1})))
    assert "credits - spends" in account_breaches(snapshot(spent_fen=201))[0]
    assert "4 grants" in account_breaches(snapshot(grants_by_day={"20260302": 4}))[0]
