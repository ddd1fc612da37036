"""`gongji audit --deep --json` on the running system, after every other test: the books rebuilt
from the whole history of the topics (test and demo runs, load runs, hostile input, conflicts,
kill -9 restarts) agree with Redis once what is in flight has landed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.after_all]


def test_the_deep_audit_of_everything_so_far_is_valid(service_processes) -> None:
    audit = subprocess.run(
        [sys.executable, "-m", "gongji", "audit", "--deep", "--json", "--wait", "120"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    report = json.loads(audit.stdout)
    assert report["valid?"], (report["differences_by_invariant"], report["first"])
    assert report["pending"] == [], report["pending"][:5]
    assert audit.returncode == 0, audit.stderr
    assert report["counts"]["records"] > 0 and report["counts"]["persons"] > 0
