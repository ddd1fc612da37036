"""A rolling restart under load (`gongji faults --fault rolling`): two instances of each service,
each stopped as a deploy stops it (SIGTERM: it commits what is confirmed and leaves its group) and
started again, one at a time, each healthy before the next, while claims with 10% duplicates flow.
Nothing is lost and nothing paid twice: every claim has exactly one result, the deep audit valid."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gongji.ops import infra
from shared.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.timeout(600)

PORT_BASE = 19280  # its instances' operations ports, apart from the other tests' services


def test_a_rolling_restart_loses_nothing_and_pays_nothing_twice(infrastructure: Settings) -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "gongji",
            "faults",
            "--fault",
            "rolling",
            "--duration",
            "60",
            "--rate",
            "30",
            "--persons",
            "300",
            "--json",
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env={**infra.child_environment(), "GONGJI_HTTP_PORT_BASE": str(PORT_BASE)},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    print(json.dumps(summary["faults"], indent=2))
    (rolling,) = summary["faults"]
    assert "not healthy" not in rolling["killed"] and rolling["node"] == "6", rolling  # 2 of each of 3
    assert summary["failures"] == []
    assert summary["claims"]["without_result"] == summary["claims"]["with_more_than_one_result"] == 0
    assert summary["claims"]["duplicates_sent"] > 0
