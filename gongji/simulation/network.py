"""The simulated network: which handler consumes which topic, where each output goes, and the
messages in flight between them. The simulator decides what is delivered when, in what batches,
how often, and in what order."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from gongji.audit.books import Record
from gongji.simulation.cast import Cast
from services.relationship import app as relationship_app
from services.settlement import app as settlement_app
from services.wallet import app as wallet_app
from shared.contracts import (
    AccountCredited,
    AccountSpent,
    Claim,
    DeadLetter,
    DrawAnswered,
    DrawRequested,
    EnrollmentChanged,
    KinshipRecorded,
    RefundRequested,
    RelationshipCommand,
    RelationshipEvent,
    SettlementEvent,
    SupervisionActed,
    WalletCommand,
)
from shared.ids import derived_event_id
from shared.runtime import Refused, topics_by_model
from shared.runtime import Route as ServiceRoute
from shared.topics import CLEARING, DEAD_LETTERS, Topic

# Every service's subscriptions and outputs, as its app.py declares them.
SERVICE_ROUTES: dict[str, tuple[ServiceRoute, ...]] = {
    "relationship": relationship_app.ROUTES,
    "wallet": wallet_app.ROUTES,
    "settlement": settlement_app.ROUTES,
}
# Where every output is published (the topics the deep audit reads among them); the monthly
# clearing job publishes its rows.
OUTPUT_TOPICS: dict[type[BaseModel], Topic] = topics_by_model(
    [*relationship_app.OUTPUTS, *wallet_app.OUTPUTS, *settlement_app.OUTPUTS, CLEARING]
)
# The handlers that run a batch as one pipeline in batch order, not key by key concurrently
# (gather_by_key): their batches may mix keys and still replay exactly.
MIXED_KEYS = frozenset({"wallet/draw-requests", "settlement/enrollment", "settlement/claim-path"})


@dataclass(frozen=True)
class Route:
    """One subscription of a service, as its app.py declares it, under the name the simulator's
    operations use (`settlement/claim-path`). `one_key`: a batch holds one key's messages."""

    inbox: str
    service: str
    subscription: ServiceRoute

    @property
    def one_key(self) -> bool:
        return self.inbox not in MIXED_KEYS

    def reads(self, topic: Topic) -> bool:
        return topic in self.subscription.topics


ROUTES: dict[str, Route] = {
    inbox: Route(inbox, service, subscription)
    for service, subscriptions in SERVICE_ROUTES.items()
    for subscription in subscriptions
    if (inbox := f"{service}/{subscription.name.removeprefix('on_').replace('_', '-')}")
}


def alike(route: Route, first: Envelope, other: Envelope) -> bool:
    """Whether `other` may share a batch with `first`: one kind of message (the claim path runs a
    batch's claims and its draw answers side by side, and the order of their Redis steps would not
    replay), and one key where the handler runs keys concurrently."""
    return other.topic.model is first.topic.model and (not route.one_key or other.key == first.key)


def inboxes_of(topic: Topic) -> list[str]:
    return [route.inbox for route in ROUTES.values() if route.reads(topic)]


def consumed(topic: Topic) -> bool:
    """An output another service consumes; every other output (wallet events, settlements,
    refusals) leaves the system and is only observed."""
    return bool(inboxes_of(topic))


def label(message: BaseModel, cast: Cast) -> str:
    """A short name of a message, stable across replays: what delivery operations refer to."""
    a, c = cast.alias, cast.claim_alias
    match message:
        case EnrollmentChanged():
            enrolled = f"{message.insurance_type} {message.region} {message.status}"
            return f"enrollment {message.event_id} {a(message.person_id)} {enrolled}"
        case KinshipRecorded():
            return f"kinship {message.event_id} {a(message.person_id)}:{a(message.relative_id)} {message.kinship}"
        case AccountCredited():
            return f"credit {message.event_id} {a(message.person_id)} {message.amount_fen}"
        case AccountSpent():
            return f"spend {message.event_id} {a(message.person_id)} {message.amount_fen}"
        case SupervisionActed():
            return f"{message.action} {message.event_id} {a(message.person_id)}" + (
                f" lifts {message.lifts}" if message.lifts else ""
            )
        case RelationshipCommand():
            pair = f"{a(message.provider_id)}>{a(message.recipient_id)}"
            return f"{message.action} {message.command_id} {pair} by {a(message.actor_id)}"
        case WalletCommand():
            return f"grant {message.command_id} {a(message.provider_id)}>{a(message.recipient_id)} {message.amount_fen}"
        case Claim(kind="settle"):
            return f"claim {c(message.claim_id)} {a(message.recipient_id)} {message.category} {message.amount_fen}"
        case Claim():
            return f"reversal {c(message.claim_id)} {a(message.recipient_id)} of {c(message.reverses or '')}"
        case RelationshipEvent():
            version = f" v{message.version}" if message.version is not None else ""
            pair = f"{a(message.provider_id)}>{a(message.recipient_id)}"
            return f"{message.type}{version} {pair} ({message.cause_id}) #{message.event_id[:6]}"
        case DrawRequested():
            return f"draw {c(message.claim_id)} {a(message.recipient_id)} {message.amount_fen}"
        case DrawAnswered():
            return f"answer {c(message.claim_id)} {a(message.recipient_id)} paid {message.paid_fen}"
        case RefundRequested():
            return f"refund {c(message.claim_id)} of {c(message.original_claim_id)} {a(message.recipient_id)}"
        case SettlementEvent():
            return f"result {c(message.claim_id)} {a(message.recipient_id)} {message.status} #{message.event_id[:6]}"
        case DeadLetter():
            return f"dead letter {message.source_topic}@{message.offset}"
    raise TypeError(f"no label for {type(message).__name__}")


