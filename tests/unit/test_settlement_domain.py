"""Rules 12–15 as pure decisions: uses, catalogue, status, clearing and net positions."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.settlement.domain import (
    NATIONAL,
    Assessment,
    Enrolled,
    GrossLine,
    assess_claim,
    clearing_contributions,
    for_province,
    gross_lines,
    month_has_ended,
    net_positions,
    output_event_id,
    refusal_before_id,
    settlement_status,
    statistics_category,
)
from shared.contracts import Claim, Payer, ReasonCode, SettlementEvent
from shared.ids import claim_id_prefix, make_person_id
from shared.topics import CLAIMS, ENROLLMENT
from shared.window import ClaimWindow

RECIPIENT = make_person_id("310101", "19900101", 2)
WINDOW = ClaimWindow()
NOW = datetime.fromisoformat("2026-03-02T10:05:00+08:00")
INSURED = Enrolled("employee", "510100", "normal")
RESIDENT = Enrolled("resident", "510100", "normal")


CODES = {"institution": "H51010500012", "pharmacy": "P51010700003"}


def claim(category: str = "institution", amount_fen: int = 10_000, items=None, **fields) -> Claim:
    message = {
        "kind": "settle",
        "recipient_id": RECIPIENT,
        "recipient_region": "510100",
        "category": category,
        "institution_code": CODES.get(category),
        "service_region": "510100",
        "amount_fen": amount_fen,
        "items": items,
        "occurred_at": "2026-03-02T10:00:00+08:00",
        **fields,
    }
    message.setdefault("claim_id", claim_id_prefix(message["service_region"], message["institution_code"]) + "871")
    return Claim.model_validate(message)


@pytest.mark.parametrize(
    ("category", "recipient"),
    [
        ("institution", INSURED),
        ("institution", RESIDENT),
        ("resident_premium", RESIDENT),
        ("ltc_premium", INSURED),
        ("ltc_premium", RESIDENT),
    ],
)
def test_the_allowed_uses_are_payable_in_full(category: str, recipient: Enrolled) -> None:
    assert refusal_before_id(claim(category), None, WINDOW, NOW) is None
    assert assess_claim(claim(category), recipient) == Assessment(10_000)


def test_a_resident_premium_is_not_paid_for_an_employee_insured_recipient() -> None:
    """Rule 12(c): the recipient's own contribution to resident insurance; an employee pays none."""
    assert assess_claim(claim("resident_premium"), INSURED).refusal == ReasonCode.CATEGORY_NOT_ALLOWED


@pytest.mark.parametrize("category", ["resident_premium", "ltc_premium"])
def test_a_premium_is_owed_to_the_recipients_own_insured_province(category: str) -> None:
    """Else the monthly clearing would pay the province that billed it (44 -> 11 here)."""
    billed_elsewhere = claim(category, recipient_region="440300", service_region="110100")
    assert refusal_before_id(billed_elsewhere, None, WINDOW, NOW) == ReasonCode.SERVICE_REGION_MISMATCH
    assert refusal_before_id(billed_elsewhere, "11", WINDOW, NOW) == ReasonCode.SERVICE_REGION_MISMATCH
    assert (
        refusal_before_id(claim(category, recipient_region="440300", service_region="440100"), "44", WINDOW, NOW)
        is None
    )


def test_a_claim_on_a_provinces_own_topic_is_for_care_in_that_province() -> None:
    assert refusal_before_id(claim(), "51", WINDOW, NOW) is None
    assert refusal_before_id(claim(), "44", WINDOW, NOW) == ReasonCode.SERVICE_REGION_MISMATCH
    reversal = Claim.model_validate(
        {
            "claim_id": "510100-H51010500012-872",
            "kind": "reverse",
            "recipient_id": RECIPIENT,
            "reverses": "510100-H51010500012-871",
            "occurred_at": "2026-03-02T10:00:00+08:00",
        }
    )
    assert refusal_before_id(reversal, "51", WINDOW, NOW) is None
    assert refusal_before_id(reversal, "44", WINDOW, NOW) == ReasonCode.SERVICE_REGION_MISMATCH


@pytest.mark.parametrize("category", ["cash", "withdrawal", "supermarket", "cosmetics", ""])
def test_anything_else_is_refused(category: str) -> None:
    assert assess_claim(claim(category), INSURED).refusal == ReasonCode.CATEGORY_NOT_ALLOWED


def test_pharmacy_pays_only_catalogue_items() -> None:
    items = [
        {"code": "A", "in_catalogue": True, "amount_fen": 6_000},
        {"code": "B", "in_catalogue": False, "amount_fen": 4_000},
    ]
    assert assess_claim(claim("pharmacy", 10_000, items), INSURED) == Assessment(
        6_000, shortfall=ReasonCode.NOT_IN_CATALOGUE
    )


