"""A simulated deployment: the three services' real handlers on the real Redis Functions (in a
database of the simulator's own), a fixed clock the simulator moves, the run-time policy read on
every use, and the in-memory network between them. Each operation is one step: an input published,
a batch delivered (with or without a fault), the clock moved, the policy changed, a month closed."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from gongji.audit.books import before, rebuild
from gongji.audit.checkpoint import Checkpoint, Cut
from gongji.audit.compare import AuditReport, compare
from gongji.audit.figures import RECONCILIATION_SIDES, figures
from gongji.audit.opening import Opening
from gongji.audit.state import read_state
from gongji.audit.window import Window
from gongji.simulation.cast import Cast
from gongji.simulation.model import Breach, Model, require
from gongji.simulation.network import (
    OUTPUT_TOPICS,
    ROUTES,
    Envelope,
    Network,
    Route,
    Topics,
    alike,
    inboxes_of,
    label,
)
from services.relationship.handlers import RelationshipHandlers
from services.relationship.store import RelationshipStore
from services.settlement.clearing import MonthNotEnded, close_month
from services.settlement.handlers import SettlementHandlers
from services.settlement.statistics import day_kept_until, reconciliations, snapshot
from services.settlement.store import ClaimLimits, SettlementStore, Tallies
from services.wallet.handlers import WalletHandlers
from services.wallet.store import Bucket, WalletStore
from shared.clock import FixedClock, minute_start, rfc3339
from shared.ids import claim_id_prefix
from shared.policy import Policy, PolicyCache, write_policy
from shared.records import DrawAnswer
from shared.runtime import Refused, ToTopic
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    ALL_TOPICS,
    CLAIMS,
    CLEARING,
    DEAD_LETTERS,
    ENROLLMENT,
    KINSHIP,
    RELATIONSHIP_COMMANDS,
    SUPERVISION,
    WALLET_COMMANDS,
    Topic,
    province_claims,
)
from shared.window import ClaimWindow

# Near a month's end, so that runs close months and reverse claims of closed ones.
START = datetime.fromisoformat("2026-03-27T09:00:00+08:00")
# Few shards, so that recipients share them (a claim id of one recipient found in another's shard).
SHARDS = 4
# A province's bounds on its own topic are the integration tests' subject (test_claim_limits.py);
# here they never bind, so that every run's outcome is the rules'.
UNBOUNDED = ClaimLimits(per_recipient_per_day=10**6, province_per_minute=10**6)
# The steps that decide what an instance publishes: once one ran, the instance's outputs describe
# a change made before whatever ran while it was stopped.
DECISIVE_STEPS = {
    "apply_command",
    "record_enrollment",
    "end_relationship",
    "grant",
    "credit",
    "spend",
    "supervise",
    "relationship_changed",
    "record_kinship",
    "refund",
    "run",
    "draw_begin",
    "claim_facts",
}


@dataclass(frozen=True)
class Op:
    """One step, as data: replayed exactly, and removable when shrinking a failure."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        shown = {name: value for name, value in self.args.items() if name != "at" and value not in (None, [])}
        words = [self.kind]
        if "inbox" in shown:
            words.append(shown.pop("inbox"))
        if "labels" in shown:
            words.append("[" + "; ".join(shown.pop("labels")) + "]")
        words += [
            f"{name}={value!r}" if isinstance(value, str) and " " in value else f"{name}={value}"
            for name, value in shown.items()
        ]
        return " ".join(words)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.args}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        return cls(data["kind"], {name: value for name, value in data.items() if name != "kind"})


class PausingStore:
    """A store as one service instance sees it: that instance stops before its `pause_before`-th
    Redis step until released — a consumer that lost its partition in a rebalance and has not
    noticed yet, or a decision overtaken by another message."""

    def __init__(self, store: Any, pause_before: int) -> None:
        self._store = store
        self._pause_before = pause_before
        self.steps_before_pause: list[str] = []
        self.paused = asyncio.Event()
        self._resume = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def step(*args: Any, **kwargs: Any) -> Any:
            if not self.paused.is_set():
                if len(self.steps_before_pause) + 1 == self._pause_before:
                    self.paused.set()
                    await self._resume.wait()
                else:
                    self.steps_before_pause.append(name)
            return await attribute(*args, **kwargs)

        return step

    def resume(self) -> None:
        self._resume.set()


