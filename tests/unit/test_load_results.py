"""What `gongji load` keeps of its claims (gongji/perf/results.py): right counts, and memory that
does not grow with the number of claims answered."""

from __future__ import annotations

import gc
import tracemalloc

from gongji.perf.results import ClaimResults, peak_resident_mib

SECOND = 1_000_000_000
SETTLED = {"status": "settled", "category": "pharmacy", "reason": None}
REJECTED = {"status": "rejected", "category": "institution", "reason": "NO_QUOTA"}


def test_a_first_result_is_counted_with_its_latency_and_a_repeat_of_it_is_not() -> None:
    claims = ClaimResults(started_ns=0)
    claims.sent("c1", 0)
    claims.sent("c2", 0)
    assert claims.result("c1", "e1", SETTLED, 250_000_000) == 250_000
    assert claims.result("c1", "e1", SETTLED, 260_000_000) is None  # the same event read again
    assert claims.result("not-ours", "e9", SETTLED, 270_000_000) is None
    assert claims.result("c2", "e2", REJECTED, 2 * SECOND) == 2_000_000
    assert (claims.published, claims.with_result, len(claims.in_flight)) == (2, 2, 0)
    assert claims.with_more_than_one_result == 0
    assert claims.by_status == {"settled": 1, "rejected": 1}
    assert claims.rejections_by_reason == {"NO_QUOTA": 1}


def test_a_second_result_of_one_claim_is_counted_once_however_many_come() -> None:
    claims = ClaimResults(started_ns=0)
    claims.sent("c1", 0)
    claims.result("c1", "e1", SETTLED, SECOND)
    claims.result("c1", "e2", SETTLED, 2 * SECOND)
    claims.result("c1", "e3", SETTLED, 3 * SECOND)
    assert claims.with_more_than_one_result == 1
    assert claims.with_result == 1


def test_the_timeline_has_each_seconds_figures() -> None:
    claims = ClaimResults(started_ns=0)
    for number in range(10):
        claims.sent(f"c{number}", number * SECOND // 10)
    for number in range(10):
        claims.result(f"c{number}", f"e{number}", SETTLED, SECOND + number * SECOND // 10 + 5_000_000)
    timeline = claims.timeline()
    assert [(point["second"], point["published"], point["settled"]) for point in timeline] == [(0, 10, 0), (1, 0, 10)]
    assert 1_000 <= timeline[1]["p50_ms"] <= 1_010 and "p50_ms" not in timeline[0]
    assert 1_000 <= timeline[1]["max_ms"] <= 1_010 and "max_ms" not in timeline[0]


def test_answered_claims_are_forgotten_after_the_repeat_window_so_memory_stays_flat() -> None:
    claims = ClaimResults(started_ns=0, repeat_window_ns=SECOND)
    step = SECOND // 2_000  # 2,000 claims answered within one repeat window

    def answer(numbers: range) -> None:
        for number in numbers:
            claims.sent(f"claim-{number:012d}", number * step)
            claims.result(f"claim-{number:012d}", f"event-{number:012d}", SETTLED, number * step + 1)

    tracemalloc.start()
    answer(range(4_000))  # past the first window: what is kept is in its steady state
    gc.collect()  # a histogram of a second gone is freed by the collector: not growth
    steady = tracemalloc.get_traced_memory()[0]
    answer(range(4_000, 34_000))
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - steady
    tracemalloc.stop()
    assert claims.with_result == 34_000 and not claims.in_flight
    assert grown < 64 * 1024, f"{grown:,} bytes more after 30,000 more claims (15 windows)"
    assert peak_resident_mib() > 0