def test_a_pharmacy_claim_with_nothing_in_the_catalogue_is_refused() -> None:
    items = [{"code": "B", "in_catalogue": False, "amount_fen": 4_000}]
    assert assess_claim(claim("pharmacy", 4_000, items), INSURED).refusal == ReasonCode.NOT_IN_CATALOGUE
    assert assess_claim(claim("pharmacy", 4_000, None), INSURED).refusal == ReasonCode.NOT_IN_CATALOGUE


CATALOGUE = [{"code": "A", "in_catalogue": True, "amount_fen": 10_000}]


@pytest.mark.parametrize("category", ["institution", "pharmacy"])
def test_a_clinic_or_pharmacy_claim_must_name_its_institution(category: str) -> None:
    """Without the code's letter a pharmacy could claim as an institution: items outside the
    catalogue would be paid."""
    with pytest.raises(ValueError, match="needs institution_code"):
        claim(category, items=CATALOGUE, institution_code=None)


@pytest.mark.parametrize(("category", "code"), [("institution", "H51010500012"), ("pharmacy", "P51010700003")])
def test_an_institution_code_of_the_right_kind_in_the_service_province_is_payable(category, code) -> None:
    assessment = assess_claim(claim(category, items=CATALOGUE, institution_code=code), INSURED)
    assert assessment == Assessment(10_000)


@pytest.mark.parametrize(
    ("category", "code"),
    [("institution", "P51010700003"), ("pharmacy", "H51010500012"), ("institution", "X51010500012"), ("pharmacy", "")],
)
def test_a_code_of_the_other_kind_is_not_allowed(category, code) -> None:
    """A pharmacy's P code sent as an institution would skip the catalogue check."""
    assessment = assess_claim(claim(category, items=CATALOGUE, institution_code=code), INSURED)
    assert assessment.refusal == ReasonCode.CATEGORY_NOT_ALLOWED


@pytest.mark.parametrize("code", ["H44030500012", "P44030500012", "H999999", "H51", "P51010"])
def test_the_code_must_name_a_region_in_the_service_province(code) -> None:
    """The service region decides who is paid in clearing: it must be where the institution is."""
    category = "institution" if code.startswith("H") else "pharmacy"
    refused = claim(category, items=CATALOGUE, institution_code=code)
    assert refusal_before_id(refused, None, WINDOW, NOW) == ReasonCode.SERVICE_REGION_MISMATCH


def test_the_code_may_name_another_region_of_the_same_province() -> None:
    assert refusal_before_id(claim(institution_code="H51070000001"), None, WINDOW, NOW) is None
    assert assess_claim(claim(institution_code="H51070000001"), INSURED) == Assessment(10_000)


@pytest.mark.parametrize(
    ("recipient", "reason"),
    [
        (None, ReasonCode.RECIPIENT_NOT_INSURED),
        (Enrolled("employee", "510100", "suspended"), ReasonCode.RECIPIENT_STATUS_ABNORMAL),
        (Enrolled("employee", "440300", "normal"), ReasonCode.RECIPIENT_MISMATCH),
    ],
)
def test_the_recipient_must_be_insured_normally_where_the_claim_says(recipient, reason) -> None:
    assert assess_claim(claim(), recipient).refusal == reason


def test_status_follows_what_was_paid() -> None:
    assert settlement_status(100, 100) == "settled"
    assert settlement_status(100, 60) == "partial"
    assert settlement_status(100, 0) == "rejected"


def test_only_cross_province_payments_are_cleared() -> None:
    payers = [
        Payer(provider_id="a", provider_region="440300", amount_fen=700),
        Payer(provider_id="b", provider_region="510700", amount_fen=300),
    ]
    assert clearing_contributions(payers, "510100") == {"44>51": 700}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["11", "44", "51", "65", "66"]),
            st.sampled_from(["11", "44", "51", "65", "66"]),
            st.integers(0, 10**9),
        ),
        max_size=30,
    )
)
def test_net_positions_always_sum_to_zero(lines) -> None:
    gross = [GrossLine(payer, payee, amount, 1) for payer, payee, amount in lines if payer != payee]
    assert sum(net_positions(gross).values()) == 0


def test_net_positions_by_hand() -> None:
    lines = [GrossLine("44", "51", 1_000, 2), GrossLine("51", "44", 300, 1), GrossLine("11", "51", 200, 1)]
    assert net_positions(lines) == {"11": -200, "44": -700, "51": 900}


def test_gross_lines_count_claims_and_reversals_apart() -> None:
    totals = {
        "44>51": -2_000,
        "44>51#claims": 1,
        "44>51#reversals": 1,
        "11>51": 0,
        "11>51#claims": 1,
        "11>51#reversals": 1,
        "12>51": 0,
    }
    assert gross_lines(totals) == [GrossLine("11", "51", 0, 1, 1), GrossLine("44", "51", -2_000, 1, 1)]