def named(envelope: Envelope, wanted: str) -> bool:
    """A label, or its first words (a script says `draw c1` for `draw c1 R0 5000`)."""
    return envelope.label == wanted or envelope.label.startswith(wanted + " ")


@dataclass(frozen=True, eq=False)  # two copies of one message are two deliveries
class Envelope:
    label: str
    message: BaseModel
    topic: Topic  # the topic it was sent on

    @property
    def key(self) -> str:
        return str(getattr(self.message, self.topic.key_field))


class Topics:
    """What the run's topics hold, as Kafka would keep it (one partition each): every input, every
    output published, a dead letter for every refusal. The deep audit reads them at the end of a
    run, as it reads the real topics. An input is recorded when a service first takes it in: the
    simulator may deliver one key's messages in another order than they were sent, and Kafka's
    order is the order they are taken in."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        # An input message (kept, so that its id is never another's) -> its record.
        self._inputs: dict[int, tuple[BaseModel, Record]] = {}
        self._offsets: Counter[str] = Counter()

    def publish(self, topic: Topic, message: BaseModel) -> Record:
        value = json.loads(message.model_dump_json())
        record = Record(topic.name, str(value.get(topic.key_field)), value, 0, self._offsets[topic.name])
        self._offsets[topic.name] += 1
        self.records.append(record)
        return record

    def ends(self) -> dict[tuple[str, int], int]:
        """Each topic's end offset (its one partition's)."""
        return {(topic, 0): end for topic, end in self._offsets.items()}

    def taken_in(self, topic: Topic, message: BaseModel) -> None:
        if id(message) not in self._inputs:
            self._inputs[id(message)] = (message, self.publish(topic, message))

    def dead_letter(self, refused: Refused, at: datetime) -> DeadLetter:
        _, record = self._inputs[id(refused.message)]
        letter = dead_letter_of(record, refused, at)
        self.publish(DEAD_LETTERS, letter)
        return letter


def dead_letter_of(record: Record, refused: Refused, at: datetime) -> DeadLetter:
    """The dead letter the runtime would publish for a refused record (its payload left out)."""
    return DeadLetter(
        event_id=derived_event_id("dead-letter", record.topic, str(record.offset)),
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error=refused.error,
        payload="",
        at=at,
        service="simulation",
        source_key=record.key or "",
        reason=refused.reason,
    )


class Network:
    """Per inbox, the messages in flight (not yet handled, or handled by an instance that crashed
    before it acknowledged them), and those handled already (for redelivery)."""

    def __init__(self) -> None:
        self.inflight: dict[str, list[Envelope]] = defaultdict(list)
        self.handled: dict[str, list[Envelope]] = defaultdict(list)

    def send(self, inbox: str, envelope: Envelope) -> None:
        self.inflight[inbox].append(envelope)

    def take(self, inbox: str, labels: list[str], keep: bool = False) -> list[Envelope]:
        """The first in-flight message of each label, in the order asked; removed unless `keep`."""
        queue = self.inflight[inbox]
        taken = []
        for wanted in labels:
            found = next((envelope for envelope in queue if named(envelope, wanted) and envelope not in taken), None)
            if found is not None:
                taken.append(found)
        if not keep:
            for envelope in taken:
                queue.remove(envelope)
        return taken

    def handled_batch(self, inbox: str, labels: list[str]) -> list[Envelope]:
        """Messages handled before, for a redelivery: a Kafka consumer that rewinds sees them again."""
        found = (
            next((envelope for envelope in reversed(self.handled[inbox]) if named(envelope, wanted)), None)
            for wanted in labels
        )
        return [envelope for envelope in found if envelope is not None]

    def acknowledge(self, inbox: str, envelopes: list[Envelope]) -> None:
        self.handled[inbox].extend(envelope for envelope in envelopes if envelope not in self.handled[inbox])

    def quiet(self) -> bool:
        return not any(self.inflight.values())

    def waiting(self) -> dict[str, int]:
        return {inbox: len(queue) for inbox, queue in self.inflight.items() if queue}
