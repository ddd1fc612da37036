"""The deep audit's books: what the Kafka topics say happened, rebuilt from their records alone.

Pure: records in, `Books` out. An output counts once per `event_id` (a service publishes an output
again under the same id after a crash or a redelivery); an id published again with other figures is
kept as a clash. An input counts if its service took it in: a record it dead-lettered (broken, the
wrong key, an id used before for other content, poisonous) changed nothing. Of one input id, the
first content stands; a later one is a redelivery (the same) or a conflict (refused).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gongji.audit.spill import Shelf, Spill, models
from services.settlement.domain import NATIONAL
from shared.contracts import (
    REFUSED_BEFORE_ID,
    ClearingRow,
    DeadLetter,
    ReasonCode,
    RelationshipEvent,
    SettlementEvent,
    WalletEvent,
)
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    CLAIMS,
    CLEARING,
    DEAD_LETTERS,
    ENROLLMENT,
    PROVINCE_CLAIMS,
    RELATIONSHIP_COMMANDS,
    RELATIONSHIP_EVENTS,
    SETTLEMENTS,
    SUPERVISION,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    Topic,
)

# Each input topic's id field and the field naming the person whose id space it is (claim ids are national).
INPUT_IDS: dict[str, tuple[str, str | None]] = {
    ENROLLMENT.name: ("event_id", "person_id"),
    ACCOUNT_CREDITS.name: ("event_id", "person_id"),
    ACCOUNT_SPENDS.name: ("event_id", "person_id"),
    SUPERVISION.name: ("event_id", "person_id"),
    RELATIONSHIP_COMMANDS.name: ("command_id", "provider_id"),
    WALLET_COMMANDS.name: ("command_id", "provider_id"),
    # A claim is one input whichever claims topic brought it, the national one or a province's own.
    **{topic.name: ("claim_id", None) for topic in (CLAIMS, *PROVINCE_CLAIMS)},
}
INPUT_TOPICS: dict[str, Topic] = {
    topic.name: topic
    for topic in (
        ENROLLMENT,
        ACCOUNT_CREDITS,
        ACCOUNT_SPENDS,
        SUPERVISION,
        RELATIONSHIP_COMMANDS,
        WALLET_COMMANDS,
        CLAIMS,
        *PROVINCE_CLAIMS,
    )
}
OUTPUTS: tuple[Topic, ...] = (WALLET_EVENTS, RELATIONSHIP_EVENTS, SETTLEMENTS, CLEARING)
AUDITED_TOPICS: tuple[Topic, ...] = (
    ENROLLMENT,
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    SUPERVISION,
    RELATIONSHIP_COMMANDS,
    WALLET_COMMANDS,
    CLAIMS,
    *PROVINCE_CLAIMS,
    *OUTPUTS,
    DEAD_LETTERS,
)
# The wallet's answers to inputs, by the topic of the input each answers.
ANSWERED_BY_WALLET = {
    "credited": ACCOUNT_CREDITS.name,
    "spent": ACCOUNT_SPENDS.name,
    "spend_rejected": ACCOUNT_SPENDS.name,
    "granted": WALLET_COMMANDS.name,
    "grant_rejected": WALLET_COMMANDS.name,
    "frozen": SUPERVISION.name,
    "unfrozen": SUPERVISION.name,
}
# Refused, nothing applied (no step taken): outside the input's window, or its id taken before for
# other content.
UNAPPLIED = frozenset({ReasonCode.INPUT_TOO_OLD, ReasonCode.INVALID_MESSAGE, ReasonCode.CONFLICT})
# Times are when a service answered: an output published again keeps its figures, not always its time
# (a refusal of a reused id is dated when it is refused).
_TIMES = frozenset({"occurred_at", "settled_at", "closed_at"})


@dataclass(frozen=True)
class Record:
    """One Kafka record as read: `value` is its decoded JSON, None if it is not a JSON object."""

    topic: str
    key: str | None
    value: dict[str, Any] | None
    partition: int
    offset: int


InputKey = tuple[str, str, str]  # (input topic, scope, input id)
Offsets = dict[tuple[str, int], int]  # (topic, partition) -> offset


class Books:
    """On disk (gongji/audit/spill.py) whatever grows with the records read; in memory what only
    faults and hostile records add to."""

    def __init__(self, spill: Spill | None = None) -> None:
        self.spill = spill = spill or Spill()
        # Every content each input id was taken in with, in the order read: the first one stands.
        self.inputs: Shelf[dict[str, Any]] = Shelf(spill)
        # Input records a service refused as older than the window (INPUT_TOO_OLD): never taken in, or
        # taken in before and delivered again too late (another service may also have taken it in).
        self.too_old: Shelf[dict[str, Any]] = Shelf(spill)
        self.too_old_letters: list[DeadLetter] = []
        self.wallet_events = models(spill, WalletEvent)  # by provider
        self.relationship_events = models(spill, RelationshipEvent)  # by pair (provider, recipient)
        # The results of claims recorded, by claim id; a claim refused before its id was taken (a
        # reused id, one sent where it does not belong) has an answer, not a result.
        self.settlements = models(spill, SettlementEvent)
        self.refused_before_id = models(spill, SettlementEvent)
        # Each claim taken in from a province's own topic, by claim id: [province, content, whether
        # it is after the checkpoint's cut].
        self.sent_by_provinces: Shelf[list[Any]] = Shelf(spill)
        # The claim ids that dead-lettered claims (broken, but their id readable) were sent under.
        self.dead_lettered_claims: set[str] = set()
        # Input records that break the contract and have no dead letter (yet): (topic, partition, offset).
        self.undead: list[tuple[str, int, int]] = []
        self.clearing_rows = models(spill, ClearingRow)  # by month
        # Where each relationship event was first published: orders a pair's events that carry no version.
        self.offsets: Shelf[int] = Shelf(spill)
        # Each output's figures as first published (an output published again must carry the same).
        self.published: Shelf[dict[str, Any]] = Shelf(spill, keep="first")
        self.clashes: list[tuple[str, str]] = []  # (topic, event_id) published with other figures
        # Partitions whose first record read is not the first asked for (retention deleted the rest):
        # books rebuilt without them would be wrong.
        self.truncated: dict[tuple[str, int], int] = {}
        self.records: Counter[str] = Counter()
        # Outputs first published before the checkpoint's cut: read to look up what later records name,
        # never judged or counted again (the audit that read them after its own cut did).
        self.earlier: Shelf[None] = Shelf(spill)
        self.judged_records = 0  # the records at or after the cut
        self.unreadable: Counter[str] = Counter()  # output records that fit no contract

    def input(self, key: InputKey) -> dict[str, Any] | None:
        """The content that stands under the key: the first taken in; else, for an answer of a record
        taken in and then delivered again past its window, that record's."""
        first = self.inputs.first(key)
        return self.too_old.first(key) if first is None else first

    def judged(self, event: Any) -> bool:
        """Whether an output is this audit's to judge: first published at or after the cut."""
        return event.event_id not in self.earlier

    def any_judged(self, events: Iterable[Any]) -> bool:
        """Whether any of them is this audit's to judge; none: the audit that read them after its cut did."""
        return any(map(self.judged, events))


