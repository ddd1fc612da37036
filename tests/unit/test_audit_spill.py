"""The deep audit's shelves on disk read back as the sorted dicts of lists they replace."""

from collections import defaultdict
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from gongji.audit.spill import Shelf, Spill, models, tagged
from shared.contracts import SettlementEvent, WalletEvent

# Strings sorting next to the encoding's own bytes: NUL, \x01, a prefix of another, a lone surrogate.
TRICKY = st.sampled_from(["", "a", "ab", "a\0", "a\0b", "a\1", "\0", "\1", "b", "é", "中", "\ud800", "\U0001f600"])
KEYS = st.tuples(TRICKY | st.text(max_size=3), TRICKY | st.text(max_size=3))


@given(st.lists(st.tuples(KEYS, st.integers()), max_size=40))
def test_a_shelf_reads_back_as_a_sorted_dict_of_lists(added: list[tuple[tuple[str, str], int]]) -> None:
    shelf: Shelf[int] = Shelf(Spill())
    expected: dict[tuple[str, str], list[int]] = defaultdict(list)
    for key, value in added:
        shelf.add(key, value)
        expected[key].append(value)
    assert list(shelf.items()) == sorted(expected.items())
    assert list(shelf.keys()) == sorted(expected)
    assert list(shelf.values()) == [value for _, value in added]
    assert bool(shelf) == bool(expected)
    for key, values in expected.items():
        assert key in shelf and shelf.get(key) == values and shelf.first(key) == values[0]
    for key in {key for key, _ in added}:
        assert list(shelf.keys_under(key[0])) == sorted(other for other in expected if other[0] == key[0])


def test_an_absent_key_has_nothing() -> None:
    shelf: Shelf[dict] = Shelf(Spill())
    shelf.add(("a", "b"), {"x": 1})
    assert shelf.get(("a", "c")) == [] and shelf.first(("a", "c")) is None
    assert ("a",) not in shelf and "a" not in shelf and 3 not in shelf
    assert list(shelf.keys_under("b")) == [] and not Shelf(Spill())


def test_a_shelf_keeps_the_first_or_the_last_value_of_a_key_as_a_dict_would() -> None:
    first: Shelf[str] = Shelf(Spill(), keep="first")
    assert first.add("e", "first") and not first.add("e", "second") and first.add("f", "other")
    assert first.get("e") == ["first"] and list(first.values()) == ["first", "other"]
    last: Shelf[str] = Shelf(Spill(), keep="last")
    for value in ("first", "second"):
        last.add("e", value)
    assert list(last.items()) == [("e", ["second"])]
    assert list(last.kept()) == [("e", "second")] and list(first.kept()) == [("e", "first"), ("f", "other")]


def test_models_come_back_validated_and_equal() -> None:
    spill = Spill()
    result = SettlementEvent(
        event_id="e",
        cause_id="c",
        claim_id="c",
        recipient_id="r",
        status="rejected",
        requested_fen=900,
        paid_fen=0,
        self_pay_fen=0,
        payers=[],
        settled_at=datetime.fromisoformat("2026-12-04T10:00:00+08:00"),
    )
    settlements = models(spill, SettlementEvent)
    settlements.add("c", result)
    assert settlements.get("c") == [result]
    either = tagged(spill, WalletEvent, SettlementEvent)
    either.add(("claims", "national", "c"), result)
    (back,) = either.get(("claims", "national", "c"))
    assert isinstance(back, SettlementEvent) and back == result