class Turnstile:
    """Two instances handling one batch at once, taking their Redis steps in turns that `pattern`
    decides (bit k: who takes step k): interleaved as concurrency allows, yet the same way on every
    replay (even of a wallet that is not idempotent)."""

    def __init__(self, pattern: int) -> None:
        self.pattern = pattern
        self.steps = 0
        self.turn = pattern & 1
        self.finished = [False, False]
        self.changed = asyncio.Condition()

    def store(self, store: Any, me: int) -> Any:
        turnstile = self

        class InTurn:
            def __getattr__(self, name: str) -> Any:
                attribute = getattr(store, name)
                if not inspect.iscoroutinefunction(attribute):
                    return attribute

                async def step(*args: Any, **kwargs: Any) -> Any:
                    async with turnstile.changed:
                        await turnstile.changed.wait_for(lambda: turnstile.turn == me or turnstile.finished[1 - me])
                    try:
                        return await attribute(*args, **kwargs)
                    finally:
                        turnstile.steps += 1
                        await turnstile.pass_turn(turnstile.pattern >> turnstile.steps & 1)

                return step

        return InTurn()

    async def pass_turn(self, to: int) -> None:
        async with self.changed:
            self.turn = to
            self.changed.notify_all()

    async def run(self, me: int, work) -> Any:
        try:
            return await work
        finally:
            self.finished[me] = True
            await self.pass_turn(1 - me)