def before(record: Record, offsets: Offsets) -> bool:
    """Whether a record lies before the offsets (a cut, or where reading starts) of its partition."""
    return record.offset < offsets.get((record.topic, record.partition), 0)


def rebuild(records: Iterable[Record], cut: Offsets | None = None, starts: Offsets | None = None) -> Books:
    """`starts`: where each partition was read from (else its beginning); `cut`: the checkpoint's
    offsets, before which records are read only to look up what later ones name (else none)."""
    # In each partition's order, whatever order they were read in: "first" means first published.
    records = sorted(records, key=in_order)
    rebuilding = Rebuilding([record for record in records if record.topic == DEAD_LETTERS.name], cut, starts)
    for record in records:
        rebuilding.take(record)
    return rebuilding.books


def in_order(record: Record) -> tuple[str, int, int]:
    """The order records are taken in: partition by partition, each in its offsets' order."""
    return record.topic, record.partition, record.offset


class Rebuilding:
    """The books rebuilt record by record, so that no record need be held once taken: the dead
    letters first (they say which inputs a service refused), then every record in `in_order`."""

    def __init__(
        self,
        letter_records: Iterable[Record],
        cut: Offsets | None = None,
        starts: Offsets | None = None,
        spill: Spill | None = None,
    ):
        self.books = Books(spill)
        self._cut, self._starts = cut or {}, starts or {}
        self._first: set[tuple[str, int]] = set()  # the partitions a record was taken from
        letter_records = list(letter_records)
        for record in letter_records:
            self._count(record)
        letters = [
            record
            for record in letter_records
            if record.value and {"source_topic", "partition", "offset"} <= record.value.keys()
        ]
        values = [record.value for record in letters if record.value]
        self._too_old = {
            (value["source_topic"], value["partition"], value["offset"])
            for value in values
            if value.get("reason") == ReasonCode.INPUT_TOO_OLD
        }
        self.books.too_old_letters = [
            DeadLetter.model_validate(record.value)
            for record in letters
            if (record.value or {}).get("reason") == ReasonCode.INPUT_TOO_OLD and not before(record, self._cut)
        ]
        self._dead_lettered = {
            (value["source_topic"], value["partition"], value["offset"]) for value in values
        } - self._too_old
        self.books.dead_lettered_claims = {
            claim_id
            for value in values
            if INPUT_IDS.get(str(value["source_topic"])) == ("claim_id", None)
            if (claim_id := _claim_id_of(value.get("payload")))
        }

    def take(self, record: Record) -> None:
        """One record, after every record before it `in_order` (the dead letters are taken already)."""
        if record.topic == DEAD_LETTERS.name:
            return
        self._count(record)
        judged = not before(record, self._cut)
        if record.topic in INPUT_IDS:
            where = (record.topic, record.partition, record.offset)
            if where in self._dead_lettered:
                return
            if where in self._too_old:
                _take_input(self.books, record, self.books.too_old)
            elif _breaks_the_contract(INPUT_TOPICS[record.topic], record):
                self.books.undead.append(where)
            else:
                try:
                    _take_input(self.books, record, judged=judged)
                except RecursionError:  # nested too deep to be written again: the services' JSON refuses it too
                    self.books.undead.append(where)
        elif (topic := _output_topic(record.topic)) is not None:
            _take_output(self.books, topic, record, judged=judged)

    def unread(self, ends: Offsets) -> list[tuple[str, int]]:
        """The partitions that had records to read before their end, and gave none."""
        return [where for where, end in ends.items() if end > self._starts.get(where, 0) and where not in self._first]

    def held_from(self, where: tuple[str, int], first: int) -> None:
        """The first offset a partition holds (its first record read, or the topic's own beginning
        for one that gave none): later than where reading started, retention deleted the rest."""
        if where not in self._first and first > self._starts.get(where, 0):
            self.books.truncated[where] = first
        self._first.add(where)

    def _count(self, record: Record) -> None:
        self.books.records[record.topic] += 1
        self.books.judged_records += not before(record, self._cut)
        self.held_from((record.topic, record.partition), record.offset)


