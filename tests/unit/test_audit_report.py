"""The deep audit's report: Jepsen-style, and never a full resident ID unless asked for."""

from __future__ import annotations

import json

from gongji.audit.compare import ACCOUNT, AuditReport, Difference, Pending
from gongji.audit.deep import DeepAudit, report_json, report_lines
from shared.ids import make_person_id, mask_person_id

PROVIDER, RECIPIENT = make_person_id("440300", "19700101", 1), make_person_id("510100", "19450101", 2)
COUNTS = {
    "records": 10,
    "foreign_records": 0,
    "persons": 2,
    "claims_final": 1,
    "claims_pending": 1,
    "reversals": 0,
    "relationships": 1,
    "months": 1,
    "differences": 1,
    "pending": 1,
}


def audit_with_a_difference() -> DeepAudit:
    quota = Difference(
        ACCOUNT, "a quota differs from the books", {"provider": PROVIDER, "recipient": RECIPIENT}, 5_000, 0
    )
    drawing = Pending("claim drawing: the wallet's answer is on its way", {"claim": "c-1", "recipient": RECIPIENT})
    return DeepAudit(AuditReport([quota], [drawing], COUNTS), seconds=1.5, attempts=1)


def test_the_lines_say_valid_false_and_the_first_difference_with_its_ids_masked() -> None:
    text = "\n".join(report_lines(audit_with_a_difference()))
    assert "valid?[/bold] [red]false" in text and "first: [bold]account[/bold]: a quota differs" in text
    assert mask_person_id(PROVIDER) in text and PROVIDER not in text and RECIPIENT not in text
    assert "expected 5000, found 0" in text and "pending 1" in text


def test_the_json_masks_ids_unless_full_ids_are_asked_for() -> None:
    masked = json.dumps(report_json(audit_with_a_difference()))
    assert PROVIDER not in masked and RECIPIENT not in masked and mask_person_id(RECIPIENT) in masked
    full = report_json(audit_with_a_difference(), full_ids=True)
    assert full["valid?"] is False and full["first"]["ids"]["provider"] == PROVIDER
    assert full["differences_by_invariant"] == {ACCOUNT: 1} and full["pending"][0]["ids"]["claim"] == "c-1"


def test_a_valid_report_has_no_first_difference() -> None:
    report = report_json(DeepAudit(AuditReport([], [], COUNTS), seconds=0.5, attempts=2))
    assert (report["valid?"], report["first"], report["attempts"]) == (True, None, 2)


def test_a_record_nested_too_deep_to_decode_is_read_as_no_object_not_a_crash() -> None:
    """The services dead-letter it; the audit once died on it with RecursionError, for good."""
    from gongji.audit.books import json_object

    assert json_object(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") is None
    assert json_object(b'{"a": 1}') == {"a": 1}
