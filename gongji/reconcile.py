"""`gongji reconcile`: a day's reconciliation (对账) as the settlement service holds it, checked
against the ledger: the day recomputed by the audit's own arithmetic (gongji/audit/figures.py)
from every settlement published."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gongji.audit.books import Record
from gongji.audit.figures import RECONCILIATION_SIDES, figures
from services.settlement.statistics import reconciliations
from services.settlement.store import Tallies
from shared.clock import Clock, day_start
from shared.contracts import ReconciliationDay


@dataclass(frozen=True)
class Reconciled:
    """A province's day as held, and where it differs from the ledger (empty: it matches)."""

    day: ReconciliationDay
    differences: list[str]


async def held(redis: Redis, shards: int, day: str, clock: Clock, settle_seconds: int) -> list[ReconciliationDay]:
    """Every province's day (YYYY-MM-DD) as the settlement service holds it now."""
    now = clock.now()
    ended = (now - day_start(day)).total_seconds() >= 86400 + settle_seconds
    return reconciliations(day, await Tallies(redis, shards).sums("day", day), ended, now)


def checked(days: list[ReconciliationDay], records: list[Record]) -> list[Reconciled]:
    """Each day held, against the ledger rebuilt from `records` (the settlements topic)."""
    ledger = figures(records)
    return [
        Reconciled(
            day,
            differences(
                day.model_dump(mode="json", include=set(RECONCILIATION_SIDES)),
                ledger.reconciliation(day.day, day.province),
            ),
        )
        for day in days
    ]


def differences(held: dict[str, Any], ledger: dict[str, Any], where: str = "") -> list[str]:
    """Every figure that differs, as `as_service.by_counter_province[53].settlements: 3 held, 4 in the ledger`."""
    if isinstance(held, dict) and isinstance(ledger, dict):
        return [
            difference
            for name in sorted((set(held) | set(ledger)) - {"key"})
            for difference in differences(held.get(name), ledger.get(name), f"{where}.{name}" if where else name)
        ]
    if isinstance(held, list) and isinstance(ledger, list):
        by_key = {line["key"]: line for line in held}, {line["key"]: line for line in ledger}
        return [
            difference
            for key in sorted(set(by_key[0]) | set(by_key[1]))
            for difference in differences(by_key[0].get(key, {}), by_key[1].get(key, {}), f"{where}[{key}]")
        ]
    if (held or 0) != (ledger or 0):
        return [f"{where}: {held or 0} held, {ledger or 0} in the ledger"]
    return []
