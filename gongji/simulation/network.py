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
from shared.contracts import (
    AccountCredited, AccountSpent, Claim, ClearingRow, DeadLetter, DrawAnswered, DrawRequested, EnrollmentChanged,
    KinshipRecorded, RefundRequested, RelationshipCommand, RelationshipEvent, SettlementEvent, StatisticsSnapshot,
    SupervisionActed, WalletCommand, WalletEvent,
)
from shared.ids import derived_event_id
from shared.runtime import Refused
from shared.topics import (
    ACCOUNT_CREDITS, ACCOUNT_SPENDS, CLAIMS, CLEARING, DEAD_LETTERS, DRAW_ANSWERS, DRAW_REQUESTS, ENROLLMENT, KINSHIP,
    REFUND_REQUESTS, RELATIONSHIP_COMMANDS, RELATIONSHIP_EVENTS, SETTLEMENTS, STATISTICS, SUPERVISION,
    WALLET_COMMANDS, WALLET_EVENTS, Topic,
)


@dataclass(frozen=True)
class Route:
    """One subscription, as the service's app.py declares it. `one_key`: the handler runs keys
    concurrently (gather_by_key), so a batch holds one key's messages and every run replays exactly."""

    inbox: str
    service: str
    topic: Topic
    handler: str
    one_key: bool = True


ROUTES: dict[str, Route] = {route.inbox: route for route in (
    Route("relationship/enrollment", "relationship", ENROLLMENT, "on_enrollment"),
    Route("relationship/kinship", "relationship", KINSHIP, "on_kinship"),
    Route("relationship/commands", "relationship", RELATIONSHIP_COMMANDS, "on_commands"),
    Route("wallet/enrollment", "wallet", ENROLLMENT, "on_enrollment"),
    Route("wallet/credits", "wallet", ACCOUNT_CREDITS, "on_credits"),
    Route("wallet/spends", "wallet", ACCOUNT_SPENDS, "on_spends"),
    Route("wallet/supervision", "wallet", SUPERVISION, "on_supervision"),
    Route("wallet/relationship-events", "wallet", RELATIONSHIP_EVENTS, "on_relationship_events"),
    Route("wallet/commands", "wallet", WALLET_COMMANDS, "on_commands"),
    Route("wallet/draw-requests", "wallet", DRAW_REQUESTS, "on_draw_requests", one_key=False),
    Route("wallet/refund-requests", "wallet", REFUND_REQUESTS, "on_refund_requests"),
    Route("settlement/enrollment", "settlement", ENROLLMENT, "on_enrollment", one_key=False),
    Route("settlement/claims", "settlement", CLAIMS, "on_claims", one_key=False),
    Route("settlement/draw-answers", "settlement", DRAW_ANSWERS, "on_draw_answers", one_key=False),
)}

# The outputs another service consumes; every other output (wallet events, settlements, refusals)
# leaves the system and is only observed.
CONSUMED_OUTPUTS: dict[type[BaseModel], Topic] = {
    RelationshipEvent: RELATIONSHIP_EVENTS,
    DrawRequested: DRAW_REQUESTS,
    DrawAnswered: DRAW_ANSWERS,
    RefundRequested: REFUND_REQUESTS,
}
# Where every output is published (the topics the deep audit reads among them).
OUTPUT_TOPICS: dict[type[BaseModel], Topic] = {
    **CONSUMED_OUTPUTS, WalletEvent: WALLET_EVENTS, SettlementEvent: SETTLEMENTS, ClearingRow: CLEARING,
    StatisticsSnapshot: STATISTICS,
}


def inboxes_of(topic: Topic) -> list[str]:
    return [route.inbox for route in ROUTES.values() if route.topic == topic]


def key_of(route: Route, message: BaseModel) -> str:
    return getattr(message, route.topic.key_field)


