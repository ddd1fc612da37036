"""The deep audit a harness runs at its end, in a child process: its report and its peak memory come
back across the process boundary, and so does a refusal, in words."""

from __future__ import annotations

import pytest

from gongji.audit.checkpoint import CheckpointStore
from gongji.audit.deep import _cluster_id
from gongji.perf.audited import audited_apart
from shared.settings import Settings

pytestmark = pytest.mark.timeout(120)


async def test_an_audit_apart_that_cannot_trust_its_checkpoint_says_why(infrastructure: Settings, tmp_path) -> None:
    checkpoints = CheckpointStore(tmp_path / "audit", b"k" * 32)
    checkpoints.directory.mkdir()
    checkpoints.path(await _cluster_id(infrastructure)).write_text('{"body": {}, "seal": "forged"}')
    report = await audited_apart(infrastructure, wait_seconds=0, checkpoints=checkpoints)
    assert report["valid?"] is False
    assert "fails its seal" in report["unavailable"] and report["first"] == report["unavailable"]
    assert report["peak_resident_mib"] > 0
