"""`gongji bench` through its command line, briefly, against the real broker and Redis. It starts
and stops the three services itself, so it belongs before the e2e tier, whose session keeps its own
services on the same ports; it adds a small valid population and its claims to the services' state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.settings import PROJECT_ROOT

pytestmark = pytest.mark.timeout(300)


def test_bench_prints_its_figures_as_one_json_object_on_the_last_line(infrastructure) -> None:
    # A low rate and a small population keep it short on CI's two cores; the figures are only printed.
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "gongji",
            "bench",
            "--duration",
            "5",
            "--runs",
            "1",
            "--rate",
            "300",
            "--persons",
            "200",
            "--json",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert {
        "baseline_msgs_per_s",
        "claims_per_s",
        "ratio",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_claim",
        "cpu_us_per_claim_by_process",
        "runs",
        "per_run",
        "failures",
    } <= set(result)
    assert result["claims_per_s"] > 0 and result["ratio"] > 0 and result["cpu_us_per_claim"] > 0
    assert result["runs"] == len(result["per_run"]) == 1 and result["failures"] == []
    assert result["per_run"][0]["claims"] == 1_500  # every claim offered (rate × duration) had its result
    assert {"relationship", "wallet", "settlement", "kafka", "redis"} <= set(result["cpu_us_per_claim_by_process"])
