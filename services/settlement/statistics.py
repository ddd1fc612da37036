"""The exact statistics and the daily reconciliation (对账), pure: what one published result or dead
letter adds to its minute and its day, and the snapshots and reconciliations read back from the
sums. The counts live in Redis as hash fields (`table|key|measure` for a minute,
`side|province|clearing type|counter-province|measure` for a day); the store adds each event's once.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.settlement.domain import ALLOWED_CATEGORIES, clearing_contributions, statistics_category
from shared.clock import day_start, shanghai_minute
from shared.contracts import (
    DeadLetter,
    LatencyBucket,
    ReconciliationDay,
    ReconciliationLine,
    ReconciliationSide,
    SettlementEvent,
    StatisticsCount,
    StatisticsSnapshot,
)
from shared.ids import derived_event_id, fingerprint, province_of
from shared.topics import PROVINCES
from shared.window import ClaimWindow

# Every snapshot is the whole minute's, whichever instance folded its results.
INSTANCE = "gongji"
# The national platform's clearing types (结算类别): a claim at an institution is outpatient care; no
# claim says it is inpatient yet (21 stays 0); the premiums are "other".
CLEARING_TYPES = ("11", "21", "41", "99")
CLEARING_TYPE_OF_CATEGORY = {"institution": "11", "pharmacy": "41", "resident_premium": "99", "ltc_premium": "99"}
assert set(CLEARING_TYPE_OF_CATEGORY) == ALLOWED_CATEGORIES
SETTLED = frozenset({"settled", "partial"})
# A day's measures: settlements, their medical total, mutual aid paid; refunds, what they gave back.
MEASURES = {"n": "settlements", "m": "medical_fen", "a": "mutual_aid_fen", "r": "refunds", "f": "refunded_fen"}
SIDES = {"s": "as_service", "i": "as_insured"}


@dataclass
class Counted:
    """What one event adds: to its Asia/Shanghai minute (statistics) and, for a settlement or a
    refund, to its day (reconciliation)."""

    minute: str  # YYYY-MM-DDTHH:MM
    minute_fields: dict[str, int] = field(default_factory=dict)
    day_fields: dict[str, int] = field(default_factory=dict)

    @property
    def day(self) -> str:
        return self.minute[:10]

    def add(self, fields: dict[str, int], name: str, amount: int) -> None:
        fields[name] = fields.get(name, 0) + amount


def counted_result(event: SettlementEvent) -> Counted:
    """A result (a claim's or a reversal's, or a refusal) in the minute of its `settled_at`."""
    counted = Counted(shanghai_minute(event.settled_at))
    minute = counted.minute_fields
    kind = "reverse" if event.reverses is not None or event.status == "reversed" else "settle"
    for table, key in (("status", event.status), ("category", statistics_category(kind, event.category))):
        counted.add(minute, f"{table}|{key}|n", 1)
        counted.add(minute, f"{table}|{key}|fen", event.paid_fen)
    if event.status == "rejected" and event.reason:
        counted.add(minute, f"reason|{event.reason}|n", 1)
    # What the clearing counts: a month's gross line is its pair's amounts less its reversed ones.
    table = "pair" if event.status in SETTLED else "reversed_pair" if event.status == "reversed" else None
    if table and event.service_region:
        for pair, amount in clearing_contributions(event.payers, event.service_region).items():
            counted.add(minute, f"{table}|{pair}|n", 1)
            counted.add(minute, f"{table}|{pair}|fen", amount)
    if event.claim_sent_at is not None:
        latency_ms = max(0, int((event.settled_at - event.claim_sent_at).total_seconds() * 1000))
        counted.add(minute, f"latency|{latency_bound(latency_ms)}|n", 1)
    _add_to_day(counted, event)
    return counted


def _add_to_day(counted: Counted, event: SettlementEvent) -> None:
    if event.status in SETTLED:
        measures = {"n": 1, "m": event.requested_fen, "a": event.paid_fen}
    elif event.status == "reversed":
        measures = {"r": 1, "f": event.paid_fen}
    else:
        return
    clearing_type = CLEARING_TYPE_OF_CATEGORY.get(event.category or "", "99")
    service = province_of(event.service_region) if event.service_region else "--"
    insured = province_of(event.recipient_region) if event.recipient_region else "--"
    for side, province, counter in (("s", service, insured), ("i", insured, service)):
        for measure, amount in measures.items():
            counted.add(counted.day_fields, f"{side}|{province}|{clearing_type}|{counter}|{measure}", amount)


def day_kept_until(day: str, days_kept: timedelta, window: ClaimWindow) -> datetime:
    """Until when a day's sums and the ids counted in it are kept: `days_kept` from its start, and at
    least as long as a result of the day may be published again (its claim held). An event of a day
    no longer kept is not counted: the ids that would tell a copy of it are gone."""
    return max(day_start(day) + days_kept, window.answers_kept_until(day))


def counted_dead_letter(letter: DeadLetter, source_pattern: str) -> Counted:
    """A dead letter, by the pattern of its source topic, in the minute it was written."""
    counted = Counted(shanghai_minute(letter.at))
    counted.add(counted.minute_fields, f"dead|{source_pattern}|n", 1)
    return counted


def latency_bound(latency_ms: int) -> int:
    """The upper bound of a latency's bucket: the latency rounded up to two significant digits."""
    if latency_ms < 100:
        return max(1, latency_ms)
    scale = 10 ** (len(str(latency_ms)) - 2)
    return math.ceil(latency_ms / scale) * scale


