"""The deep audit's waits: in flight has a limit, and a Redis that is loading its data is waited
for (within a bound) instead of ending the audit with a traceback."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
from redis.exceptions import BusyLoadingError

from gongji.audit import deep
from gongji.audit.checkpoint import Cut
from gongji.audit.compare import IN_FLIGHT, AuditReport, Pending
from gongji.audit.state import RedisState
from shared.settings import Settings


def report_with(*pending: Pending) -> AuditReport:
    return AuditReport([], list(pending), {"differences": 0, "pending": len(pending)})


def audits(monkeypatch, *reports: AuditReport) -> None:
    """Each attempt of the audit finds the next report (the last one again once they run out)."""
    sequence = list(reports)

    async def audit_once(settings, redis, checkpoint):
        return (sequence.pop(0) if len(sequence) > 1 else sequence[0]), 0.0, Cut(datetime.now(UTC), {})

    monkeypatch.setattr(deep, "_audit_once", audit_once)
    monkeypatch.setattr(deep.asyncio, "sleep", _no_sleep)


async def _no_sleep(_: float) -> None:
    return None


STUCK = Pending("refund on its way to the wallet", {"claim": "c-1", "provider": "p"})
LANDING = Pending("claim drawing: the wallet's answer is on its way", {"claim": "c-2"})


async def test_what_is_still_pending_after_the_wait_is_a_difference_not_a_valid_report(monkeypatch) -> None:
    """A refund that never reached the wallet was `valid? True` with one pending line (issue 21)."""
    audits(monkeypatch, report_with(STUCK))
    result = await deep.deep_audit(Settings(), None, wait_seconds=0.05)
    assert not result.report.valid and result.attempts > 1
    (difference,) = result.report.differences
    assert (difference.invariant, difference.ids) == (IN_FLIGHT, STUCK.ids)
    assert "still pending after 0.05 s: refund on its way" in difference.what and result.report.pending == []


async def test_a_live_system_whose_steps_each_land_is_valid_though_new_ones_are_in_flight(monkeypatch) -> None:
    audits(monkeypatch, report_with(STUCK), report_with(LANDING))
    result = await deep.deep_audit(Settings(), None, wait_seconds=0.05)
    assert result.report.valid and result.report.pending == [LANDING]


async def test_without_a_wait_nothing_is_judged_stuck(monkeypatch) -> None:
    audits(monkeypatch, report_with(STUCK))
    result = await deep.deep_audit(Settings(), None, wait_seconds=0)
    assert result.report.valid and result.report.pending == [STUCK] and result.attempts == 1


async def test_a_redis_loading_its_data_is_waited_for_and_said(monkeypatch) -> None:
    replies: list = [BusyLoadingError("Redis is loading the dataset in memory")] * 3 + [RedisState()]

    async def read_state(redis, today):
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(deep, "read_state", read_state)
    monkeypatch.setattr(deep.asyncio, "sleep", _no_sleep)
    state, waited = await deep._read_state_once_loaded(None, "20260302")
    assert isinstance(state, RedisState) and replies == [] and waited > 0


async def test_a_redis_read_at_once_is_no_wait_however_long_the_read(monkeypatch) -> None:
    async def read_state(redis, today):
        await asyncio.sleep(0.05)  # a large state
        return RedisState()

    monkeypatch.setattr(deep, "read_state", read_state)
    assert (await deep._read_state_once_loaded(None, "20260302"))[1] == 0.0


async def test_a_redis_that_keeps_loading_past_the_bound_is_said_in_words(monkeypatch) -> None:
    async def read_state(redis, today):
        raise BusyLoadingError("Redis is loading the dataset in memory")

    monkeypatch.setattr(deep, "read_state", read_state)
    monkeypatch.setattr(deep.asyncio, "sleep", _no_sleep)
    monkeypatch.setattr(deep, "REDIS_LOADING_SECONDS", 0.01)
    with pytest.raises(deep.AuditUnavailable, match="Redis was still loading its data"):
        await deep._read_state_once_loaded(None, "20260302")


async def test_books_that_cannot_be_kept_on_disk_are_said_in_words(monkeypatch) -> None:
    async def audit_once(settings, redis, checkpoint):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(deep, "_audit_once", audit_once)
    with pytest.raises(deep.AuditUnavailable, match="could not keep its books on disk .database or disk is full"):
        await deep.deep_audit(Settings(), None)
