"""`gongji bench` through its command line, briefly, against the real broker and Redis. It starts
and stops the three services itself, so it belongs before the e2e tier, whose session keeps its own
services on the same ports; it adds a small valid population and its claims to the services' state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.settlement.handlers import SettlementHandlers
from services.settlement.store import SettlementStore
from services.wallet.handlers import WalletHandlers
from services.wallet.store import WalletStore
from shared.clock import FixedClock
from shared.policy import PolicyCache
from shared.settings import PROJECT_ROOT
from tests.benchmarks.test_benchmarks import NOON, _cost_per_claim, _preload

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
    # The deep audit ran in a child of its own, which reported its peak: the harness's is apart.
    assert result["audit_peak_resident_mib"] == result["per_run"][0]["audit_peak_resident_mib"] > 0
    assert {"relationship", "wallet", "settlement", "kafka", "redis"} <= set(result["cpu_us_per_claim_by_process"])


async def test_the_handler_benchmark_settles_every_claim_it_times(redis) -> None:
    """tests/benchmarks is outside the default run: this keeps its handler benchmark working (it had
    broken once, unnoticed, when the wallet's handlers took a policy cache)."""
    await WalletStore(redis).load()
    await SettlementStore(redis, 64).load()
    clock = FixedClock(NOON)
    wallet = WalletHandlers(WalletStore(redis), clock, PolicyCache(redis, 60))
    pairs = await _preload(wallet, SettlementHandlers(SettlementStore(redis, 64), clock), 0, 20)
    cost_us, histogram = await _cost_per_claim(redis, pairs, 400)
    assert cost_us > 0 and histogram.get_total_count() == 2  # two timed batches of 200
