"""`gongji bench`: how close the claim path comes to the limit the broker sets. Each run measures,
on the same broker, listener and kind of credentials (SCRAM) as the services:

1. the baseline: a raw aiokafka consume → produce pass-through of as many claim messages as the run
   offers, of a real claim's size, committing per batch, parsing each message, producing with
   acks=all and idempotence — the single hop a claim needs at the least;
2. Gongji end to end: the three service processes, started here, and `gongji load` offering claims
   only (no duplicates, malformed messages or the rest of the mix) at a rate meant to saturate, on
   the national platform's topic (one producer: the 30 province producers of `gongji load` cost
   more CPU on this machine than the services themselves);
3. the CPU each process spent from the first claim to the last result, per claim with a result.

The summary holds the median of each figure over the runs; the ratio is the median of the runs'
own ratios, since each run's baseline is measured beside its own claims."""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from gongji.ops.infra import running_pids
from gongji.ops.launcher import SERVICE_NAMES, ServiceProcess
from gongji.perf.load import LoadOptions, run_load
from gongji.perf.results import peak_resident_mib
from shared.clock import SHANGHAI
from shared.credentials import aiokafka_options
from shared.ids import make_person_id
from shared.principals import OPERATOR
from shared.settings import Settings

GENERATOR = "load generator"  # this process: it publishes the claims and watches their results
BASELINE_RECIPIENTS = 1_000  # distinct keys, so the pass-through spreads over every partition
# A saturated run leaves a backlog when its claims stop; it may drain at down to about a twentieth
# of the offered rate (a busy shared machine) before the claims left count as without result.
DRAIN_SECONDS_PER_SECOND_OFFERED = 20.0
DRAIN_SECONDS_MIN = 120.0


@dataclass(frozen=True)
class BenchOptions:
    duration_seconds: float = 60.0
    runs: int = 3
    rate: float = 2_500.0  # beyond what this machine settles (about 1,600/s), so the run measures the maximum
    persons: int = 3_000


def claim_messages(count: int) -> Iterator[tuple[bytes, bytes]]:
    """Claims as `gongji load` sends them (an institution claim, ids of the same length), each
    (value, key) keyed by its recipient; made as they are sent, not held (a long run's would fill memory)."""
    recipients = [make_person_id("110101", "19800101", serial) for serial in range(BASELINE_RECIPIENTS)]
    occurred_at = datetime.now(SHANGHAI).isoformat()
    for number in range(count):
        recipient_id = recipients[number % BASELINE_RECIPIENTS]
        claim = {
            "claim_id": f"110100-H11010012345-{uuid.uuid4().hex}",
            "kind": "settle",
            "recipient_id": recipient_id,
            "recipient_region": "110100",
            "category": "institution",
            "service_region": "110100",
            "amount_fen": 12_850,
            "institution_code": "H11010012345",
            "occurred_at": occurred_at,
        }
        yield json.dumps(claim).encode(), recipient_id.encode()


