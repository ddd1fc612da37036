"""`gongji faults` as an operator runs it, in a process of its own, for the tests that inject faults
(tests/cluster, tests/e2e/test_rolling_restart.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from gongji.ops import infra
from shared.settings import PROJECT_ROOT


def run_faults(arguments: list[str], environment: dict[str, str], timeout: float) -> dict:
    """The run's JSON summary (faults with their gaps, claims, failures), its gaps printed in the
    test's output. Fails the test, with the command's output, unless it exits 0."""
    finished = subprocess.run(
        [sys.executable, "-m", "gongji", "faults", *arguments, "--json"],
        cwd=PROJECT_ROOT,
        env={**infra.child_environment(), **environment},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # Checked first: a run that fails prints its reason, and no summary.
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    print(json.dumps(summary["faults"], indent=2))
    return summary
