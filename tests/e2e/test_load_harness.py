"""`gongji load` end to end on a small population: every claim gets exactly one result, the rest of
the mix is answered, the deep audit is valid, and the report (JSON and PNG) is written."""

from __future__ import annotations

import json
import uuid

import pytest
from rich.console import Console

from gongji.perf.load import LoadOptions, run_load, write_report

pytestmark = pytest.mark.timeout(240)


async def test_a_small_load_run_reports_every_claim_once(infrastructure, service_processes, tmp_path) -> None:
    # A new population each run (no seed), so that a second run on the same state is not refused
    # DUPLICATE_RELATIONSHIP; the harness's own deadlines end well before the test's.
    # Shares high enough that a run without a duplicate or a malformed claim is one in millions.
    options = LoadOptions(
        persons=60,
        rate=100,
        duration_seconds=3,
        duplicate_share=0.05,
        malformed_share=0.05,
        reversal_share=0.2,
        spend_share=0.1,
        freeze_share=0.02,
        enrollment_change_share=0.02,
        dissolve_share=0.02,
        report_dir=tmp_path,
        setup_timeout_seconds=90,
        drain_timeout_seconds=60,
    )
    report = await run_load(infrastructure, options, Console(quiet=True))
    population = report["population"]
    assert population["ready"] == population["relationships"] > 0, population
    claims = report["claims"]
    assert claims["published"] == 300  # rate × duration; duplicates and malformed ones come on top
    assert claims["with_result"] == claims["published"] and claims["with_more_than_one_result"] == 0
    assert claims["duplicates_sent"] > 0 and report["dead_letters_seen"] >= claims["malformed_sent"] > 0
    assert sum(report["by_status"].values()) == claims["published"]
    # The rest of the mix went out and every operation was answered.
    mix = report["mix"]
    assert {"reversal", "spend", "freeze"} <= set(mix), mix
    assert all(entry["answered"] == entry["sent"] > 0 for entry in mix.values()), mix
    assert set(mix["reversal"]["answers"]) <= {"reversed", "rejected"} and "reversed" in mix["reversal"]["answers"]
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    # The final check is the deep audit: the books rebuilt from the topics agree with Redis.
    assert report["audit"]["valid?"] and not report["audit"]["pending"], report["audit"]["first"]
    # Each figure its own process's: the audit ran in a child, which gave its memory back.
    assert report["harness"]["peak_resident_mib"] > 0 and report["audit"]["peak_resident_mib"] > 0
    json_path, png_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["throughput"]["offered_per_second"] == 100
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_seed_run_twice_on_one_state_says_why_nothing_was_ready(
    infrastructure, service_processes, tmp_path
) -> None:
    # No part of the mix may end a relationship of the first run (a dissolve, an insurance change),
    # or the second run could establish it again.
    options = LoadOptions(
        persons=6,
        rate=20,
        duration_seconds=1,
        duplicate_share=0,
        malformed_share=0,
        enrollment_change_share=0,
        dissolve_share=0,
        seed=uuid.uuid4().int % 10**9,
        report_dir=tmp_path,
        setup_timeout_seconds=90,
    )
    first = await run_load(infrastructure, options, Console(quiet=True))
    assert first["claims"]["with_result"] == 20
    with pytest.raises(RuntimeError, match="DUPLICATE_RELATIONSHIP") as refused:
        await run_load(infrastructure, options, Console(quiet=True))  # the same people, the same relationships
    assert "unanswered: 0" in str(refused.value)
