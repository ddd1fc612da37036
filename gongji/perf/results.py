"""What `gongji load` keeps of the claims it sent, in memory that grows with the rate and not with
the length of the run: a claim is held from its publication to its first result; after that only
its first result's id, for a while, to notice a second result; its latency goes into HDR
histograms, and each second of the timeline is reduced to its figures once it has passed."""

from __future__ import annotations

from collections import Counter, deque
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

LATENCY_MAX_US = 600_000_000
# A claim's second result comes from a step done again after a crash or a rebalance: seconds to
# minutes after its first. Later ones are left to the deep audit, which checks every claim.
REPEAT_WINDOW_NS = 300 * 1_000_000_000


class ClaimResults:
    def __init__(self, started_ns: int, repeat_window_ns: int = REPEAT_WINDOW_NS) -> None:
        self.started_ns = started_ns
        self.repeat_window_ns = repeat_window_ns
        self.in_flight: dict[str, int] = {}  # claim id -> when it was published
        self.with_result = 0
        self.with_more_than_one_result = 0
        self.by_status: Counter[str] = Counter()
        self.by_category: Counter[str] = Counter()
        self.rejections_by_reason: Counter[str] = Counter()
        self.histogram = HdrHistogram(1, LATENCY_MAX_US, 3)
        # Claims answered within the repeat window: id -> first result's id (None: counted repeated).
        self._answered: dict[str, str | None] = {}
        self._answered_order: deque[tuple[int, str]] = deque()
        self._seconds: dict[int, dict[str, Any]] = {}  # the timeline, by second since `started_ns`
        self._open_seconds: dict[int, HdrHistogram] = {}  # latencies of the seconds still filling

    @property
    def published(self) -> int:
        return self.with_result + len(self.in_flight)

    def sent(self, claim_id: str, now_ns: int) -> None:
        self.in_flight[claim_id] = now_ns
        self._second(now_ns)["published"] += 1

    def result(self, claim_id: str, event_id: str, value: dict[str, Any], now_ns: int) -> int | None:
        """Takes a settlement event; returns the claim's latency in µs if it is the first result
        of a claim this run sent, else None."""
        self._forget_answered_before(now_ns - self.repeat_window_ns)
        published_ns = self.in_flight.pop(claim_id, None)
        if published_ns is None:
            first = self._answered.get(claim_id, event_id)
            if first is not None and first != event_id:
                self.with_more_than_one_result += 1
                self._answered[claim_id] = None  # one claim counted once, however many results
            return None
        self._answered[claim_id] = event_id
        self._answered_order.append((now_ns, claim_id))
        self.with_result += 1
        self.by_status[value["status"]] += 1
        self.by_category[value.get("category")] += 1
        if value.get("reason"):
            self.rejections_by_reason[value["reason"]] += 1
        latency_us = max(1, (now_ns - published_ns) // 1000)
        self.histogram.record_value(latency_us)
        self._second(now_ns)["settled"] += 1
        self._open_seconds[self._index(now_ns)].record_value(latency_us)
        return latency_us

    def timeline(self) -> list[dict[str, Any]]:
        """Each second since the start: claims published, first results, and their p50, p99 and
        longest wait."""
        self._close_seconds_before(None)
        return [{"second": second, **figures} for second, figures in sorted(self._seconds.items())]

    def _index(self, now_ns: int) -> int:
        return (now_ns - self.started_ns) // 1_000_000_000

    def _second(self, now_ns: int) -> dict[str, Any]:
        index = self._index(now_ns)
        if index not in self._seconds:
            self._close_seconds_before(index)
            self._seconds[index] = {"published": 0, "settled": 0}
            self._open_seconds[index] = HdrHistogram(1, LATENCY_MAX_US, 2)
        return self._seconds[index]

    def _close_seconds_before(self, index: int | None) -> None:
        for second in [one for one in self._open_seconds if index is None or one < index]:
            histogram = self._open_seconds.pop(second)
            if histogram.get_total_count():
                self._seconds[second]["p50_ms"] = histogram.get_value_at_percentile(50) / 1000
                self._seconds[second]["p99_ms"] = histogram.get_value_at_percentile(99) / 1000
                self._seconds[second]["max_ms"] = histogram.get_max_value() / 1000

    def _forget_answered_before(self, horizon_ns: int) -> None:
        while self._answered_order and self._answered_order[0][0] < horizon_ns:
            _, claim_id = self._answered_order.popleft()
            self._answered.pop(claim_id, None)


def peak_resident_mib() -> float:
    """This process's own peak resident memory so far (`VmHWM`, which starts again at exec): a
    spawned child's `ru_maxrss` keeps its parent's peak (gongji/perf/audited.py's audit child)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)  # in kB
    raise RuntimeError("no VmHWM in /proc/self/status")
