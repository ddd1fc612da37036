"""The exact statistics and the daily reconciliation, pure: what each result adds, and what is read back."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from gongji.audit.books import Record
from gongji.audit.figures import RECONCILIATION_SIDES, STATISTICS_FIELDS, figures
from services.settlement.statistics import (
    CLEARING_TYPE_OF_CATEGORY,
    counted_dead_letter,
    counted_result,
    latency_bound,
    percentile,
    reconciliations,
    snapshot,
)
from shared.contracts import DeadLetter, Payer, SettlementEvent
from shared.topics import SETTLEMENTS

AT = datetime(2026, 12, 5, 15, 59, 59, 500_000, tzinfo=UTC)  # 23:59:59.5 in Asia/Shanghai


def result(status: str = "settled", paid: int = 5_000, **fields) -> SettlementEvent:
    values = {
        "event_id": "e1",
        "cause_id": "c1",
        "claim_id": "c1",
        "recipient_id": "r",
        "status": status,
        "requested_fen": 8_000,
        "paid_fen": paid,
        "self_pay_fen": 8_000 - paid,
        "payers": [Payer(provider_id="p", provider_region="350100", amount_fen=paid)] if paid else [],
        "category": "pharmacy",
        "service_region": "440300",
        "recipient_region": "530100",
        "settled_at": AT,
        "claim_sent_at": AT - timedelta(milliseconds=137),
    } | fields
    return SettlementEvent(**values)


def test_a_settlement_counts_in_its_minute_and_day_on_both_sides_of_the_province_pair() -> None:
    counted = counted_result(result())
    assert counted.minute == "2026-12-05T23:59"
    assert counted.minute_fields == {
        "status|settled|n": 1,
        "status|settled|fen": 5_000,
        "category|pharmacy|n": 1,
        "category|pharmacy|fen": 5_000,
        "pair|35>44|n": 1,
        "pair|35>44|fen": 5_000,
        "latency|140|n": 1,
    }
    # Care in 44 of a patient insured in 53: 44's service side, 53's insured side, pharmacy (41).
    assert counted.day_fields == {
        "s|44|41|53|n": 1,
        "s|44|41|53|m": 8_000,
        "s|44|41|53|a": 5_000,
        "i|53|41|44|n": 1,
        "i|53|41|44|m": 8_000,
        "i|53|41|44|a": 5_000,
    }


def test_a_refusal_counts_its_reason_and_is_no_settlement_of_the_day() -> None:
    counted = counted_result(result("rejected", 0, reason="NO_QUOTA"))
    assert counted.minute_fields["reason|NO_QUOTA|n"] == 1
    assert counted.minute_fields["status|rejected|n"] == 1
    assert not any(name.startswith("pair|") for name in counted.minute_fields)
    assert counted.day_fields == {}


def test_a_refund_counts_on_its_own_day_under_its_claims_provinces_and_type() -> None:
    counted = counted_result(result("reversed", 5_000, reverses="c0", category="institution"))
    assert counted.minute_fields["category|reversal|n"] == 1
    assert counted.day_fields == {
        "s|44|11|53|r": 1,
        "s|44|11|53|f": 5_000,
        "i|53|11|44|r": 1,
        "i|53|11|44|f": 5_000,
    }


def test_the_four_categories_map_onto_the_clearing_types() -> None:
    assert CLEARING_TYPE_OF_CATEGORY == {
        "institution": "11",
        "pharmacy": "41",
        "resident_premium": "99",
        "ltc_premium": "99",
    }


@pytest.mark.parametrize(
    ("latency_ms", "bound"), [(0, 1), (1, 1), (99, 99), (100, 100), (101, 110), (137, 140), (2_275, 2_300)]
)
def test_latency_buckets_have_two_significant_digits(latency_ms: int, bound: int) -> None:
    assert latency_bound(latency_ms) == bound


def test_percentiles_are_read_from_the_buckets() -> None:
    buckets = [(10, 50), (20, 49), (900, 1)]
    assert percentile(buckets, 0.5) == 10
    assert percentile(buckets, 0.99) == 20
    assert percentile(buckets, 1.0) == 900
    assert percentile([], 0.5) is None


def test_a_snapshot_reads_back_the_summed_fields_under_an_id_of_its_figures() -> None:
    first = counted_result(result())
    second = counted_result(result("rejected", 0, event_id="e2", reason="NO_QUOTA"))
    letter = counted_dead_letter(
        DeadLetter(
            source_topic="gongji.province.44.claims.v1",
            partition=0,
            offset=1,
            error="x",
            payload="",
            at=AT,
            service="settlement",
            source_key="k",
        ),
        "gongji.province.PP.claims.v1",
    )
    fields: dict[str, int] = {}
    for counted in (first, second, letter):
        for name, amount in counted.minute_fields.items():
            fields[name] = fields.get(name, 0) + amount
    shown = snapshot("2026-12-05T23:59", fields, AT)
    assert shown.revision == 3 and shown.instance == "gongji"
    assert {(one.key, one.count, one.amount_fen) for one in shown.by_status} == {
        ("settled", 1, 5_000),
        ("rejected", 1, 0),
    }
    assert [(one.key, one.count) for one in shown.dead_letters] == [("gongji.province.PP.claims.v1", 1)]
    assert shown.latency_p50_ms == shown.latency_p99_ms == 140
    assert shown.event_id == snapshot("2026-12-05T23:59", fields, AT + timedelta(seconds=1)).event_id
    # As many results, not the same ones (two instances reading a minute being counted): another id.
    other = {**fields, "status|settled|fen": 4_000}
    assert snapshot("2026-12-05T23:59", other, AT).event_id != shown.event_id


def test_every_province_gets_its_day_and_both_sides_agree() -> None:
    fields = counted_result(result()).day_fields
    days = {day.province: day for day in reconciliations("2026-12-05", fields, True, AT)}
    assert len(days) == 32 and days["11"].revision == 0  # a province with nothing still gets its day
    service, insured = days["44"].as_service, days["53"].as_insured
    assert service.total.settlements == insured.total.settlements == 1
    assert service.total.mutual_aid_fen == insured.total.mutual_aid_fen == 5_000
    assert [line.key for line in service.by_clearing_type] == ["11", "21", "41", "99"]
    assert service.by_clearing_type[2].medical_fen == 8_000
    assert [(line.key, line.settlements) for line in service.by_counter_province] == [("53", 1)]
    assert [(line.key, line.settlements) for line in insured.by_counter_province] == [("44", 1)]
    assert days["44"].final and days["44"].revision == 1


def test_the_audits_own_arithmetic_finds_the_same_figures_for_any_mix_of_results() -> None:
    """services/settlement/statistics.py against gongji/audit/figures.py (which shares none of its
    code), on results of every kind around midnight, published again with their own time or, for an
    answer given again, a later one; each counted once a day, as the store counts them."""
    draw = random.Random(24)
    regions = ["440300", "530100", "350100", "110100", None]
    records, minutes, days, counted = [], defaultdict(Counter), defaultdict(Counter), set()
    for offset in range(3_000):
        status = draw.choice(["settled", "partial", "rejected", "reversed"])
        paid = 0 if status == "rejected" else draw.randint(1, 10_000)
        payers, left = [], paid
        while left:
            amount = draw.randint(1, left)
            payers.append(Payer(provider_id="p", provider_region=draw.choice(regions[:4]), amount_fen=amount))
            left -= amount
        at = AT + timedelta(milliseconds=draw.randint(-3_000, 3_000))
        event = result(
            status,
            paid,
            event_id=f"e{draw.randint(0, 2_000)}",
            payers=payers,
            requested_fen=paid + draw.randint(0, 100),
            self_pay_fen=0,
            reason=draw.choice([None, "NO_QUOTA", "CLAIM_TOO_OLD"]) if status == "rejected" else None,
            category=draw.choice([*CLEARING_TYPE_OF_CATEGORY, "cosmetics", None]),
            service_region=draw.choice(regions),
            recipient_region=draw.choice(regions),
            reverses=draw.choice([None, "c0"]),
            settled_at=at,
            claim_sent_at=draw.choice([None, at - timedelta(milliseconds=draw.randint(-5, 3_000))]),
        )
        records.append(Record(SETTLEMENTS.name, "r", json.loads(event.model_dump_json()), 0, offset))
        one = counted_result(event)
        if (event.event_id, one.day) not in counted:
            counted.add((event.event_id, one.day))
            minutes[one.minute].update(one.minute_fields)
            days[one.day].update(one.day_fields)
    ledger = figures(records)
    assert set(minutes) == set(ledger.minutes) and len(days) == 2
    for minute, fields in minutes.items():
        assert snapshot(minute, fields, AT).model_dump(
            mode="json", include=set(STATISTICS_FIELDS)
        ) == ledger.statistics(minute)
    for day, fields in days.items():
        for one in reconciliations(day, fields, True, AT):
            assert one.model_dump(mode="json", include=set(RECONCILIATION_SIDES)) == ledger.reconciliation(
                day, one.province
            )
