"""Rules 12–15 as pure decisions: uses, catalogue, status, clearing and net positions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.settlement.domain import (
    Assessment, GrossLine, assess_claim, clearing_contributions, net_positions, settlement_status,
)
from shared.contracts import Claim, Payer, ReasonCode
from shared.ids import make_person_id

RECIPIENT = make_person_id("310101", "19900101", 2)
INSURED = ("510100", "normal")


def claim(category: str = "institution", amount_fen: int = 10_000, items=None) -> Claim:
    return Claim.model_validate({
        "claim_id": "c", "kind": "settle", "recipient_id": RECIPIENT, "recipient_region": "510100",
        "category": category, "service_region": "510100", "amount_fen": amount_fen, "items": items,
        "occurred_at": "2026-03-02T10:00:00+08:00",
    })


@pytest.mark.parametrize("category", ["institution", "resident_premium", "ltc_premium"])
def test_the_allowed_uses_are_payable_in_full(category: str) -> None:
    assert assess_claim(claim(category), INSURED) == Assessment(10_000)


@pytest.mark.parametrize("category", ["cash", "withdrawal", "supermarket", "cosmetics", ""])
def test_anything_else_is_refused(category: str) -> None:
    assert assess_claim(claim(category), INSURED).refusal == ReasonCode.CATEGORY_NOT_ALLOWED


def test_pharmacy_pays_only_catalogue_items() -> None:
    items = [{"code": "A", "in_catalogue": True, "amount_fen": 6_000},
             {"code": "B", "in_catalogue": False, "amount_fen": 4_000}]
    assert assess_claim(claim("pharmacy", 10_000, items), INSURED) == \
        Assessment(6_000, shortfall=ReasonCode.NOT_IN_CATALOGUE)


def test_a_pharmacy_claim_with_nothing_in_the_catalogue_is_refused() -> None:
    items = [{"code": "B", "in_catalogue": False, "amount_fen": 4_000}]
    assert assess_claim(claim("pharmacy", 4_000, items), INSURED).refusal == ReasonCode.NOT_IN_CATALOGUE
    assert assess_claim(claim("pharmacy", 4_000, None), INSURED).refusal == ReasonCode.NOT_IN_CATALOGUE


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [(None, ReasonCode.RECIPIENT_NOT_INSURED), (("510100", "suspended"), ReasonCode.RECIPIENT_STATUS_ABNORMAL),
     (("440300", "normal"), ReasonCode.RECIPIENT_MISMATCH)],
)
def test_the_recipient_must_be_insured_normally_where_the_claim_says(recipient, reason) -> None:
    assert assess_claim(claim(), recipient).refusal == reason


def test_status_follows_what_was_paid() -> None:
    assert settlement_status(100, 100) == "settled"
    assert settlement_status(100, 60) == "partial"
    assert settlement_status(100, 0) == "rejected"


def test_only_cross_province_payments_are_cleared() -> None:
    payers = [Payer(provider_id="a", provider_region="440300", amount_fen=700),
              Payer(provider_id="b", provider_region="510700", amount_fen=300)]
    assert clearing_contributions(payers, "510100") == {"44>51": 700}


@given(st.lists(st.tuples(st.sampled_from(["11", "44", "51", "65", "66"]),
                          st.sampled_from(["11", "44", "51", "65", "66"]), st.integers(0, 10**9)), max_size=30))
def test_net_positions_always_sum_to_zero(lines) -> None:
    gross = [GrossLine(payer, payee, amount, 1) for payer, payee, amount in lines if payer != payee]
    assert sum(net_positions(gross).values()) == 0


def test_net_positions_by_hand() -> None:
    lines = [GrossLine("44", "51", 1_000, 2), GrossLine("51", "44", 300, 1), GrossLine("11", "51", 200, 1)]
    assert net_positions(lines) == {"11": -200, "44": -700, "51": 900}