async def pass_through(settings: Settings, count: int) -> float:
    """Raw aiokafka, as the operator on the services' listener: publishes `count` claim messages to a new
    topic, then consumes each, parses it and produces it to another topic, committing per batch of
    at most the services' batch size. Returns messages moved per second, timed from the first batch
    (joining the consumer group is not moving messages). Both topics are deleted afterwards."""
    source, sink = f"bench-in-{uuid.uuid4().hex[:8]}", f"bench-out-{uuid.uuid4().hex[:8]}"
    client = aiokafka_options(settings, OPERATOR.name)
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(source, settings.topic_partitions, settings.topic_replication_factor),
                NewTopic(sink, settings.topic_partitions, settings.topic_replication_factor),
            ]
        )
        producer = AIOKafkaProducer(**client, acks="all", enable_idempotence=True, linger_ms=2)
        consumer = AIOKafkaConsumer(**client, group_id=source, auto_offset_reset="earliest", enable_auto_commit=False)
        await producer.start()
        await consumer.start()
        try:
            # A new partition refuses records for a moment after its creation (NOT_LEADER, retried
            # with a warning each); asking for its offsets waits, quietly, until it takes them.
            await consumer.end_offsets(
                [
                    TopicPartition(topic, partition)
                    for topic in (source, sink)
                    for partition in range(settings.topic_partitions)
                ]
            )
            for value, key in claim_messages(count):
                await producer.send(source, value, key=key)
            await producer.flush()
            consumer.subscribe([source])  # only now, so that nothing is fetched before the clock runs
            started, moved = None, 0
            while moved < count:
                batches = await consumer.getmany(timeout_ms=100, max_records=settings.batch_max_records)
                started = started or (time.perf_counter() if batches else None)
                pending = []
                for records in batches.values():
                    for record in records:
                        json.loads(record.value)  # a fair baseline parses what it forwards
                        pending.append(await producer.send(sink, record.value, key=record.key))
                for delivery in pending:
                    await delivery
                await consumer.commit()
                moved += len(pending)
            return count / (time.perf_counter() - started)
        finally:
            await consumer.stop()
            await producer.stop()
    finally:
        await admin.delete_topics([source, sink])
        await admin.close()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far (not its children: the service processes
    are children of the generator's); 0 for a process gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


class CpuWindow:
    """The CPU each named process spends between `open()` and `close()`, and the wall time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, float] = {}
        self.wall_seconds = 0.0
        self._opened: dict[str, float] = {}
        self._opened_at = 0.0

    def open(self) -> None:
        self._opened = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._opened_at = time.monotonic()

    def close(self) -> None:
        self.wall_seconds = time.monotonic() - self._opened_at
        self.spent = {name: cpu_seconds(pid) - self._opened[name] for name, pid in self.pids.items()}

    def on_phase(self, phase: str) -> None:
        """For `run_load`: open when the claims start, close once they all have their results."""
        {"claims": self.open, "drained": self.close}[phase]()


def load_failures(report: dict[str, Any]) -> list[str]:
    """What makes a load run's numbers worthless: a claim without exactly one result, or a bad audit."""
    claims, audit = report["claims"], report["audit"]
    failures = []
    if claims["without_result"]:
        failures.append(f"{claims['without_result']:,} claims without a result")
    if claims["with_more_than_one_result"]:
        failures.append(f"{claims['with_more_than_one_result']:,} claims with more than one result")
    if not audit["valid?"]:
        failures.append(f"the deep audit is not valid: {audit['first']}")
    elif audit["pending"]:
        failures.append(f"the deep audit found steps still pending: {audit['pending']}")
    return failures


def run_result(baseline_msgs_per_s: float, report: dict[str, Any], window: CpuWindow) -> dict[str, Any]:
    """One run's figures from its baseline, its load report and its CPU window."""
    claims = report["claims"]["with_result"]
    claims_per_s = report["throughput"]["settled_per_second"]
    # On a small machine the generator may not reach the rate asked for: say what it did send.
    sending_seconds = 1 + max((point["second"] for point in report["timeline"] if point["published"]), default=0)

    def per_claim_us(seconds: float) -> float | None:
        return round(seconds * 1e6 / claims, 1) if claims else None

    return {
        "baseline_msgs_per_s": round(baseline_msgs_per_s, 1),
        "sent_per_s": round(report["claims"]["published"] / sending_seconds, 1),
        "claims_per_s": claims_per_s,
        "ratio": round(claims_per_s / baseline_msgs_per_s, 3),
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "claims": claims,
        "window_s": round(window.wall_seconds, 1),
        "cpu_us_per_claim": per_claim_us(sum(window.spent.get(name, 0.0) for name in SERVICE_NAMES)),
        "cpu_us_per_claim_by_process": {name: per_claim_us(seconds) for name, seconds in window.spent.items()},
        "failures": load_failures(report),
        "audit_peak_resident_mib": report["audit"].get("peak_resident_mib"),
    }


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 3) if known else None


