"""`gongji load`: builds a synthetic population through the public topics, then publishes claims at
a target rate and measures each one from publish to its settlement event. Beside the claims it sends
the rest of a day's mix at their shares: reversals (退费) of settled claims, providers spending their
own accounts, supervision freezes (each lifted a little later), insurance changes (rule 7) and
dissolved relationships; each must be answered. Each kind of message is sent by the principal
whose role it is: enrollment and kinship by `registry`, commands by `app`, claims by the province of
their service region on its own topic, supervision by `supervisor`, the national platform's
credits and spends by `operator`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gongji.ops.kafka_io import TopicWatcher, make_producer
from gongji.perf.audited import audited_apart
from gongji.perf.latency_budget import claim_budget, snapshot
from gongji.perf.population import Family, PopulationBuilder
from gongji.perf.results import ClaimResults, peak_resident_mib
from shared.clock import SHANGHAI, clock_from_settings
from shared.ids import claim_id_prefix, province_of
from shared.principals import OPERATOR, province_principal
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    CLAIMS,
    DEAD_LETTERS,
    ENROLLMENT,
    KINSHIP,
    RELATIONSHIP_COMMANDS,
    RELATIONSHIP_EVENTS,
    SETTLEMENTS,
    SUPERVISION,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    Topic,
    province_claims,
)

# Who sends what (shared/principals.py grants each exactly that); claims go as their province.
SENDERS = {
    ENROLLMENT: "registry",
    KINSHIP: "registry",
    RELATIONSHIP_COMMANDS: "app",
    WALLET_COMMANDS: "app",
    SUPERVISION: "supervisor",
    ACCOUNT_CREDITS: OPERATOR.name,
    ACCOUNT_SPENDS: OPERATOR.name,
    CLAIMS: OPERATOR.name,
}

# Refusals that only mean "the facts have not reached that service yet": try again shortly.
NOT_YET = {"KINSHIP_UNVERIFIED", "RECIPIENT_NOT_INSURED", "PROVIDER_NOT_EMPLOYEE", "RELATIONSHIP_NOT_ACTIVE"}
RETRY_SECONDS = 0.5
FREEZE_SECONDS = 2.0  # a supervision freeze of the mix is lifted this much later
AUDIT_WAIT_SECONDS = 60.0  # the deep audit at the end waits this long for what is still in flight
PAUSE_SECONDS = 0.5  # a stretch this long without a new result is reported (a fault's gap)
REVERSIBLE_KEPT = 10_000  # settled claims a reversal may pick from: the newest this many and more
CARE_AWAY = ("110100", "310100", "440100", "510100")  # where care away from home is given


@dataclass(frozen=True)
class LoadOptions:
    persons: int = 3_000
    rate: float = (
        400.0  # well within what this machine settles with the whole mix on the province topics (500/s and more)
    )
    duration_seconds: float = 30.0
    duplicate_share: float = 0.01
    malformed_share: float = 0.001
    # The rest of the mix, as shares of the claims sent (assumed; the seeds give no figures): a
    # refund cancels about one settlement in fifty, employees spend their own accounts often,
    # supervision, insurance changes and dissolved relationships are rare.
    reversal_share: float = 0.02
    spend_share: float = 0.05
    freeze_share: float = 0.0005
    enrollment_change_share: float = 0.001
    dissolve_share: float = 0.001
    seed: int = 0
    # Claims (and reversals) on the national platform's topic, by one producer, instead of each on
    # its province's own topic by that province's producer (`gongji bench` measures the national
    # path: the baseline it compares with is one topic too).
    national_claims: bool = False
    report_dir: Path = Path("reports")
    setup_timeout_seconds: float = 300.0
    drain_timeout_seconds: float = 120.0


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class LoadRun:
    def __init__(self, settings: Settings, options: LoadOptions, console: Console) -> None:
        self.settings = settings
        self.options = options
        self.console = console
        self.builder = PopulationBuilder(options.seed or uuid.uuid4().int)
        self.clock = clock_from_settings(settings)  # the services' clock: every message's time is theirs
        self.producers: dict[str, AIOKafkaProducer] = {}  # by principal
        self.watcher = TopicWatcher(
            settings, [RELATIONSHIP_EVENTS, WALLET_EVENTS, SETTLEMENTS, DEAD_LETTERS], self._on_message
        )
        self.actions: asyncio.Queue = asyncio.Queue()
        # Setup: what each command was for, and which relationships are ready for claims.
        self.command_pairs: dict[str, tuple[str, str]] = {}
        self.pairs: dict[tuple[str, str], dict[str, Any]] = {}
        self.ready: set[tuple[str, str]] = set()
        self.ready_after_setup = 0
        self.refused: dict[tuple[str, str], str] = {}  # refused for good: "type: REASON"
        self.credits_sent: set[str] = set()
        self.credits_confirmed: set[str] = set()
        # Claims: in flight, their results and latencies (set again when the claims start).
        self.claims = ClaimResults(time.monotonic_ns())
        # Stretches with no new result: (seconds after the claims started, how long), from PAUSE_SECONDS on.
        self.pauses: list[tuple[float, float]] = []
        self.last_result_ns = 0
        self.result_transit_ms = 0.0  # first results: from their producer's send to this client, summed
        self.dead_letters = 0
        # The rest of the mix: what each kind sent, the first answers to it, and the ids unanswered.
        self.mix_sent: Counter[str] = Counter()
        self.mix_answers: dict[str, Counter[str]] = {}
        self.mix_waiting: dict[str, str] = {}  # input id -> kind
        self.reversible: list[tuple[str, str, str]] = []  # (claim id, recipient, service region) of settled claims
        self.lifting: set[asyncio.Task] = set()  # unfreezes waiting for their moment

    async def start_producers(self, principals: set[str]) -> None:
        """Each sender's producer, connected before it is needed (a TLS handshake takes a while)."""
        for principal in sorted(principals - set(self.producers)):
            self.producers[principal] = make_producer(self.settings, principal)
            await self.producers[principal].start()

    async def stop_producers(self) -> None:
        for producer in self.producers.values():
            await producer.stop()

    async def flush(self) -> None:
        for producer in self.producers.values():
            await producer.flush()

    async def send(self, topic: Topic, message: dict[str, Any] | bytes, key: str) -> None:
        """Sends as the topic's sender, a claim as its province on its own topic."""
        value = message if isinstance(message, bytes) else json.dumps(message).encode()
        sender = province_principal(topic.province).name if topic.province else SENDERS[topic]
        await self.producers[sender].send(topic.name, value, key=key.encode())

    def _now(self) -> str:
        return self.clock.now().isoformat()

    # ---- watching the outputs ------------------------------------------------------------

    def _on_message(self, topic: str, value: dict[str, Any]) -> None:
        if topic == SETTLEMENTS.name:
            self._on_settlement(value)
        elif topic == RELATIONSHIP_EVENTS.name:
            self._on_relationship_event(value)
        elif topic == WALLET_EVENTS.name:
            self._on_wallet_event(value)
        elif topic == DEAD_LETTERS.name:
            self.dead_letters += 1

    def _answered(self, input_id: str, answer: str) -> bool:
        """Records the first answer to an operation of the mix; False if the id is not one waiting."""
        kind = self.mix_waiting.pop(input_id, None)
        if kind is None:
            return False
        self.mix_answers.setdefault(kind, Counter())[answer] += 1
        return True

    def _mix_sent(self, input_id: str, kind: str) -> None:
        if input_id not in self.mix_waiting:  # an unfreeze is waited for from when it is planned
            self.mix_sent[kind] += 1
            self.mix_waiting[input_id] = kind

    def _on_settlement(self, value: dict[str, Any]) -> None:
        claim_id = value["claim_id"]
        if self._answered(claim_id, value["status"]):
            return
        arrived = time.monotonic_ns()
        if self.claims.result(claim_id, value["event_id"], value, arrived) is None:
            return  # not a claim of this run, or not its first result
        if self.last_result_ns and arrived - self.last_result_ns >= PAUSE_SECONDS * 1e9:
            self.pauses.append(
                ((self.last_result_ns - self.claims.started_ns) / 1e9, (arrived - self.last_result_ns) / 1e9)
            )
        self.last_result_ns = arrived
        self.result_transit_ms += max(0.0, time.time() * 1000 - value["_timestamp_ms"])
        if value["status"] in ("settled", "partial"):
            self.reversible.append((claim_id, value["recipient_id"], value["service_region"]))
            if len(self.reversible) > 2 * REVERSIBLE_KEPT:  # the newest are kept: memory bounded
                del self.reversible[:REVERSIBLE_KEPT]

    def _on_relationship_event(self, value: dict[str, Any]) -> None:
        if self._answered(value["cause_id"], value["type"]):
            return
        pair = self.command_pairs.get(value["cause_id"])
        if pair is None:
            return
        if value["type"] == "requested":
            self.actions.put_nowait(("accept", pair))
        elif value["type"] == "established":
            self.actions.put_nowait(("grant", pair))
        elif value["type"] == "rejected":
            self._refused_or_later(pair, "request", value)

    def _on_wallet_event(self, value: dict[str, Any]) -> None:
        if self._answered(value["cause_id"], value["type"]):
            return
        if value["type"] == "credited" and value["cause_id"] in self.credits_sent:
            self.credits_confirmed.add(value["cause_id"])
            return
        pair = self.command_pairs.get(value["cause_id"])
        if pair is None:
            return
        if value["type"] == "granted":
            self.ready.add(pair)
        elif value["type"] == "grant_rejected":
            self._refused_or_later(pair, "grant", value)

    def _refused_or_later(self, pair: tuple[str, str], action: str, value: dict[str, Any]) -> None:
        """A refusal that only means "not yet" is retried; any other ends that family's setup,
        and the report says why (say, DUPLICATE_RELATIONSHIP when a seed is run twice on one state)."""
        if value["reason"] in NOT_YET:
            self._later((action, pair))
        else:
            self.refused[pair] = f"{value['type']}: {value['reason']}"

    def _later(self, action: tuple[str, tuple[str, str]]) -> None:
        """Retries after a short pause, without holding up the other families."""
        asyncio.get_running_loop().call_later(RETRY_SECONDS, self.actions.put_nowait, action)

    # ---- phase 1: the population ---------------------------------------------------------

    async def build_population(self, families: list[Family]) -> float:
        started = time.monotonic()
        for family in families:
            people = [family.provider, *(recipient for recipient, _ in family.recipients)]
            for person in people:
                await self.send(
                    ENROLLMENT,
                    {
                        "event_id": _id("enr"),
                        "person_id": person.person_id,
                        "insurance_type": person.insurance_type,
                        "region": person.region,
                        "status": "normal",
                        "occurred_at": self._now(),
                    },
                    person.person_id,
                )
            credit_id = _id("cred")
            self.credits_sent.add(credit_id)
            await self.send(
                ACCOUNT_CREDITS,
                {
                    "event_id": credit_id,
                    "person_id": family.provider.person_id,
                    "amount_fen": family.balance_fen,
                    "occurred_at": self._now(),
                },
                family.provider.person_id,
            )
            for recipient, kinship in family.recipients:
                pair = (family.provider.person_id, recipient.person_id)
                self.pairs[pair] = {
                    "region": recipient.region,
                    "insurance": recipient.insurance_type,
                    "kinship": kinship,
                    "quota": min(200_000, family.balance_fen // len(family.recipients)),
                }
                await self.send(
                    KINSHIP,
                    {
                        "event_id": _id("kin"),
                        "person_id": pair[0],
                        "relative_id": pair[1],
                        "kinship": kinship,
                        "occurred_at": self._now(),
                    },
                    pair[0],
                )
        await self.flush()
        deadline = time.monotonic() + self.options.setup_timeout_seconds
        with self._progress() as progress:
            # Grants need the money there first; the registry facts have no answer, refusals retry them.
            task = progress.add_task("accounts credited", total=len(self.credits_sent))
            while self.credits_confirmed != self.credits_sent and time.monotonic() < deadline:
                progress.update(task, completed=len(self.credits_confirmed))
                await asyncio.sleep(0.1)
            progress.update(task, completed=len(self.credits_confirmed))
            worker = asyncio.create_task(self._act())
            for pair in self.pairs:
                await self._command("request", pair)
            task = progress.add_task("relationships and grants", total=len(self.pairs))
            while len(self.ready) + len(self.refused) < len(self.pairs) and time.monotonic() < deadline:
                progress.update(task, completed=len(self.ready))
                await asyncio.sleep(0.2)
            progress.update(task, completed=len(self.ready))
        worker.cancel()
        self.ready_after_setup = len(self.ready)
        return time.monotonic() - started

    def setup_outcome(self) -> tuple[dict[tuple[str, str], str], int]:
        """The families refused for good (a retried command may be refused after an earlier one
        made the pair ready: that pair is ready, not refused), and how many pairs got no answer."""
        refused = {pair: why for pair, why in self.refused.items() if pair not in self.ready}
        return refused, len(self.pairs) - len(self.ready) - len(refused)

    async def _command(self, action: str, pair: tuple[str, str]) -> None:
        """Sends a family's next command; its answer, matched by command_id, decides the step after."""
        provider_id, recipient_id = pair
        details = self.pairs[pair]
        command_id = _id(action)
        self.command_pairs[command_id] = pair
        message = {
            "command_id": command_id,
            "action": action,
            "actor_id": recipient_id if action == "accept" else provider_id,
            "provider_id": provider_id,
            "recipient_id": recipient_id,
            "requested_at": self._now(),
        }
        if action == "request":
            message |= {"recipient_region": details["region"], "kinship": details["kinship"]}
        elif action == "grant":
            message |= {"recipient_region": details["region"], "amount_fen": details["quota"]}
        await self.send(WALLET_COMMANDS if action == "grant" else RELATIONSHIP_COMMANDS, message, provider_id)

    async def _act(self) -> None:
        while True:
            await self._command(*await self.actions.get())

    # ---- phase 2: claims at a target rate -------------------------------------------------

    def _claim(self, recipient_id: str, region: str, insurance: str) -> dict[str, Any]:
        category = self.builder.category(insurance)
        amount = self.builder.claim_amount(category)
        rng = self.builder.rng
        service_region = region if rng.random() < 0.7 else rng.choice(CARE_AWAY)
        if category.name.endswith("_premium"):  # owed to the recipient's own region, collected there
            service_region, institution_code = region, None
        else:
            institution_code = (
                f"{'P' if category.name == 'pharmacy' else 'H'}{service_region}{rng.randrange(10**5):05d}"
            )
        claim = {
            "claim_id": claim_id_prefix(service_region, institution_code) + _id("claim"),
            "kind": "settle",
            "recipient_id": recipient_id,
            "recipient_region": region,
            "category": category.name,
            "service_region": service_region,
            "amount_fen": amount,
            "institution_code": institution_code,
            "occurred_at": self._now(),
        }
        if category.name == "pharmacy":
            in_catalogue = amount if rng.random() < 0.9 else max(1, amount // 2)
            claim["items"] = [{"code": "XB01AC06", "in_catalogue": True, "amount_fen": in_catalogue}]
            if in_catalogue < amount:
                claim["items"].append({"code": "NON-CAT", "in_catalogue": False, "amount_fen": amount - in_catalogue})
        return claim

    async def publish_claims(self) -> dict[str, int]:
        recipients = sorted(
            {(pair[1], self.pairs[pair]["region"], self.pairs[pair]["insurance"]) for pair in self.ready}
        )
        if not recipients:
            refused, unanswered = self.setup_outcome()
            raise RuntimeError(
                f"no relationship became ready (refused: {dict(Counter(refused.values())) or 'none'}; "
                f"unanswered: {unanswered}): "
                "are the services running (`gongji run all`)?"
            )
        rng = self.builder.rng
        if not self.options.national_claims:
            await self.start_producers(
                {
                    province_principal(province_of(region)).name
                    for region in {*(region for _, region, _ in recipients), *CARE_AWAY}
                }
            )
        sent: list[tuple[Topic, bytes, str]] = []
        counts = Counter()
        self.claims = ClaimResults(time.monotonic_ns())
        total = int(self.options.rate * self.options.duration_seconds)
        with self._progress() as progress:
            task = progress.add_task(f"claims at {self.options.rate:,.0f}/s", total=total)
            while counts["claims"] < total:
                elapsed = (time.monotonic_ns() - self.claims.started_ns) / 1e9
                due = min(total, int(self.options.rate * elapsed)) - counts["claims"]
                for _ in range(due):
                    roll = rng.random()
                    if roll < self.options.malformed_share:
                        _, region, _ = rng.choice(recipients)
                        await self.send(self._claims_topic(region), b'{"claim_id": "broken', "load")
                        counts["malformed"] += 1
                    elif roll < self.options.malformed_share + self.options.duplicate_share and sent:
                        topic, value, key = rng.choice(sent)
                        await self.send(topic, value, key)
                        counts["duplicates"] += 1
                    else:
                        recipient_id, region, insurance = rng.choice(recipients)
                        claim = self._claim(recipient_id, region, insurance)
                        topic = self._claims_topic(claim["service_region"])
                        value = json.dumps(claim).encode()
                        self.claims.sent(claim["claim_id"], time.monotonic_ns())
                        await self.send(topic, value, recipient_id)
                        if len(sent) < 10_000:
                            sent.append((topic, value, recipient_id))
                        counts["claims"] += 1
                        await self._rest_of_the_mix(recipients)
                progress.update(task, completed=counts["claims"])
                await asyncio.sleep(0.005)
        await self.flush()
        return dict(counts)

    async def _rest_of_the_mix(self, recipients: list[tuple[str, str, str]]) -> None:
        """After a claim, each other kind of operation at its share of the claims."""
        rng, options = self.builder.rng, self.options
        if rng.random() < options.reversal_share and self.reversible:
            # A refund comes from the province that settled the claim.
            original, recipient_id, service_region = self.reversible.pop(rng.randrange(len(self.reversible)))
            reversal_id = f"{service_region}-{_id('rev')}"  # of the region its claim's id names
            self._mix_sent(reversal_id, "reversal")
            await self.send(
                self._claims_topic(service_region),
                {
                    "claim_id": reversal_id,
                    "kind": "reverse",
                    "recipient_id": recipient_id,
                    "reverses": original,
                    "occurred_at": self._now(),
                },
                recipient_id,
            )
        # The providers are listed (every ready pair, sorted) only when one is needed, not per claim.
        if rng.random() < options.spend_share and (providers := self._providers()):
            provider = rng.choice(providers)
            await self._mixed(
                "spend",
                ACCOUNT_SPENDS,
                provider,
                {"event_id": _id("spend"), "person_id": provider, "amount_fen": rng.randint(100, 5_000)},
            )
        if rng.random() < options.freeze_share and (providers := self._providers()):
            provider = rng.choice(providers)
            freeze_id = _id("freeze")
            await self._mixed(
                "freeze",
                SUPERVISION,
                provider,
                {"event_id": freeze_id, "person_id": provider, "action": "freeze", "reason": "load: suspected misuse"},
            )
            unfreeze = {
                "event_id": _id("unfreeze"),
                "person_id": provider,
                "action": "unfreeze",
                "reason": "load: cleared",
                "lifts": freeze_id,
            }
            self._mix_sent(unfreeze["event_id"], "unfreeze")  # the drain waits for it too
            self.lifting.add(asyncio.create_task(self._lift_later(provider, unfreeze)))
        # Claims need relationships in force: at most half of them end during a run.
        may_end = len(self.ready) > len(self.pairs) // 2
        if rng.random() < options.dissolve_share and may_end:
            provider, recipient_id = pair = rng.choice(sorted(self.ready))
            self._no_longer_ready(lambda other: other == pair, recipients)
            await self._mixed(
                "dissolve",
                RELATIONSHIP_COMMANDS,
                provider,
                {
                    "command_id": _id("dissolve"),
                    "action": "dissolve",
                    "actor_id": provider,
                    "provider_id": provider,
                    "recipient_id": recipient_id,
                    "requested_at": self._now(),
                },
            )
        if rng.random() < options.enrollment_change_share and may_end:
            _, recipient_id = pair = rng.choice(sorted(self.ready))
            region = self.pairs[pair]["region"]
            moved_to = f"{region[:2]}0100" if region[2:] != "0100" else f"{region[:2]}0200"
            self._no_longer_ready(lambda other: other[1] == recipient_id, recipients)
            await self._mixed(
                "insurance change",
                ENROLLMENT,
                recipient_id,
                {
                    "event_id": _id("move"),
                    "person_id": recipient_id,
                    "insurance_type": "resident",
                    "region": moved_to,
                    "status": "normal",
                },
            )

    def _claims_topic(self, service_region: str) -> Topic:
        """A claim goes from the province where the care was given (or from the national platform)."""
        return CLAIMS if self.options.national_claims else province_claims(province_of(service_region))

    def _providers(self) -> list[str]:
        return sorted({provider for provider, _ in self.ready})

    async def _lift_later(self, provider: str, unfreeze: dict[str, Any]) -> None:
        await asyncio.sleep(FREEZE_SECONDS)
        await self._mixed("unfreeze", SUPERVISION, provider, unfreeze)

    async def _mixed(self, kind: str, topic: Topic, key: str, message: dict[str, Any]) -> None:
        input_id = message.get("event_id") or message["command_id"]
        self._mix_sent(input_id, kind)
        time_field = "requested_at" if "command_id" in message else "occurred_at"
        await self.send(topic, {**message, time_field: self._now()}, key)

    def _no_longer_ready(self, ended, recipients: list[tuple[str, str, str]]) -> None:
        """Claims go on only to recipients with a relationship still in force."""
        self.ready = {pair for pair in self.ready if not ended(pair)}
        still = {recipient for _, recipient in self.ready}
        recipients[:] = [recipient for recipient in recipients if recipient[0] in still]

    async def drain(self) -> None:
        deadline = time.monotonic() + self.options.drain_timeout_seconds
        with self._progress() as progress:
            task = progress.add_task("waiting for every settlement", total=self.claims.published)
            while (self.claims.in_flight or self._mix_unanswered()) and time.monotonic() < deadline:
                progress.update(task, completed=self.claims.with_result)
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # late duplicates would show as a second result
            progress.update(task, completed=self.claims.with_result)

    def _mix_unanswered(self) -> int:
        return len(self.mix_waiting)

    def mix_report(self) -> dict[str, dict[str, Any]]:
        report = {}
        for kind, sent in sorted(self.mix_sent.items()):
            answers = self.mix_answers.get(kind, Counter())
            report[kind] = {"sent": sent, "answered": answers.total(), "answers": dict(answers)}
        return report

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )


def _percentiles_ms(histogram) -> dict[str, float]:
    return {
        name: round(histogram.get_value_at_percentile(p) / 1000, 2)
        for name, p in (("p50", 50), ("p95", 95), ("p99", 99))
    } | {"max": round(histogram.get_max_value() / 1000, 2), "mean": round(histogram.get_mean_value() / 1000, 2)}


async def run_load(
    settings: Settings, options: LoadOptions, console: Console, on_phase: Callable[[str], None] = lambda phase: None
) -> dict[str, Any]:
    """`on_phase` is told "claims" when the claims start and "drained" once they have their
    results: `gongji bench` measures the processes' CPU between the two."""
    run = LoadRun(settings, options, console)
    await run.start_producers(set(SENDERS.values()))
    await run.watcher.start()
    try:
        families = run.builder.families(options.persons)
        setup_seconds = await run.build_population(families)
        refused, unanswered = run.setup_outcome()
        hops_before = snapshot(settings)
        on_phase("claims")
        counts = await run.publish_claims()
        await run.drain()
        on_phase("drained")
        hops_after = snapshot(settings)
    finally:
        await run.watcher.stop()
        await run.stop_producers()
    # The books rebuilt from the topics, against Redis; what is still in flight is waited for.
    audit = await audited_apart(settings, AUDIT_WAIT_SECONDS)

    claims = run.claims
    timeline = claims.timeline()
    last_result_second = max((point["second"] for point in timeline if point["settled"]), default=0) + 1
    window = max(options.duration_seconds, last_result_second)
    steady = [point["settled"] for point in timeline[2:-2]] or [0]
    report = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "population": {
            "persons": sum(1 + len(f.recipients) for f in families),
            "families": len(families),
            "relationships": len(run.pairs),
            "ready": run.ready_after_setup,
            "refused": dict(Counter(refused.values())),
            "unanswered": unanswered,
            "ended_during_run": run.ready_after_setup - len(run.ready),
            "setup_seconds": round(setup_seconds, 1),
        },
        "claims": {
            "published": counts.get("claims", 0),
            "duplicates_sent": counts.get("duplicates", 0),
            "malformed_sent": counts.get("malformed", 0),
            "with_result": claims.with_result,
            "without_result": len(claims.in_flight),
            "with_more_than_one_result": claims.with_more_than_one_result,
        },
        "throughput": {
            "offered_per_second": options.rate,
            "settled_per_second": round(claims.with_result / window, 1),
            "settled_per_second_median_of_seconds": sorted(steady)[len(steady) // 2],
        },
        "latency_ms": _percentiles_ms(claims.histogram),
        # Read from the services on this machine (absent when they run elsewhere).
        "budget": claim_budget(
            hops_before,
            hops_after,
            run.result_transit_ms / max(1, claims.with_result),
            claims.histogram.get_mean_value() / 1000,
        )
        if hops_before and hops_after
        else None,
        "by_status": dict(claims.by_status),
        "by_category": dict(claims.by_category),
        "rejections_by_reason": dict(claims.rejections_by_reason),
        "mix": run.mix_report(),
        "dead_letters_seen": run.dead_letters,
        "pauses": [{"at_s": round(at, 2), "seconds": round(length, 2)} for at, length in run.pauses],
        "audit": audit,
        "timeline": timeline,
        # This process's peak: what the load keeps grows with the rate, not with the run's length
        # (the deep audit's, in a child process, is `audit.peak_resident_mib`).
        "harness": {"peak_resident_mib": peak_resident_mib()},
    }
    return report


def write_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(SHANGHAI).strftime("%Y%m%d-%H%M%S")
    json_path = directory / f"load-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    png_path = directory / f"load-{stamp}.png"
    _plot(report, png_path)
    return json_path, png_path


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    seconds = [point["second"] for point in timeline]
    figure, (throughput, latency) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    throughput.plot(seconds, [p["published"] for p in timeline], label="published /s")
    throughput.plot(seconds, [p["settled"] for p in timeline], label="settled /s")
    throughput.set_ylabel("claims per second")
    throughput.legend()
    throughput.set_title(
        f"gongji load: {report['options']['rate']:,.0f}/s offered, "
        f"{report['throughput']['settled_per_second']:,.0f}/s settled"
    )
    latency.plot(seconds, [p.get("p50_ms") for p in timeline], label="p50")
    latency.plot(seconds, [p.get("p99_ms") for p in timeline], label="p99")
    latency.set_ylabel("publish → settlement (ms)")
    latency.set_xlabel("second of the claim phase")
    latency.set_yscale("log")
    latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
