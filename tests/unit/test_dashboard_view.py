"""What the dashboard shows, from the statistics and reconciliations as published."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gongji.dashboard.view import View
from shared.contracts import (
    LatencyBucket,
    ReconciliationDay,
    ReconciliationLine,
    ReconciliationSide,
    StatisticsCount,
    StatisticsSnapshot,
)

NOW = datetime(2026, 12, 5, 4, 0, 30, tzinfo=UTC)  # 12:00:30 in Asia/Shanghai


def snapshot(revision: int, settled: int, minute: str = "2026-12-05T12:00") -> StatisticsSnapshot:
    return StatisticsSnapshot(
        event_id=f"s{revision}",
        instance="gongji",
        minute=minute,
        by_status=[StatisticsCount(key="settled", count=settled, amount_fen=settled * 100)],
        by_category=[StatisticsCount(key="pharmacy", count=settled, amount_fen=settled * 100)],
        by_province_pair=[StatisticsCount(key="35>44", count=settled, amount_fen=settled * 100)],
        rejections_by_reason=[],
        dead_letters=[StatisticsCount(key="gongji.claims.v1", count=2, amount_fen=0)],
        latency=[LatencyBucket(le_ms=90, count=settled - 1), LatencyBucket(le_ms=1_200, count=1)],
        revision=revision,
        published_at=NOW,
    )


def day(province: str, settlements: int, final: bool, on: str = "2026-12-05") -> ReconciliationDay:
    side = ReconciliationSide(
        total=ReconciliationLine(key="total", settlements=settlements, mutual_aid_fen=settlements * 100),
        by_clearing_type=[],
        by_counter_province=[],
    )
    return ReconciliationDay(
        event_id=f"{province}{on}{settlements}",
        province=province,
        day=on,
        final=final,
        revision=settlements,
        as_service=side,
        as_insured=side,
        published_at=NOW,
    )


def test_the_highest_revision_of_a_minute_stands_whatever_order_they_come_in() -> None:
    view = View()
    for message in (snapshot(5, 5), snapshot(9, 9), snapshot(7, 7)):
        view.take(message)
    parts = view.parts(NOW)
    assert parts["settled-total"] == "9"
    assert 'id="cell-35-44" data-count="9"' in parts["heatmap"]
    assert 'id="cell-44-35" data-count="0"' in parts["heatmap"]


def test_latency_percentiles_and_dead_letters_come_from_the_recent_minutes() -> None:
    view = View()
    view.take(snapshot(100, 100))
    parts = view.parts(NOW)
    assert '<b id="latency-p50">90 ms</b>' in parts["latency"]
    assert '<b id="latency-p99">90 ms</b>' in parts["latency"]
    assert "this minute <b>2</b>" in parts["dead-letters"]


def test_rates_are_the_differences_between_samples() -> None:
    view = View()
    view.take(snapshot(40, 40))
    view.sample(NOW, at=9.0)
    assert not view.samples  # the backlog being read is no rate
    view.caught_up = True
    view.offered = 100.0
    view.sample(NOW, at=10.0)
    view.take(snapshot(50, 50))
    view.offered = 160.0
    view.sample(NOW, at=12.0)
    assert view.rates(over=1) == [(0.0, 30.0, 5.0)]


def test_todays_reconciliation_and_yesterdays_final_per_province() -> None:
    view = View()
    view.take(day("44", 3, final=False))
    view.take(day("44", 2, final=True, on="2026-12-04"))
    view.take(day("44", 1, final=False, on="2026-12-04"))  # older: the final stands
    shown = view.parts(NOW)["reconciliation"]
    assert 'id="reconciliation-44"' in shown and "进行中 open" in shown and "✓ 已对账 final" in shown
    assert 'id="reconciliation-11"' not in shown  # nothing of Beijing's yet


def test_no_person_appears_on_the_page() -> None:
    view = View()
    view.take(snapshot(3, 3))
    view.take(day("44", 3, final=False))
    page = "".join(view.parts(NOW).values())
    assert not re.search(r"\d{17}[\dX]", page)