def summary(options: BenchOptions, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians over the runs at the top, each run's own figures under `per_run`."""
    figures = ("baseline_msgs_per_s", "sent_per_s", "claims_per_s", "ratio", "p50_ms", "p99_ms", "cpu_us_per_claim")
    processes = dict.fromkeys(name for run in runs for name in run["cpu_us_per_claim_by_process"])
    return {
        **{figure: _median([run[figure] for run in runs]) for figure in figures},
        "cpu_us_per_claim_by_process": {
            name: _median([run["cpu_us_per_claim_by_process"].get(name) for run in runs]) for name in processes
        },
        "runs": len(runs),
        "duration_s": options.duration_seconds,
        "offered_per_s": options.rate,
        "persons": options.persons,
        "failures": [f"run {number}: {failure}" for number, run in enumerate(runs, 1) for failure in run["failures"]],
        # This process's peak over every run: the baseline's messages and the claims' results are
        # streamed, so it stays flat however long the runs. Each deep audit runs in a child of its
        # own: the largest of their peaks (each run's is under `per_run`).
        "harness_peak_resident_mib": peak_resident_mib(),
        "audit_peak_resident_mib": max((run["audit_peak_resident_mib"] or 0 for run in runs), default=None),
        "per_run": runs,
    }


def _services_env(settings: Settings) -> dict[str, str]:
    """The services use the listener these settings name (the benchmark compares the two)."""
    return {"GONGJI_KAFKA_PLAINTEXT_DEV": str(int(settings.kafka_plaintext_dev))}


async def bench_run(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    """One run: the baseline, then the services started, a load run through them, and stopped."""
    offered = int(options.rate * options.duration_seconds)
    baseline_msgs_per_s = await pass_through(settings, offered)
    processes = [
        ServiceProcess(name, settings, settings.state_dir / "logs" / "bench", _services_env(settings))
        for name in SERVICE_NAMES
    ]
    try:
        for process in processes:
            process.start()
        window = CpuWindow(
            {
                **{process.name: process.process.pid for process in processes},
                **running_pids(settings),
                GENERATOR: os.getpid(),
            }
        )
        report = await run_load(
            settings,
            LoadOptions(
                persons=options.persons,
                rate=options.rate,
                duration_seconds=options.duration_seconds,
                duplicate_share=0,
                malformed_share=0,
                reversal_share=0,
                spend_share=0,
                freeze_share=0,
                enrollment_change_share=0,
                dissolve_share=0,
                national_claims=True,
                drain_timeout_seconds=max(
                    DRAIN_SECONDS_MIN, DRAIN_SECONDS_PER_SECOND_OFFERED * options.duration_seconds
                ),
            ),
            console,
            window.on_phase,
        )
    finally:
        for process in processes:
            if process.running():
                process.stop()
    return run_result(baseline_msgs_per_s, report, window)


async def run_bench(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    return summary(options, [await bench_run(settings, options, console) for _ in range(options.runs)])


def _figure(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def tables(result: dict[str, Any]) -> list[Table]:
    """Throughput and latency per run and their medians; then CPU per claim by process."""
    rows = [(str(number), run) for number, run in enumerate(result["per_run"], 1)] + [("median", result)]
    speed = Table(
        title=f"gongji bench: {result['offered_per_s']:,.0f} claims/s offered for "
        f"{result['duration_s']:,.0f} s, {result['persons']:,} persons"
    )
    for column in ("run", "baseline msg/s", "sent claims/s", "gongji claims/s", "ratio", "p50 ms", "p99 ms"):
        speed.add_column(column, justify="right")
    for label, row in rows:
        speed.add_row(
            label,
            _figure(row["baseline_msgs_per_s"]),
            _figure(row["sent_per_s"]),
            _figure(row["claims_per_s"]),
            _figure(row["ratio"], 3),
            _figure(row["p50_ms"], 1),
            _figure(row["p99_ms"], 1),
        )
    # One row per process: a column per run stays narrow however many processes there are.
    cpu = Table(title="CPU µs per claim (first claim to last result)")
    cpu.add_column("process")
    for label, _ in rows:
        cpu.add_column(label if label == "median" else f"run {label}", justify="right")
    cpu.add_row("services", *(_figure(row["cpu_us_per_claim"]) for _, row in rows))
    for name in result["cpu_us_per_claim_by_process"]:
        cpu.add_row(name, *(_figure(row["cpu_us_per_claim_by_process"].get(name)) for _, row in rows))
    return [speed, cpu]
