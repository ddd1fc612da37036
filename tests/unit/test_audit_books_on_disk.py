"""The books and the state on disk judge what the dicts and lists in memory judged: which result
comes first, which copy of a claim Redis holds, and records no JSON encoder writes again."""

from datetime import UTC, datetime
from typing import Any

from gongji.audit.books import Record, json_object, rebuild
from gongji.audit.compare import AuditReport, compare
from gongji.audit.state import RedisState
from gongji.audit.window import Window
from shared.settings import Settings
from shared.topics import RELATIONSHIP_EVENTS, SETTLEMENTS, WALLET_EVENTS


def _audit(records: list[Record], state: RedisState | None = None) -> AuditReport:
    window = Window.from_settings(Settings(), datetime(2026, 3, 10, tzinfo=UTC))
    return compare(rebuild(records), state or RedisState(), window)


def _result(offset: int, claim_id: str, status: str, paid: int, reverses: str | None = None) -> Record:
    value: dict[str, Any] = {
        "event_id": f"event-{claim_id}",
        "cause_id": claim_id,
        "claim_id": claim_id,
        "recipient_id": "R1",
        "status": status,
        "requested_fen": 100,
        "paid_fen": paid,
        "self_pay_fen": 0,
        "payers": [{"provider_id": "P1", "provider_region": "440300", "amount_fen": paid}],
        "reverses": reverses,
        "settled_at": "2026-03-02T10:00:00+08:00",
        "service_region": "440300",
    }
    return Record(SETTLEMENTS.name, "R1", value, 0, offset)


def test_of_two_reversals_of_one_claim_the_first_published_is_judged_whatever_its_id() -> None:
    report = _audit(
        [
            _result(0, "440300-C", "settled", 100),
            _result(1, "440300-zzz", "reversed", 50, reverses="440300-C"),  # first: gives back too little
            _result(2, "440300-aaa", "reversed", 100, reverses="440300-C"),
        ]
    )
    found = {(difference.what, difference.ids.get("reversal")) for difference in report.differences}
    assert ("a claim was reversed more than once", "440300-zzz") in found
    assert ("a reversal gives back other than what was paid", "440300-zzz") in found


def test_a_claim_redis_holds_in_two_shards_is_judged_by_the_copy_read_last() -> None:
    state = RedisState()
    for paid in (100, 90):  # shard 0's copy, then shard 1's, as read_state meets them
        state.claims.add("440300-X", {"status": "final", "result": {"status": "settled", "paid": paid}})
    report = _audit([_result(0, "440300-X", "settled", 100)], state)
    assert report.first is not None
    assert (report.first.what, report.first.expected, report.first.found) == (
        "the published result differs from settlement's record",
        90,
        100,
    )


def test_an_output_with_a_lone_surrogate_is_judged_not_a_crash() -> None:
    raw = (
        b'{"event_id":"e1","cause_id":"c1","type":"credited","provider_id":"P\\ud800","amount_fen":5,'
        b'"occurred_at":"2026-03-02T10:00:00+08:00"}'
    )
    report = _audit([Record(WALLET_EVENTS.name, "P", json_object(raw), 0, 0)])
    assert report.counts["differences"] > 0 and report.counts["persons"] == 1


def test_an_output_nested_too_deep_to_write_again_is_foreign_not_a_crash() -> None:
    depth = 100  # the deepest `json_object` reads here: the encoder, deeper in the stack, cannot write it
    while json_object(b'{"x":' + b"[" * (depth + 1) + b"]" * (depth + 1) + b"}") is not None:
        depth += 1
    raw = (
        b'{"event_id":"e1","cause_id":"c1","type":"requested","provider_id":"P","recipient_id":"R",'
        b'"occurred_at":"2026-03-02T10:00:00+08:00","version":1,"extra":' + b"[" * depth + b"]" * depth + b"}"
    )
    value = json_object(raw)
    assert value is not None
    report = _audit([Record(RELATIONSHIP_EVENTS.name, "P", value, 0, 0)])
    assert report.counts["foreign_records"] == 1
