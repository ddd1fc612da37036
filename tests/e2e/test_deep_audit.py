"""`gongji audit --deep --json` on the running system, after every other test: the books rebuilt
from the whole history of the topics (test and demo runs, load runs, hostile input, conflicts,
kill -9 restarts) agree with Redis once what is in flight has landed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.after_all]


def deep_audit(*options: str) -> dict:
    audit = subprocess.run(
        [sys.executable, "-m", "gongji", "audit", "--deep", "--json", "--wait", "120", *options],
        capture_output=True,
        text=True,
        timeout=280,
    )
    report = json.loads(audit.stdout)
    assert report["valid?"], (report["differences_by_invariant"], report["first"])
    assert report["pending"] == [], report["pending"][:5]
    assert audit.returncode == 0, audit.stderr
    return report


def test_the_deep_audit_of_everything_so_far_is_valid(service_processes) -> None:
    """From scratch, then from the checkpoint the first wrote: the second judges only what came
    since, and counts the same books."""
    scratch = deep_audit("--from-scratch")
    assert scratch["counts"]["records"] > 0 and scratch["counts"]["persons"] > 0
    assert scratch["started_from"] is None and scratch["checkpoint_written"]
    checkpointed = deep_audit()
    assert checkpointed["started_from"] is not None
    assert checkpointed["counts"]["records_judged"] < checkpointed["counts"]["records_in_books"]
    for name in ("persons", "claims_final", "reversals", "relationships", "months"):
        assert checkpointed["counts"][name] >= scratch["counts"][name], name
