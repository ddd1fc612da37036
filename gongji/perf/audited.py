"""The deep audit a harness runs at its end (load, bench, soak), in a process of its own.

Run in the harness, the audit's memory would stay in the harness's peak (and, over a benchmark's
runs, in every later run's). In a child it is given back when the child ends, and each figure is
reported on its own: the harness's, flat however long it runs, and the audit's (`peak_resident_mib`
in its report), flat however many records it reads (its books are on disk: gongji/audit/spill.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from gongji.audit.checkpoint import CheckpointInDoubt, CheckpointStore
from gongji.audit.deep import AuditUnavailable, deep_audit, report_json
from gongji.perf.results import peak_resident_mib
from shared.principals import OPERATOR
from shared.redis_client import connect
from shared.settings import Settings


async def audited_apart(
    settings: Settings,
    wait_seconds: float,
    checkpoints: CheckpointStore | None = None,
    from_scratch: bool = False,
) -> dict[str, Any]:
    """`deep_audit`'s JSON report, with the child's peak resident memory; an audit that could not
    read what it checks is a report that is not valid, saying why."""
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: none of the harness's memory
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
        return await asyncio.get_running_loop().run_in_executor(
            child, _audited_here, settings, wait_seconds, checkpoints, from_scratch
        )


def _audited_here(
    settings: Settings, wait_seconds: float, checkpoints: CheckpointStore | None, from_scratch: bool
) -> dict[str, Any]:
    async def audited() -> dict[str, Any]:
        redis = connect(settings, OPERATOR.name)
        try:
            return report_json(await deep_audit(settings, redis, wait_seconds, checkpoints, from_scratch))
        except (AuditUnavailable, CheckpointInDoubt) as error:
            return {"valid?": False, "first": str(error), "pending": [], "unavailable": str(error)}
        finally:
            await redis.aclose()

    return {**asyncio.run(audited()), "peak_resident_mib": peak_resident_mib()}
