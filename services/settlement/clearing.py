"""Monthly full clearing (按月全额清算): closing a month turns its accumulators into a statement."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from services.settlement.domain import gross_lines, net_positions
from services.settlement.store import SettlementStore
from shared.contracts import ClearingRow
from shared.ids import derived_event_id


async def close_month(store: SettlementStore, month: str, now: str) -> list[ClearingRow]:
    """Closes `month` shard by shard and returns its statement: gross rows per (payer, payee)
    province pair and one net row per province. Identical however often it is run; claims that
    finish after a shard is closed count in the next open month."""
    amounts: dict[str, int] = defaultdict(int)
    closed_at = now
    for prefix in store.all_shard_prefixes():
        totals = await store.close_month(prefix, month, now)
        closed_at = min(closed_at, totals.pop("_closed_at"))
        for field, value in totals.items():
            amounts[field] += value
    lines = gross_lines(amounts)
    at = datetime.fromisoformat(closed_at)
    rows = [
        ClearingRow(
            event_id=derived_event_id("clearing", month, "gross", line.payer_province, line.payee_province),
            month=month, row="gross", payer_province=line.payer_province, payee_province=line.payee_province,
            amount_fen=line.amount_fen, claims=line.claims, closed_at=at,
        )
        for line in lines
    ]
    claims_by_province: dict[str, int] = defaultdict(int)
    for line in lines:
        claims_by_province[line.payer_province] += line.claims
        claims_by_province[line.payee_province] += line.claims
    rows += [
        ClearingRow(
            event_id=derived_event_id("clearing", month, "net", province), month=month, row="net",
            province=province, amount_fen=net, claims=claims_by_province[province], closed_at=at,
        )
        for province, net in net_positions(lines).items()
    ]
    return rows
