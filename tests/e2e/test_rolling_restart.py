"""A rolling restart under load (`gongji faults --fault rolling`): two instances of each service,
each stopped as a deploy stops it (SIGTERM: it commits what is confirmed and leaves its group) and
started again, one at a time, each healthy before the next, while claims with 10% duplicates flow.
Nothing is lost and nothing paid twice: every claim has exactly one result, the deep audit valid."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from tests.faults_cli import run_faults

pytestmark = pytest.mark.timeout(600)

PORT_BASE = 19280  # its instances' operations ports, apart from the other tests' services


def test_a_rolling_restart_loses_nothing_and_pays_nothing_twice(infrastructure: Settings) -> None:
    options = ["--fault", "rolling", "--duration", "60", "--rate", "30", "--persons", "300"]
    summary = run_faults(options, {"GONGJI_HTTP_PORT_BASE": str(PORT_BASE)}, timeout=540)
    (rolling,) = summary["faults"]
    assert "not healthy" not in rolling["killed"] and rolling["node"] == "6", rolling  # 2 of each of 3
    assert summary["failures"] == []
    assert summary["claims"]["without_result"] == summary["claims"]["with_more_than_one_result"] == 0
    assert summary["claims"]["duplicates_sent"] > 0
