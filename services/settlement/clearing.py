"""Monthly full clearing (按月全额清算): closing a month turns its accumulators into a statement."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from services.settlement.domain import clearing_row_provinces, gross_lines, month_has_ended, net_positions
from services.settlement.store import SettlementStore
from shared.clock import rfc3339
from shared.contracts import ClearingRow
from shared.ids import derived_event_id
from shared.topics import CLEARING, Topic, province_clearing


class MonthNotEnded(ValueError):
    """Closing a month before it ended would move its remaining claims to the next month."""


async def close_month(store: SettlementStore, month: str, now: datetime) -> list[ClearingRow]:
    """Closes `month` shard by shard and returns its statement: gross rows per (payer, payee)
    province pair and one net row per province. Identical however often it is run; claims that
    finish after a shard is closed count in the next open month. Only an ended month is closed."""
    if not month_has_ended(month, now):
        raise MonthNotEnded(f"{month} has not ended (Asia/Shanghai): a month can be closed from the 1st of the next")
    amounts: dict[str, int] = defaultdict(int)
    closed_at = stamp = rfc3339(now)
    for prefix in store.all_shard_prefixes():
        shard_closed_at, totals = await store.close_month(prefix, month, stamp)
        closed_at = min(closed_at, shard_closed_at)
        for field, value in totals.items():
            amounts[field] += value
    lines = gross_lines(amounts)
    at = datetime.fromisoformat(closed_at)
    rows = [
        ClearingRow(
            event_id=derived_event_id("clearing", month, "gross", line.payer_province, line.payee_province),
            month=month,
            row="gross",
            payer_province=line.payer_province,
            payee_province=line.payee_province,
            amount_fen=line.amount_fen,
            claims=line.claims,
            reversals=line.reversals,
            closed_at=at,
        )
        for line in lines
    ]
    counts_by_province: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in lines:
        for province in (line.payer_province, line.payee_province):
            counts_by_province[province][0] += line.claims
            counts_by_province[province][1] += line.reversals
    rows += [
        ClearingRow(
            event_id=derived_event_id("clearing", month, "net", province),
            month=month,
            row="net",
            province=province,
            amount_fen=net,
            claims=counts_by_province[province][0],
            reversals=counts_by_province[province][1],
            closed_at=at,
        )
        for province, net in net_positions(lines).items()
    ]
    return rows


def statement_destinations(rows: list[ClearingRow]) -> list[tuple[Topic, ClearingRow]]:
    """Every row to the national topic, and to the own topic of each province it concerns."""
    return [(topic, row) for row in rows for topic in (CLEARING, *map(province_clearing, clearing_row_provinces(row)))]