def label(message: BaseModel, cast: Cast) -> str:
    """A short name of a message, stable across replays: what delivery operations refer to."""
    a, c = cast.alias, cast.claim_alias
    match message:
        case EnrollmentChanged():
            return f"enrollment {message.event_id} {a(message.person_id)} {message.insurance_type} {message.region} {message.status}"
        case KinshipRecorded():
            return f"kinship {message.event_id} {a(message.person_id)}:{a(message.relative_id)} {message.kinship}"
        case AccountCredited():
            return f"credit {message.event_id} {a(message.person_id)} {message.amount_fen}"
        case AccountSpent():
            return f"spend {message.event_id} {a(message.person_id)} {message.amount_fen}"
        case SupervisionActed():
            return f"{message.action} {message.event_id} {a(message.person_id)}" + (f" lifts {message.lifts}" if message.lifts else "")
        case RelationshipCommand():
            return f"{message.action} {message.command_id} {a(message.provider_id)}>{a(message.recipient_id)} by {a(message.actor_id)}"
        case WalletCommand():
            return f"grant {message.command_id} {a(message.provider_id)}>{a(message.recipient_id)} {message.amount_fen}"
        case Claim(kind="settle"):
            return f"claim {c(message.claim_id)} {a(message.recipient_id)} {message.category} {message.amount_fen}"
        case Claim():
            return f"reversal {c(message.claim_id)} {a(message.recipient_id)} of {c(message.reverses or '')}"
        case RelationshipEvent():
            version = f" v{message.version}" if message.version is not None else ""
            return f"{message.type}{version} {a(message.provider_id)}>{a(message.recipient_id)} ({message.cause_id}) #{message.event_id[:6]}"
        case DrawRequested():
            return f"draw {c(message.claim_id)} {a(message.recipient_id)} {message.amount_fen}"
        case DrawAnswered():
            return f"answer {c(message.claim_id)} {a(message.recipient_id)} paid {message.paid_fen}"
        case RefundRequested():
            return f"refund {c(message.claim_id)} of {c(message.original_claim_id)} {a(message.recipient_id)}"
    raise TypeError(f"no label for {type(message).__name__}")


def named(envelope: "Envelope", wanted: str) -> bool:
    """A label, or its first words (a script says `draw c1` for `draw c1 R0 5000`)."""
    return envelope.label == wanted or envelope.label.startswith(wanted + " ")


@dataclass(frozen=True, eq=False)  # two copies of one message are two deliveries
class Envelope:
    label: str
    message: BaseModel


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

    def taken_in(self, topic: Topic, message: BaseModel) -> None:
        if id(message) not in self._inputs:
            self._inputs[id(message)] = (message, self.publish(topic, message))

    def dead_letter(self, refused: Refused, at: datetime) -> None:
        _, record = self._inputs[id(refused.message)]
        self.publish(DEAD_LETTERS, dead_letter_of(record, refused, at))


def dead_letter_of(record: Record, refused: Refused, at: datetime) -> DeadLetter:
    """The dead letter the runtime would publish for a refused record (its payload left out)."""
    return DeadLetter(event_id=derived_event_id("dead-letter", record.topic, str(record.offset)),
                      source_topic=record.topic, partition=record.partition, offset=record.offset,
                      error=refused.error, payload="", at=at, service="simulation", source_key=record.key or "",
                      reason=refused.reason)


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
        found = (next((envelope for envelope in reversed(self.handled[inbox]) if named(envelope, wanted)), None)
                 for wanted in labels)
        return [envelope for envelope in found if envelope is not None]

    def acknowledge(self, inbox: str, envelopes: list[Envelope]) -> None:
        self.handled[inbox].extend(envelope for envelope in envelopes if envelope not in self.handled[inbox])

    def quiet(self) -> bool:
        return not any(self.inflight.values())

    def waiting(self) -> dict[str, int]:
        return {inbox: len(queue) for inbox, queue in self.inflight.items() if queue}
