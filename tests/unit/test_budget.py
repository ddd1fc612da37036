"""The per-hop latency budget: the services' phase timing and the load report's arithmetic."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

from prometheus_client import REGISTRY

from gongji.perf.latency_budget import CLAIM_HOPS, claim_budget
from gongji.perf.load import LoadRun
from shared.runtime import HopBudget
from shared.topics import DRAW_ANSWERS, province_claims


def _spent(service: str, topic: str, phase: str) -> float:
    return (
        REGISTRY.get_sample_value("gongji_hop_seconds_total", {"service": service, "topic": topic, "phase": phase})
        or 0.0
    )


def test_each_record_of_a_batch_is_charged_the_batch_phases_by_its_topic() -> None:
    claims, answers = province_claims("44"), DRAW_ANSWERS
    budget = HopBudget("unit-budget", [claims, answers])
    now_ms = time.time() * 1000
    records = [
        SimpleNamespace(topic=claims.name, timestamp=now_ms - 30),
        SimpleNamespace(topic=claims.name, timestamp=now_ms - 10),
        SimpleNamespace(topic=answers.name, timestamp=now_ms - 20),
    ]
    budget.handed(records)
    budget.done(handler=0.005, redis=0.008, publish=0.002)  # overlapping round trips exceed the handler's time

    pattern = claims.pattern
    assert 0.039 < _spent("unit-budget", pattern, "waiting") < 0.2
    assert _spent("unit-budget", pattern, "redis") == 2 * 0.005  # capped at the handler's own time
    assert _spent("unit-budget", pattern, "handler") == 0.0
    assert abs(_spent("unit-budget", pattern, "publish") - 2 * 0.002) < 1e-9
    assert abs(_spent("unit-budget", answers.name, "publish") - 0.002) < 1e-9
    assert REGISTRY.get_sample_value("gongji_hop_records_total", {"service": "unit-budget", "topic": pattern}) == 2


def test_the_report_gives_mean_milliseconds_per_record_and_adds_the_phases_of_every_hop() -> None:
    before, after = Counter(), Counter()
    for _, service, topic in CLAIM_HOPS:
        before[("gongji_hop_records", service, topic, "")] = 100
        after[("gongji_hop_records", service, topic, "")] = 300  # 200 records in the run
        for phase, seconds in (("waiting", 2.0), ("handler", 0.2), ("redis", 0.6), ("publish", 0.8)):
            after[("gongji_hop_seconds", service, topic, phase)] = seconds
    budget = claim_budget(before, after, client_wait_ms=5.0, end_to_end_mean_ms=50.0)

    hop = budget["hops_ms"]["claim → settlement"]
    assert hop == {"records": 200, "waiting": 10.0, "handler": 1.0, "redis": 3.0, "publish": 4.0}
    assert budget["accounted_ms"] == 3 * (10.0 + 1.0 + 3.0 + 4.0) + 5.0
    assert budget["end_to_end_mean_ms"] == 50.0


def test_a_pair_refused_after_it_became_ready_counts_as_ready_so_nothing_goes_negative() -> None:
    pairs = {("p1", "r1"): {}, ("p2", "r2"): {}, ("p3", "r3"): {}, ("p4", "r4"): {}}
    run = SimpleNamespace(
        pairs=pairs,
        ready={("p1", "r1"), ("p2", "r2")},
        refused={
            ("p2", "r2"): "rejected: DUPLICATE_RELATIONSHIP",  # a retried request
            ("p3", "r3"): "grant_rejected: QUOTA_EXCEEDS_BALANCE",
        },
    )
    refused, unanswered = LoadRun.setup_outcome(run)  # type: ignore[arg-type]
    assert refused == {("p3", "r3"): "grant_rejected: QUOTA_EXCEEDS_BALANCE"}
    assert unanswered == 1  # p4's family
