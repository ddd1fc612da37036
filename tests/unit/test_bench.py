"""`gongji bench`'s arithmetic: CPU per claim, ratios, medians over runs, the failures it reports,
and the JSON object it prints."""

from __future__ import annotations

import json

from rich.console import Console

from gongji.perf.bench import BenchOptions, CpuWindow, claim_messages, run_result, summary, tables


def _report(
    with_result: int = 2_000,
    settled_per_second: float = 1_000.0,
    p50_ms: float = 180.0,
    p99_ms: float = 500.0,
    without_result: int = 0,
    valid: bool = True,
) -> dict:
    """The parts of a `gongji load` report that the bench reads: here every claim was sent in 2 s."""
    published = with_result + without_result
    return {
        "claims": {
            "published": published,
            "with_result": with_result,
            "without_result": without_result,
            "with_more_than_one_result": 0,
        },
        "timeline": [
            {"second": 0, "published": published // 2},
            {"second": 1, "published": published // 2},
            {"second": 2, "published": 0},
        ],
        "throughput": {"settled_per_second": settled_per_second},
        "latency_ms": {"p50": p50_ms, "p99": p99_ms},
        "audit": {
            "valid?": valid,
            "pending": [],
            "first": None if valid else "claim c-1: paid twice",
            "peak_resident_mib": 400.0,
        },
        "harness": {"peak_resident_mib": 90.0},
    }


def _window(spent: dict[str, float], wall_seconds: float = 2.0) -> CpuWindow:
    window = CpuWindow({})
    window.spent, window.wall_seconds = spent, wall_seconds
    return window


def test_cpu_per_claim_is_each_process_time_over_the_claims_and_services_add_up() -> None:
    spent = {"relationship": 0.02, "wallet": 0.3, "settlement": 0.5, "kafka": 0.4, "redis": 0.1}
    run = run_result(10_000.0, _report(with_result=2_000), _window(spent))
    assert run["cpu_us_per_claim_by_process"] == {
        "relationship": 10.0,
        "wallet": 150.0,
        "settlement": 250.0,
        "kafka": 200.0,
        "redis": 50.0,
    }
    assert run["cpu_us_per_claim"] == 410.0  # the three services only; the broker and Redis apart
    assert run["ratio"] == 0.1 and run["claims_per_s"] == 1_000.0 and run["baseline_msgs_per_s"] == 10_000.0
    assert run["sent_per_s"] == 1_000.0  # 2,000 claims sent over the seconds 0 and 1
    assert (run["p50_ms"], run["p99_ms"], run["claims"], run["failures"]) == (180.0, 500.0, 2_000, [])


def test_a_run_without_results_has_no_cpu_per_claim() -> None:
    run = run_result(
        10_000.0, _report(with_result=0, settled_per_second=0.0, without_result=5), _window({"wallet": 0.3})
    )
    assert run["cpu_us_per_claim"] is None and run["cpu_us_per_claim_by_process"] == {"wallet": None}
    assert run["failures"] == ["5 claims without a result"]


def test_a_bad_audit_is_a_failure_named_with_its_first_difference() -> None:
    run = run_result(10_000.0, _report(valid=False), _window({}))
    assert run["failures"] == ["the deep audit is not valid: claim c-1: paid twice"]


def test_the_summary_holds_the_medians_of_the_runs_and_the_median_ratio() -> None:
    runs = [
        run_result(baseline, _report(settled_per_second=settled, p99_ms=p99), _window({"wallet": wallet}))
        for baseline, settled, p99, wallet in (
            (10_000.0, 1_000.0, 400.0, 0.2),
            (8_000.0, 1_200.0, 900.0, 0.4),
            (12_000.0, 900.0, 600.0, 0.3),
        )
    ]
    result = summary(BenchOptions(runs=3), runs)
    assert result["baseline_msgs_per_s"] == 10_000.0 and result["claims_per_s"] == 1_000.0
    assert result["ratio"] == 0.1  # the median of 0.1, 0.15 and 0.075: each run against its own baseline
    assert result["p99_ms"] == 600.0 and result["cpu_us_per_claim"] == 150.0
    assert result["cpu_us_per_claim_by_process"] == {"wallet": 150.0}
    assert result["runs"] == 3 and result["per_run"] == runs and result["failures"] == []


def test_failures_of_each_run_are_named_by_run() -> None:
    runs = [run_result(10_000.0, _report(), _window({})), run_result(10_000.0, _report(without_result=3), _window({}))]
    assert summary(BenchOptions(runs=2), runs)["failures"] == ["run 2: 3 claims without a result"]


def test_the_json_line_is_one_object_with_the_figures_at_the_top() -> None:
    result = summary(BenchOptions(runs=1), [run_result(10_000.0, _report(), _window({"wallet": 0.3}))])
    line = json.dumps(result, ensure_ascii=False)
    assert "\n" not in line
    parsed = json.loads(line)
    assert {
        "baseline_msgs_per_s",
        "sent_per_s",
        "claims_per_s",
        "ratio",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_claim",
        "runs",
        "per_run",
        "harness_peak_resident_mib",
        "audit_peak_resident_mib",
    } <= set(parsed)
    assert parsed["harness_peak_resident_mib"] > 0
    assert parsed["audit_peak_resident_mib"] == 400.0  # the largest run's, from its audit's own report
    console = Console(record=True, width=160)
    for table in tables(result):
        console.print(table)
    assert "median" in console.export_text()


def test_baseline_messages_are_claims_of_a_real_claims_size_keyed_by_recipient() -> None:
    messages = list(claim_messages(3))
    claims = [json.loads(value) for value, _ in messages]
    assert len({claim["claim_id"] for claim in claims}) == 3
    assert all(key.decode() == claim["recipient_id"] for (_, key), claim in zip(messages, claims, strict=True))
    assert all(290 <= len(value) <= 340 for value, _ in messages)  # `gongji load`'s claims: about 300–440 bytes
