"""The audit's own figures of the statistics and the daily reconciliation, recomputed from the
settlements and dead letters as published (each event id once: its first copy), with arithmetic of
its own: it never imports the code it checks (services/settlement/statistics.py).

A result counts in the Asia/Shanghai minute and day of its `settled_at`; a settlement (settled or
partly) and a refund (reversed) in the day of their province pair, both sides.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError

from gongji.audit.books import Record
from shared.contracts import DeadLetter, SettlementEvent
from shared.topics import DEAD_LETTERS, SETTLEMENTS, pattern_of

SHANGHAI = timezone(timedelta(hours=8))  # China Standard Time has kept no daylight saving since 1991
TYPES = {"institution": "11", "pharmacy": "41", "resident_premium": "99", "ltc_premium": "99"}
ALL_TYPES = ("11", "21", "41", "99")
USES = frozenset(TYPES)
MEASURES = ("settlements", "medical_fen", "mutual_aid_fen", "refunds", "refunded_fen")
# The fields of a statistics snapshot and of a reconciliation this audit recomputes.
STATISTICS_FIELDS = frozenset(
    {
        "by_status",
        "by_category",
        "by_province_pair",
        "reversals_by_province_pair",
        "rejections_by_reason",
        "dead_letters",
        "latency",
    }
)
RECONCILIATION_SIDES = frozenset({"as_service", "as_insured"})


@dataclass
class Figures:
    """`minutes`: minute -> table -> key -> [count, fen]; `days`: day -> (side, province) ->
    table ('type' or 'counter') -> key -> measure -> amount."""

    minutes: dict[str, dict[str, dict[str, list[int]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    )
    days: dict[str, dict[tuple[str, str], dict[str, dict[str, dict[str, int]]]]] = field(
        default_factory=lambda: defaultdict(
            lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: dict.fromkeys(MEASURES, 0))))
        )
    )

    def statistics(self, minute: str) -> dict[str, Any]:
        """A minute as `gongji.statistics.v1` shows it (the fields this audit recomputes)."""
        tables = self.minutes.get(minute, {})
        shown = {
            name: [{"key": key, "count": count, "amount_fen": fen} for key, (count, fen) in sorted(table.items())]
            for name, table in (
                ("by_status", tables.get("status", {})),
                ("by_category", tables.get("category", {})),
                ("by_province_pair", tables.get("pair", {})),
                ("reversals_by_province_pair", tables.get("reversed_pair", {})),
                ("rejections_by_reason", tables.get("reason", {})),
                ("dead_letters", tables.get("dead", {})),
            )
        }
        shown["latency"] = [
            {"le_ms": int(bound), "count": count}
            for bound, (count, _) in sorted(tables.get("latency", {}).items(), key=lambda item: int(item[0]))
        ]
        return shown

    def reconciliation(self, day: str, province: str) -> dict[str, Any]:
        """A province's day as `gongji.…reconciliation.v1` shows it (both sides)."""
        shown: dict[str, Any] = {}
        for side, name in (("service", "as_service"), ("insured", "as_insured")):
            tables = self.days.get(day, {}).get((side, province), {})
            by_type = [{"key": key, **tables.get("type", {}).get(key, dict.fromkeys(MEASURES, 0))} for key in ALL_TYPES]
            shown[name] = {
                "total": {"key": "total", **{measure: sum(line[measure] for line in by_type) for measure in MEASURES}},
                "by_clearing_type": by_type,
                "by_counter_province": [
                    {"key": key, **line} for key, line in sorted(tables.get("counter", {}).items())
                ],
            }
        return shown


def figures(records: Iterable[Record]) -> Figures:
    """The figures of the settlements and dead letters among `records`: each event id once a day
    (the day of its time: a result published again keeps its time, an answer given again on another
    day is another answer), its first copy; a record that fits no contract is no event."""
    found = Figures()
    seen: set[tuple[str, str]] = set()
    for record in sorted(records, key=lambda one: (one.topic, one.partition, one.offset)):
        model = {SETTLEMENTS.name: SettlementEvent, DEAD_LETTERS.name: DeadLetter}.get(record.topic)
        if model is None:
            continue
        try:
            event = model.model_validate(record.value)
        except ValidationError:
            continue
        value = record.value or {}
        moment = value["at"] if isinstance(event, DeadLetter) else value["settled_at"]
        key = (str(event.event_id), _minute(moment)[:10])
        if event.event_id is None or key in seen:
            continue
        seen.add(key)
        if isinstance(event, DeadLetter):
            found.minutes[_minute(moment)]["dead"][pattern_of(value["source_topic"])][0] += 1
        else:
            _result(found, value)
    return found


def _result(found: Figures, value: dict[str, Any]) -> None:
    minute = _minute(value["settled_at"])
    tables = found.minutes[minute]
    status, paid = value["status"], value["paid_fen"]
    reversal = value.get("reverses") is not None or status == "reversed"
    category = "reversal" if reversal else (value.get("category") if value.get("category") in USES else "not_allowed")
    for table, key in (("status", status), ("category", category)):
        tables[table][key][0] += 1
        tables[table][key][1] += paid
    if status == "rejected" and value.get("reason"):
        tables["reason"][value["reason"]][0] += 1
    service_region, insured_region = value.get("service_region"), value.get("recipient_region")
    pairs = {"settled": "pair", "partial": "pair", "reversed": "reversed_pair"}
    if status in pairs and service_region:
        owed: dict[str, int] = defaultdict(int)  # cross-province only, by pair
        for payer in value.get("payers", []):
            if payer["provider_region"][:2] != service_region[:2]:
                owed[f"{payer['provider_region'][:2]}>{service_region[:2]}"] += payer["amount_fen"]
        for pair, amount in owed.items():
            tables[pairs[status]][pair][0] += 1
            tables[pairs[status]][pair][1] += amount
    if value.get("claim_sent_at"):
        elapsed = _moment(value["settled_at"]) - _moment(value["claim_sent_at"])
        tables["latency"][str(_bucket(max(0, int(elapsed.total_seconds() * 1000))))][0] += 1
    if status in ("settled", "partial"):
        measures = {"settlements": 1, "medical_fen": value["requested_fen"], "mutual_aid_fen": paid}
    elif status == "reversed":
        measures = {"refunds": 1, "refunded_fen": paid}
    else:
        return
    clearing_type = TYPES.get(value.get("category") or "", "99")
    service = service_region[:2] if service_region else "--"
    insured = insured_region[:2] if insured_region else "--"
    day = minute[:10]
    for side, province, counter in (("service", service, insured), ("insured", insured, service)):
        tables_of_day = found.days[day][(side, province)]
        for measure, amount in measures.items():
            tables_of_day["type"][clearing_type][measure] += amount
            tables_of_day["counter"][counter][measure] += amount


def _bucket(latency_ms: int) -> int:
    """Two significant digits, rounded up (1 ms at least)."""
    if latency_ms < 100:
        return max(1, latency_ms)
    step = 10 ** (int(math.log10(latency_ms)) - 1)
    return -(-latency_ms // step) * step


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _minute(text: str) -> str:
    return _moment(text).astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")