class World:
    def __init__(self, redis: Redis, cast: Cast) -> None:
        self.redis = redis
        self.cast = cast
        self.clock = FixedClock(START)
        self.stores = {
            "relationship": RelationshipStore(redis),
            "wallet": WalletStore(redis),
            "settlement": SettlementStore(redis, SHARDS),
        }
        self.instances = {service: self.instance(service) for service in self.stores}
        self.network = Network()
        self.topics = Topics()
        self.model = Model(cast, self.clock, self.stores["settlement"].shard_prefix)
        self.faults: Counter[str] = Counter()
        self.checks = 0
        self.cuts: list[Cut] = []  # where an audit could have taken the topics' ends, after each check
        self.last_outcome = ""
        self.stored = False  # whether the last operation may have changed what Redis holds

    async def start(self) -> None:
        await self.redis.flushdb()
        for store in self.stores.values():
            await store.load()

    def instance(self, service: str, store: Any = None) -> Any:
        """A new instance of a service's handlers, as its app.py builds them (policy read on every use)."""
        store = store or self.stores[service]
        if service == "relationship":
            return RelationshipHandlers(store, PolicyCache(self.redis, 0), self.clock)
        if service == "wallet":
            return WalletHandlers(store, self.clock, PolicyCache(self.redis, 0))
        return SettlementHandlers(store, self.clock, limits=UNBOUNDED)

    def person(self, alias: str) -> str:
        return self.cast.id(alias) if alias in self.cast.people else alias

    # ---- one step -------------------------------------------------------------------------

    async def apply(self, op: Op) -> str:
        """Runs one operation; returns what happened, in words (the run's log)."""
        self.stored = False
        self.last_outcome = await getattr(self, f"_{op.kind}")(**op.args)
        return self.last_outcome

    async def _expect(self, text: str) -> str:
        """A scenario's own check: the operation before went the way the scenario is about."""
        require(text in self.last_outcome, "scenario", f"expected {text!r} in {self.last_outcome!r}")
        return self.last_outcome

    async def check(self) -> None:
        self.checks += await self.model.check(
            self.stores["wallet"], self.stores["relationship"], self.stores["settlement"], self.network.quiet()
        )
        self.cuts.append(Cut(self.clock.now(), self.topics.ends()))

    # ---- inputs ---------------------------------------------------------------------------

    def _send(self, topic: Topic, fields: dict[str, Any], invalid: bool = False) -> str:
        """Publishes one input as a sender would: held to the contract at the edge."""
        try:
            message = topic.model.model_validate(fields)
        except ValidationError as error:
            refusal = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            if not invalid:
                raise Breach("edge", f"the simulator built an invalid {topic.model.__name__}: {refusal}") from None
            return f"refused at the edge ({refusal})"
        if invalid:
            raise Breach("edge", f"the contract let through {message!r}")
        envelope = Envelope(label(message, self.cast), message, topic)
        for inbox in inboxes_of(topic):
            self.network.send(inbox, envelope)
        return f"sent {envelope.label}" + (f" on {topic.province}'s topic" if topic.province else "")

    async def _enroll(self, person: str, insurance_type: str, region: str, status: str, id: str, at: str) -> str:
        return self._send(
            ENROLLMENT,
            {
                "event_id": id,
                "person_id": self.person(person),
                "insurance_type": insurance_type,
                "region": region,
                "status": status,
                "occurred_at": at,
            },
        )

    async def _kinship(self, person: str, relative: str, kinship: str, id: str, at: str) -> str:
        return self._send(
            KINSHIP,
            {
                "event_id": id,
                "person_id": self.person(person),
                "relative_id": self.person(relative),
                "kinship": kinship,
                "occurred_at": at,
            },
        )

    async def _credit(self, person: str, amount: int, id: str, at: str, invalid: bool = False) -> str:
        return self._send(
            ACCOUNT_CREDITS,
            {"event_id": id, "person_id": self.person(person), "amount_fen": amount, "occurred_at": at},
            invalid,
        )

    async def _spend(self, person: str, amount: int, id: str, at: str) -> str:
        return self._send(
            ACCOUNT_SPENDS, {"event_id": id, "person_id": self.person(person), "amount_fen": amount, "occurred_at": at}
        )

    async def _supervise(
        self, person: str, action: str, reason: str, id: str, at: str, lifts: str | None = None, invalid: bool = False
    ) -> str:
        return self._send(
            SUPERVISION,
            {
                "event_id": id,
                "person_id": self.person(person),
                "action": action,
                "reason": reason,
                "lifts": lifts,
                "occurred_at": at,
            },
            invalid,
        )

    async def _command(
        self,
        action: str,
        actor: str,
        provider: str,
        recipient: str,
        id: str,
        at: str,
        region: str | None = None,
        kinship: str | None = None,
    ) -> str:
        return self._send(
            RELATIONSHIP_COMMANDS,
            {
                "command_id": id,
                "action": action,
                "actor_id": self.person(actor),
                "provider_id": self.person(provider),
                "recipient_id": self.person(recipient),
                "recipient_region": region,
                "kinship": kinship,
                "requested_at": at,
            },
        )

    async def _grant(
        self, actor: str, provider: str, recipient: str, region: str, amount: int, id: str, at: str
    ) -> str:
        return self._send(
            WALLET_COMMANDS,
            {
                "command_id": id,
                "action": "grant",
                "actor_id": self.person(actor),
                "provider_id": self.person(provider),
                "recipient_id": self.person(recipient),
                "recipient_region": region,
                "amount_fen": amount,
                "requested_at": at,
            },
        )

    async def _settle(
        self,
        recipient: str,
        id: str,
        category: str,
        service_region: str,
        recipient_region: str,
        amount: int,
        at: str,
        code: str | None = None,
        items: list | None = None,
        invalid: bool = False,
        via: str | None = None,
    ) -> str:
        """A claim, sent on the national topic or on province `via`'s own."""
        claim_id = self.cast.name_claim(id, claim_id_prefix(service_region, code))
        return self._send(
            CLAIMS if via is None else province_claims(via),
            {
                "claim_id": claim_id,
                "kind": "settle",
                "recipient_id": self.person(recipient),
                "recipient_region": recipient_region,
                "category": category,
                "institution_code": code,
                "service_region": service_region,
                "amount_fen": amount,
                "items": [{"code": c, "in_catalogue": listed, "amount_fen": n} for c, listed, n in items]
                if items
                else None,
                "occurred_at": at,
            },
            invalid,
        )

    async def _reverse(self, recipient: str, id: str, reverses: str, at: str, via: str | None = None) -> str:
        original = self.cast.claim_id(reverses) or f"110100-{reverses}"  # a claim never sent
        claim_id = self.cast.name_claim(id, f"{original.partition('-')[0]}-")
        return self._send(
            CLAIMS if via is None else province_claims(via),
            {
                "claim_id": claim_id,
                "kind": "reverse",
                "recipient_id": self.person(recipient),
                "reverses": original,
                "occurred_at": at,
            },
        )

    async def _inject(self, topic: str, message: dict[str, Any]) -> str:
        """An internal message no service sent (a scenario's forgery), as if it were on the topic."""
        found = next(known for known in ALL_TOPICS if known.name == topic)
        people = {
            name: self.person(value) if name.endswith("_id") and isinstance(value, str) else value
            for name, value in message.items()
        }
        for name in ("claim_id", "original_claim_id"):
            if name in people:
                people[name] = self.cast.claim_id(people[name]) or people[name]
        if "payers" in people:
            people["payers"] = [
                {**payer, "provider_id": self.person(payer["provider_id"])} for payer in people["payers"]
            ]
        parsed = found.model.model_validate(people)
        envelope = Envelope(label(parsed, self.cast), parsed, found)
        for inbox in inboxes_of(found):
            self.network.send(inbox, envelope)
        return f"injected {envelope.label}"

    # ---- deliveries -----------------------------------------------------------------------

    @staticmethod
    def _batch(route: Route, envelopes: list[Envelope]) -> list[Any]:
        """A batch as the route's handler takes it (Deliveries where one consumer reads several topics)."""
        return [route.subscription.handed(envelope.topic, envelope.message) for envelope in envelopes]

    async def _handle(self, route: Route, envelopes: list[Envelope], store: Any = None) -> list:
        self.stored = True
        for envelope in envelopes:
            self.topics.taken_in(envelope.topic, envelope.message)
        handlers = self.instances[route.service] if store is None else self.instance(route.service, store)
        return list(await route.subscription.method(handlers, self._batch(route, envelopes)))

    def _effects(self, route: Route, envelopes: list[Envelope], outputs: list, publish: bool = True) -> None:
        """The model takes note of what the handler did; its outputs go on their way unless the
        instance crashed before publishing them."""
        self.model.observe(route.inbox, self._batch(route, envelopes), outputs)
        if publish:
            for output in outputs:
                if isinstance(output, Refused):
                    letter = self.topics.dead_letter(output, self.clock.now())
                    for inbox in inboxes_of(DEAD_LETTERS):
                        self.network.send(inbox, Envelope(label(letter, self.cast), letter, DEAD_LETTERS))
                elif isinstance(output, ToTopic):
                    self.topics.publish(output.topic, output.message)
                else:
                    topic = OUTPUT_TOPICS[type(output)]
                    self.topics.publish(topic, output)
                    for inbox in inboxes_of(topic):
                        self.network.send(inbox, Envelope(label(output, self.cast), output, topic))

    @staticmethod
    def _summary(batch: list[Envelope], outputs: list) -> str:
        kinds = Counter(
            getattr(output, "type", None) or getattr(output, "status", None) or type(output).__name__
            for output in outputs
            if not isinstance(output, ToTopic)
        )
        return f"{len(batch)} in, out: " + (", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "nothing")

    async def _take_and_handle(self, inbox: str, labels: list[str]):
        route = ROUTES[inbox]
        envelopes = self.network.take(inbox, labels)
        return route, envelopes, await self._handle(route, envelopes) if envelopes else []

    async def _deliver(self, inbox: str, labels: list[str], fault: str = "", pattern: int = 0b1010101010) -> str:
        """A batch delivered; `crash`: the instance stored its steps and died before publishing
        (the batch stays in flight); `twin`: two instances handle it at once, their steps
        interleaved by `pattern`."""
        route = ROUTES[inbox]
        envelopes = self.network.take(inbox, labels, keep=fault == "crash")
        if not envelopes:
            return "nothing to deliver"
        if fault == "twin":
            self.faults["twin"] += 1
            turnstile, store = Turnstile(pattern), self.stores[route.service]
            first, second = await asyncio.gather(
                *(turnstile.run(me, self._handle(route, envelopes, turnstile.store(store, me))) for me in (0, 1))
            )
            self._effects(route, envelopes, first)
            self._effects(route, envelopes, second)
            outputs = first
        else:
            outputs = await self._handle(route, envelopes)
            self._effects(route, envelopes, outputs, publish=fault != "crash")
        if fault == "crash":
            self.faults["crash"] += 1
            return f"crashed before publishing: {self._summary(envelopes, outputs)}"
        self.network.acknowledge(inbox, envelopes)
        return self._summary(envelopes, outputs)

    async def _redeliver(self, inbox: str, labels: list[str]) -> str:
        """A batch handled before comes again (a consumer rewound to its last committed offset)."""
        envelopes = self.network.handled_batch(inbox, labels)
        if not envelopes:
            return "nothing handled to redeliver"
        self.faults["redeliver"] += 1
        route = ROUTES[inbox]
        outputs = await self._handle(route, envelopes)
        self._effects(route, envelopes, outputs)
        return "again: " + self._summary(envelopes, outputs)

    async def _interleaved(
        self, inbox: str, labels: list[str], pause: int, other_inbox: str | None, other_labels: list[str]
    ) -> str:
        """Instance A takes the batch and stops before its `pause`-th Redis step; meanwhile another
        delivery runs whole (of `other_labels`, or without them the same batch by instance B);
        then A goes on and publishes too. The model follows the order the decisive steps took."""
        route = ROUTES[inbox]
        envelopes = self.network.take(inbox, labels)
        if not envelopes:
            return "nothing to deliver"
        store = PausingStore(self.stores[route.service], pause)
        first = asyncio.create_task(self._handle(route, envelopes, store))
        paused = asyncio.create_task(store.paused.wait())
        await asyncio.wait({first, paused}, return_when=asyncio.FIRST_COMPLETED)
        paused.cancel()
        try:
            if other_inbox is None:
                other_route, other_envelopes, other_batch = route, [], envelopes
                other_outputs = await self._handle(route, envelopes, self.stores[route.service])
            else:
                other_route, other_envelopes, other_outputs = await self._take_and_handle(other_inbox, other_labels)
                other_batch = other_envelopes
        finally:
            store.resume()
            outputs = await first
        effects = [(route, envelopes, outputs), (other_route, other_batch, other_outputs)]
        if store.paused.is_set() and not DECISIVE_STEPS & set(store.steps_before_pause):
            effects.reverse()  # A had decided nothing yet: what it decides comes after the other
        for effect in effects:
            self._effects(*effect)
        self.network.acknowledge(inbox, envelopes)
        if other_inbox is not None:
            self.network.acknowledge(other_inbox, other_envelopes)
        return f"A: {self._summary(envelopes, outputs)}; meanwhile {self._summary(other_batch, other_outputs)}"

    async def _zombie(self, inbox: str, labels: list[str], pause: int) -> str:
        """A rebalance: the partition moves to instance B while A is stopped mid-batch; B handles
        the batch whole, then A wakes up and finishes it too."""
        self.faults["zombie"] += 1
        return await self._interleaved(inbox, labels, pause, None, [])

    async def _race(self, inbox: str, labels: list[str], pause: int, other_inbox: str, other_labels: list[str]) -> str:
        """Another message is handled while A is deciding (between A's reads and its step)."""
        self.faults["race"] += 1
        return await self._interleaved(inbox, labels, pause, other_inbox, other_labels)

    async def _rebalance(self, labels: list[str], takes: int) -> str:
        """Instance A begins draws (plan and the first `takes` providers) and dies; the requests stay
        in flight for the next owner of the partition."""
        wallet: WalletStore = self.stores["wallet"]
        envelopes = self.network.take("wallet/draw-requests", labels, keep=True)
        if not envelopes:
            return "nothing to draw"
        self.faults["rebalance"] += 1
        self.stored = True
        now = rfc3339(self.clock.now())
        taken = 0
        window = ClaimWindow.from_settings(Settings())
        for request in (envelope.message for envelope in envelopes):
            bucket = Bucket(request.context.claim_day, window.kept_ms(request.context.claim_day, self.clock))
            (plan,) = await wallet.draw_begin([(request.claim_id, request.recipient_id, bucket)])
            self.model.observe_plan(request, plan)
            if isinstance(plan, DrawAnswer) or plan.recipient_frozen:
                continue
            needed = request.amount_fen
            for provider in plan.providers[:takes]:
                if needed <= 0:
                    break
                (step,) = await wallet.run(
                    [wallet.draw_from_grant(request.claim_id, provider, request.recipient_id, needed, now, bucket)]
                )
                self.model.observe_take(request, provider, needed, step)
                if not step.conflict:
                    needed -= step.result.amount_fen
                    taken += step.result.amount_fen
        return f"instance A began {len(envelopes)} draw(s), took {taken}, and died"

    async def _deliver_all(self, inboxes: list[str] | None = None, after_each=None) -> str:
        """Everything in flight delivered, inbox by inbox, a key at a time, without faults, until
        nothing is left (in `inboxes`, or anywhere)."""
        delivered = 0
        for _ in range(50):
            waiting = [inbox for inbox in ROUTES if self.network.inflight[inbox] and (not inboxes or inbox in inboxes)]
            if not waiting:
                return f"{delivered} batch(es) delivered"
            for inbox in waiting:
                route = ROUTES[inbox]
                while queue := self.network.inflight[inbox]:
                    batch = [envelope for envelope in queue if alike(route, queue[0], envelope)][:20]
                    await self._deliver(inbox, [envelope.label for envelope in batch])
                    delivered += 1
                    if after_each:
                        await after_each()
        raise Breach("saga-ended", f"messages still in flight after 50 rounds: {self.network.waiting()}")

    async def drain(self) -> None:
        """The end of every saga: everything in flight delivered, each step checked."""
        await self._deliver_all(after_each=self.check)

    async def deep_audit(self) -> None:
        """The end of every run: `gongji audit --deep`'s books rebuilt from what the topics hold,
        against Redis, and the rules judged from the records. Everything has landed: nothing may be
        pending either."""
        window = Window.from_settings(Settings(), self.clock.now())
        state = await read_state(self.redis, window.today)
        report = compare(rebuild(self.topics.records), state, window)
        _landed_and_valid(report, "")
        await self._statistics_as_the_ledger_says()
        if not self.cuts:
            return
        # Again from a checkpoint at the run's middle: the records after its cut judged (and those a
        # horizon before it read), added to the figures folded before it, must find the same.
        middle = len(self.cuts) // 2
        cut = self.cuts[middle]
        earlier = [record for record in self.topics.records if before(record, cut.offsets)]
        folded = compare(rebuild(earlier), state, Window.from_settings(Settings(), cut.at)).closing
        opening = Opening.from_json(json.loads(json.dumps(folded.to_json())))  # as a checkpoint file keeps it
        starts = Checkpoint("simulation", cut, opening, self.cuts[:middle]).starts(window.horizon)
        read = [record for record in self.topics.records if not before(record, starts)]
        checkpointed = compare(rebuild(read, cut.offsets, starts), state, window, opening)
        _landed_and_valid(checkpointed, f" from the checkpoint at {cut.at:%Y-%m-%d %H:%M}")
        folded, rebuilt = checkpointed.closing.to_json(), report.closing.to_json()
        # An enrollment in flight at the cut counts for the rule's residents even if it is then
        # refused as too old (gongji/audit/opening.py): folded, there may be more, never fewer.
        folded["resident"] = [person for person in folded["resident"] if person in rebuilt["resident"]]
        differing = [name for name in rebuilt if folded[name] != rebuilt[name]]
        require(
            not differing,
            "deep-audit",
            f"the books folded from a checkpoint differ from the books rebuilt from scratch in {differing}: "
            + "; ".join(f"{folded[name]} against {rebuilt[name]}" for name in differing[:1]),
        )

    async def _statistics_as_the_ledger_says(self) -> None:
        """The exact statistics and the days' reconciliations Redis still holds equal the audit's own
        figures from the topics (each event once, its first copy), whatever was delivered twice,
        reordered or crashed on."""
        settings, now = Settings(), self.clock.now()
        ledger = figures(self.topics.records)
        tallies = Tallies(self.redis, settings.statistics_shards)
        kept = timedelta(seconds=settings.statistics_minutes_kept_seconds)
        for minute in sorted(ledger.minutes):
            if minute_start(minute) + kept - timedelta(hours=1) < now:
                continue  # its sums may have left Redis
            shown = snapshot(minute, await tallies.sums("minute", minute), now)
            held = shown.model_dump(mode="json", include=set(ledger.statistics(minute)))
            require(
                held == ledger.statistics(minute),
                "statistics",
                f"minute {minute}: Redis holds {held}, the topics say {ledger.statistics(minute)}",
            )
        kept, window = timedelta(seconds=settings.reconciliation_days_kept_seconds), ClaimWindow.from_settings(settings)
        for day in sorted(ledger.days):
            if day_kept_until(day, kept, window) - timedelta(days=1) < now:
                continue  # its sums may have left Redis
            for one in reconciliations(day, await tallies.sums("day", day), False, now):
                held = one.model_dump(mode="json", include=set(RECONCILIATION_SIDES))
                expected = ledger.reconciliation(day, one.province)
                require(
                    held == expected,
                    "reconciliation",
                    f"{day} province {one.province}: Redis holds {held}, the topics say {expected}",
                )

    # ---- the world around --------------------------------------------------------------------

    async def _advance(self, minutes: int) -> str:
        self.clock.set(self.clock.now() + timedelta(minutes=minutes))
        expired = await self._redis_lives(timedelta(minutes=minutes))
        self.model.forget_expired()
        return f"now {self.clock.now().isoformat(timespec='minutes')}" + (
            f", {expired} key(s) expired" if expired else ""
        )

    async def _redis_lives(self, elapsed: timedelta) -> int:
        """Redis's clock moved with the injected one: every key with an expiry lives `elapsed` less,
        and one whose time is up is gone, as the services' expiries say (a record kept too briefly
        is forgotten too early, and the model finds what that breaks)."""
        elapsed_ms = int(elapsed.total_seconds() * 1000)
        keys = [key async for key in self.redis.scan_iter(count=1000)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            lives = await pipe.execute()
        gone = [key for key, left in zip(keys, lives, strict=True) if 0 <= left <= elapsed_ms]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, left in zip(keys, lives, strict=True):
                if left >= 0 and left > elapsed_ms:  # (-1: kept for good; -2: gone since the scan)
                    pipe.pexpire(key, left - elapsed_ms)  # (the clock moved back: it lives longer)
            if gone:
                pipe.delete(*gone)
            await pipe.execute()
        return len(gone)

    async def _policy(self, closed: list[str], since: str) -> str:
        policy = Policy(cross_province_since=date.fromisoformat(since), closed_regions=frozenset(closed))
        await write_policy(self.redis, policy)
        self.stored = True
        self.model.policy = policy
        return f"closed {closed or 'none'}, cross-province since {since}"

    async def _close(self, month: str) -> str:
        try:
            rows = await close_month(self.stores["settlement"], month, self.clock.now())
        except MonthNotEnded:
            return f"{month} has not ended"
        self.model.close_month(month, rows)
        for row in rows:
            self.topics.publish(CLEARING, row)
        self.stored = True
        return f"closed {month}: {len(rows)} rows"


def _landed_and_valid(report: AuditReport, how: str) -> None:
    if not report.valid:
        first = report.differences[0]
        raise Breach(
            "deep-audit",
            f"{first.invariant}{how}: {first.what} {first.ids}: expected {first.expected}, "
            f"found {first.found} ({len(report.differences)} differences)",
        )
    if report.pending:
        raise Breach("deep-audit", f"still pending once everything landed{how}: {report.pending[0]}")