@pytest.mark.parametrize(
    ("month", "now", "ended"),
    [
        ("2026-03", "2026-03-31T23:59:59.999+08:00", False),
        ("2026-03", "2026-04-01T00:00:00+08:00", True),
        ("2026-03", "2026-03-31T16:00:00+00:00", True),  # midnight in Shanghai, still March in UTC
        ("2026-12", "2026-12-31T23:00:00+08:00", False),
        ("2026-12", "2027-01-01T00:00:00+08:00", True),
        ("2099-01", "2026-03-02T12:00:00+08:00", False),
        ("2025-02", "2026-03-02T12:00:00+08:00", True),
    ],
)
def test_a_month_has_ended_at_midnight_asia_shanghai(month, now, ended) -> None:
    assert month_has_ended(month, datetime.fromisoformat(now)) is ended


def test_an_input_id_holding_the_separator_cannot_pose_as_another_output() -> None:
    assert output_event_id(CLAIMS.name, NATIONAL, "c\x1fdraw") != output_event_id(CLAIMS.name, NATIONAL, "c", "draw")


OUTPUT_KINDS = st.sampled_from(
    [("settlement",), ("draw",), ("refund",), ("conflict", "0" * 32), ("conflict", "f" * 32)]
)
INPUTS = st.tuples(
    st.sampled_from([CLAIMS.name, ENROLLMENT.name]),
    st.sampled_from([NATIONAL, RECIPIENT]),
    st.text(min_size=1, max_size=20, alphabet=st.sampled_from('ab\x1f|:\\"')),
    OUTPUT_KINDS,
)


@given(INPUTS, INPUTS)
def test_different_inputs_never_give_the_same_output_id(first, second) -> None:
    def identify(topic, scope, input_id, what):
        return output_event_id(topic, scope, input_id, *what)

    assert (identify(*first) == identify(*second)) is (first == second)


def test_the_dashboard_counts_any_other_category_text_under_one_name() -> None:
    assert [statistics_category("settle", text) for text in ("pharmacy", "cash", "emoji 🙂", None)] == [
        "pharmacy",
        "not_allowed",
        "not_allowed",
        "not_allowed",
    ]
    assert statistics_category("reverse", None) == "reversal"


def test_a_provinces_copy_masks_the_payers_ids_and_keeps_their_regions_and_amounts() -> None:
    provider = make_person_id("440305", "19600101", 17)
    event = SettlementEvent(
        event_id="e",
        cause_id="c",
        claim_id="c",
        recipient_id=make_person_id("310101", "19900101", 5),
        status="settled",
        requested_fen=900,
        paid_fen=900,
        self_pay_fen=0,
        payers=[Payer(provider_id=provider, provider_region="440305", amount_fen=900)],
        settled_at=datetime.fromisoformat("2026-12-04T10:00:00+08:00"),
    )
    copy = for_province(event)
    assert copy.payers[0].provider_id == f"{provider[:6]}********{provider[-4:]}"
    assert (copy.payers[0].provider_region, copy.payers[0].amount_fen) == ("440305", 900)
    assert copy.model_dump(exclude={"payers"}) == event.model_dump(exclude={"payers"})
    assert event.payers[0].provider_id == provider  # the national copy keeps it whole


def test_the_window_takes_its_last_second_and_refuses_the_first_after_it() -> None:
    """Edges of the idempotency window, in Asia/Shanghai: the window is a duration, so a month's end
    (here 2026-03-31, 16:00 UTC) changes nothing."""
    window = ClaimWindow(length=timedelta(days=30), skew=timedelta(minutes=5))
    now = datetime.fromisoformat("2026-04-01T00:00:00+08:00")
    oldest = now - timedelta(days=30)
    assert refusal_before_id(claim(occurred_at=oldest.isoformat()), None, window, now) is None
    late = (oldest - timedelta(seconds=1)).isoformat()
    assert refusal_before_id(claim(occurred_at=late), None, window, now) == ReasonCode.CLAIM_TOO_OLD
    assert refusal_before_id(claim(occurred_at=late), "51", window, now) == ReasonCode.CLAIM_TOO_OLD
    month_end = "2026-03-31T23:59:59+08:00"
    assert refusal_before_id(claim(occurred_at=month_end), None, window, now) is None
    ahead = now + timedelta(minutes=5)
    assert refusal_before_id(claim(occurred_at=ahead.isoformat()), None, window, now) is None
    too_far = (ahead + timedelta(seconds=1)).isoformat()
    assert refusal_before_id(claim(occurred_at=too_far), None, window, now) == ReasonCode.INVALID_MESSAGE


def test_a_days_records_are_kept_past_its_last_claims_window_by_the_grace() -> None:
    assert ClaimWindow().kept_until("20260331") == datetime.fromisoformat("2026-05-03T00:00:00+08:00")
    with pytest.raises(ValueError, match="skew"):
        ClaimWindow(skew=timedelta(hours=1), grace=timedelta(minutes=30))