def _breaks_the_contract(topic: Topic, record: Record) -> bool:
    """Whether the services must dead-letter the record: it is no JSON object of the topic's
    contract, or its Kafka key is not the contract's key field."""
    if record.value is None:
        return True
    try:
        message = topic.model.model_validate(record.value)
    except ValidationError:
        return True
    return record.key != str(getattr(message, topic.key_field))


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """A record's JSON object, or None: input topics carry whatever senders wrote (broken, nested
    too deep to decode, not an object), which a service dead-letters."""
    try:
        decoded = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _claim_id_of(payload: object) -> str | None:
    """The claim id a dead letter's record was sent under, if it can be read."""
    try:
        raw = base64.b64decode(str(payload))
    except ValueError:
        return None
    claim_id = (json_object(raw) or {}).get("claim_id")
    return claim_id if isinstance(claim_id, str) else None


def _output_topic(name: str) -> Topic | None:
    return next((topic for topic in OUTPUTS if topic.name == name), None)


def _take_input(books: Books, record: Record, taken: Shelf[dict[str, Any]] | None = None, judged: bool = False) -> None:
    id_field, scope_field = INPUT_IDS[record.topic]
    value = record.value
    # A record not dead-lettered was taken in: one read before the audit caught up is pending.
    if value is None or not isinstance(value.get(id_field), str):
        return
    scope = NATIONAL if scope_field is None else str(value.get(scope_field))
    topic = CLAIMS.name if scope_field is None else record.topic  # claim ids are national, on every claims topic
    shelf, key = books.inputs if taken is None else taken, (topic, scope, value[id_field])
    if value not in shelf.get(key):
        shelf.add(key, value)
    if (province := INPUT_TOPICS[record.topic].province) is not None:
        books.sent_by_provinces.add(value[id_field], [province, value, judged])


def _take_output(books: Books, topic: Topic, record: Record, judged: bool) -> None:
    try:
        event = topic.model.model_validate(record.value)
    except ValidationError:
        books.unreadable[topic.name] += 1
        return
    event_id = event.event_id
    figures = _figures(record.value or {})
    try:
        first = books.published.add(event_id, figures)
    except RecursionError:  # nested too deep to be written again: no output of this system
        books.unreadable[topic.name] += 1
        return
    if not first:
        before = books.published.first(event_id) or {}
        if judged and any(before[name] != value for name, value in figures.items() if name in before):
            books.clashes.append((topic.name, event_id))
        return
    if not judged:
        books.earlier.add(event_id, None)
    if isinstance(event, WalletEvent):
        books.wallet_events.add(event.provider_id, event)
    elif isinstance(event, RelationshipEvent):
        books.relationship_events.add((event.provider_id, event.recipient_id), event)
        books.offsets.add(event_id, record.offset)
    elif isinstance(event, SettlementEvent):
        (books.refused_before_id if event.reason in REFUSED_BEFORE_ID else books.settlements).add(event.claim_id, event)
    elif isinstance(event, ClearingRow):
        books.clearing_rows.add(event.month, event)


def _figures(value: dict[str, Any]) -> dict[str, Any]:
    """What must not change when an output is published again: every field but the times; a field
    a later release added (absent, None, in the earlier copy) is no change either."""
    return {name: item for name, item in value.items() if name not in _TIMES and item is not None}