def snapshot(minute: str, fields: dict[str, int], now: datetime) -> StatisticsSnapshot:
    """A minute's snapshot from its summed fields."""
    tables: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for name, value in fields.items():
        table, key, measure = name.split("|")
        tables[table][key][0 if measure == "n" else 1] += value
    latency = sorted((int(bound), counts[0]) for bound, counts in tables["latency"].items())
    revision = sum(count for count, _ in tables["status"].values()) + sum(count for count, _ in tables["dead"].values())
    return StatisticsSnapshot(
        # Two instances reading a minute being counted may see the same number of results but not
        # the same ones: the figures are part of the id.
        event_id=derived_event_id("settlement", "statistics", minute, str(revision), _figures_of(fields)),
        instance=INSTANCE,
        minute=minute,
        by_status=_counts(tables["status"]),
        by_category=_counts(tables["category"]),
        by_province_pair=_counts(tables["pair"]),
        reversals_by_province_pair=_counts(tables["reversed_pair"]),
        rejections_by_reason=_counts(tables["reason"]),
        dead_letters=_counts(tables["dead"]),
        latency=[LatencyBucket(le_ms=bound, count=count) for bound, count in latency],
        latency_p50_ms=percentile(latency, 0.50),
        latency_p99_ms=percentile(latency, 0.99),
        revision=revision,
        published_at=now,
    )


def percentile(buckets: Iterable[tuple[int, int]], rank: float) -> int | None:
    """The bound of the bucket holding the `rank` quantile (buckets sorted by bound), None if empty."""
    buckets = list(buckets)
    total = sum(count for _, count in buckets)
    if not total:
        return None
    wanted, seen = math.ceil(rank * total), 0
    for bound, count in buckets:
        seen += count
        if seen >= wanted:
            return bound
    return buckets[-1][0]


def reconciliations(day: str, fields: dict[str, int], final: bool, now: datetime) -> list[ReconciliationDay]:
    """Every province's day (YYYY-MM-DD) from the day's summed fields, one each, empty ones too."""
    lines: dict[tuple[str, str], dict[str, dict[str, dict[str, int]]]] = defaultdict(
        lambda: {"type": defaultdict(dict), "counter": defaultdict(dict)}
    )
    for name, value in fields.items():
        side, province, clearing_type, counter, measure = name.split("|")
        for table, key in (("type", clearing_type), ("counter", counter)):
            line = lines[(side, province)][table][key]
            line[MEASURES[measure]] = line.get(MEASURES[measure], 0) + value
    days = []
    for province in PROVINCES:
        sides = {name: _side(lines.get((side, province))) for side, name in SIDES.items()}
        revision = sum(side.total.settlements + side.total.refunds for side in sides.values())
        figures = _figures_of(
            {f"{name}.{measure}": value for name, side in sides.items() for measure, value in _flat(side)}
        )
        days.append(
            ReconciliationDay(
                event_id=derived_event_id(
                    "settlement", "reconciliation", province, day, str(revision), str(final), figures
                ),
                province=province,
                day=day,
                final=final,
                revision=revision,
                published_at=now,
                **sides,
            )
        )
    return days


def _side(tables: dict[str, dict[str, dict[str, int]]] | None) -> ReconciliationSide:
    tables = tables or {"type": {}, "counter": {}}
    by_type = [ReconciliationLine(key=key, **tables["type"].get(key, {})) for key in CLEARING_TYPES]
    total = ReconciliationLine(
        key="total",
        **{measure: sum(getattr(line, measure) for line in by_type) for measure in MEASURES.values()},
    )
    by_counter = [ReconciliationLine(key=key, **line) for key, line in sorted(tables["counter"].items())]
    return ReconciliationSide(total=total, by_clearing_type=by_type, by_counter_province=by_counter)


def _figures_of(fields: dict[str, int]) -> str:
    return fingerprint(json.dumps(sorted(fields.items())))


def _flat(side: ReconciliationSide) -> list[tuple[str, int]]:
    """Every figure of a side, named by its line."""
    lines = [
        side.total,
        *side.by_clearing_type,
        *(line.model_copy(update={"key": f"c{line.key}"}) for line in side.by_counter_province),
    ]
    return [(f"{line.key}.{measure}", getattr(line, measure)) for line in lines for measure in MEASURES.values()]


def _counts(table: dict[str, list[int]]) -> list[StatisticsCount]:
    return [StatisticsCount(key=key, count=count, amount_fen=amount) for key, (count, amount) in sorted(table.items())]
