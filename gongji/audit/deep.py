"""`gongji audit --deep`: the books rebuilt from the Kafka topics, compared with Redis.

The order makes a running system safe to audit: the topics' end offsets are taken first, then Redis
is read, then every record up to those offsets. An output up to them was published after its step
was stored, so Redis holds all the books say; what Redis holds beyond them is reported pending, and
records published meanwhile are not read.

With a checkpoint (gongji/audit/checkpoint.py), only the records after its cut are judged and added
to its figures, those a horizon before the cut read to look up what they name; a clean audit writes
the next checkpoint at its own end offsets. From scratch, every record is read and judged.
"""

from __future__ import annotations

import asyncio
import gc
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError
from rich.markup import escape

from gongji.audit.books import AUDITED_TOPICS, Books, Offsets, Rebuilding, Record, json_object
from gongji.audit.checkpoint import Checkpoint, CheckpointInDoubt, CheckpointStore, Cut
from gongji.audit.compare import IN_FLIGHT, AuditReport, Difference, Pending, compare
from gongji.audit.spill import Spill
from gongji.audit.state import RedisState, read_state
from gongji.audit.window import Window
from shared.clock import clock_from_settings
from shared.credentials import aiokafka_options
from shared.ids import mask_person_id
from shared.principals import OPERATOR
from shared.settings import Settings
from shared.topics import DEAD_LETTERS, Topic

LISTED = 100  # differences and pending items a JSON report lists; its counts have them all
_PERSON_ID = re.compile(r"\b\d{17}[\dX]\b")


# How long the audit waits for a Redis that is loading its data (after a restart with a large
# append-only file) before it gives up and says so.
REDIS_LOADING_SECONDS = 120.0


@dataclass(frozen=True)
class DeepAudit:
    report: AuditReport
    seconds: float
    attempts: int
    redis_loading_seconds: float = 0.0  # how long Redis was loading its data while the audit waited
    started_from: datetime | None = None  # the cut of the checkpoint it started from; None: from scratch
    checkpoint_written: Path | None = None


async def deep_audit(
    settings: Settings,
    redis: Redis,
    wait_seconds: float = 0.0,
    checkpoints: CheckpointStore | None = None,
    from_scratch: bool = False,
) -> DeepAudit:
    """Audits once; while something is pending, audits again (new end offsets, a new read of Redis)
    until nothing is or `wait_seconds` have passed. In flight has a limit: what was pending at the
    first attempt and still is once `wait_seconds` have passed is stuck, a difference.

    With `checkpoints`, it starts from the stored checkpoint (unless `from_scratch`) and, clean,
    stores the next one."""
    started = time.monotonic()
    attempts, loading = 0, 0.0
    first: set[tuple] = set()
    cluster_id = await _cluster_id(settings) if checkpoints else ""
    stored = _stored(checkpoints, cluster_id, from_scratch)
    checkpoint = None if from_scratch else stored
    while True:
        attempts += 1
        try:
            report, waited, cut = await _audit_once(settings, redis, checkpoint)
        except sqlite3.OperationalError as error:  # its books' database: the temporary directory full or shut
            raise AuditUnavailable(
                f"the audit could not keep its books on disk ({error}): give SQLite's temporary directory "
                "room (SQLITE_TMPDIR, else /var/tmp or /tmp)"
            ) from None
        loading += waited
        if attempts == 1:
            first = {_identity(pending) for pending in report.pending}
        elapsed = time.monotonic() - started
        if not report.pending or elapsed >= wait_seconds:
            if wait_seconds > 0:
                _stuck_as_differences(report, first, wait_seconds)
            written = None
            if checkpoints and report.valid:  # from scratch, it keeps the earlier cuts to read from
                written = checkpoints.save(_next_checkpoint(settings, stored, cluster_id, cut, report))
            started_from = checkpoint.cut.at if checkpoint else None
            return DeepAudit(report, time.monotonic() - started, attempts, loading, started_from, written)
        await asyncio.sleep(1.0)


def _stored(checkpoints: CheckpointStore | None, cluster_id: str, from_scratch: bool) -> Checkpoint | None:
    """The stored checkpoint; from scratch, one in doubt is none (it is replaced)."""
    if checkpoints is None:
        return None
    try:
        return checkpoints.load(cluster_id)
    except CheckpointInDoubt:
        if from_scratch:
            return None
        raise


def _next_checkpoint(
    settings: Settings, checkpoint: Checkpoint | None, cluster_id: str, cut: Cut, report: AuditReport
) -> Checkpoint:
    if checkpoint is None:
        return Checkpoint(cluster_id, cut, report.closing)
    return checkpoint.followed_by(cut, report.closing, Window.from_settings(settings, cut.at).horizon)


async def _cluster_id(settings: Settings) -> str:
    """The Kafka cluster's id: a checkpoint's offsets are of one cluster (a reset makes another)."""
    admin = AIOKafkaAdminClient(**aiokafka_options(settings, OPERATOR.name))
    await admin.start()
    try:
        return str((await admin.describe_cluster())["cluster_id"])
    finally:
        await admin.close()


def _identity(pending: Pending) -> tuple:
    return pending.what, tuple(sorted(pending.ids.items()))


def _stuck_as_differences(report: AuditReport, first: set[tuple], wait_seconds: float) -> None:
    stuck = [pending for pending in report.pending if _identity(pending) in first]
    report.differences += [
        Difference(
            IN_FLIGHT, f"still pending after {wait_seconds:g} s: {pending.what}", pending.ids, "landed", "pending"
        )
        for pending in stuck
    ]
    report.pending = [pending for pending in report.pending if _identity(pending) not in first]
    report.counts["differences"], report.counts["pending"] = len(report.differences), len(report.pending)


async def _read_state_once_loaded(redis: Redis, today: str) -> tuple[RedisState, float]:
    """Redis's state, waiting (up to REDIS_LOADING_SECONDS) while it loads its data after a
    restart; how long it waited."""
    started, waited = time.monotonic(), 0.0
    while True:
        try:
            return await read_state(redis, today), waited  # the wait, not the read (a large state takes a while)
        except BusyLoadingError:
            if time.monotonic() - started >= REDIS_LOADING_SECONDS:
                raise AuditUnavailable(
                    f"Redis was still loading its data after {REDIS_LOADING_SECONDS:g} s: audit again once it has"
                ) from None
            await asyncio.sleep(0.5)
            waited = time.monotonic() - started


class AuditUnavailable(Exception):
    """The audit could not read what it checks (said in words, never a traceback)."""


async def _audit_once(
    settings: Settings, redis: Redis, checkpoint: Checkpoint | None
) -> tuple[AuditReport, float, Cut]:
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings, OPERATOR.name),
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a start retention deleted reads from what is left: reported
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    with _collector_paused():
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic.name, number)
                for topic in AUDITED_TOPICS
                for number in range(topic.partitions(settings))
            ]
            ends = await consumer.end_offsets(partitions)
            window = Window.from_settings(settings, clock_from_settings(settings).now())
            cut = Cut(window.now, {(partition.topic, partition.partition): end for partition, end in ends.items()})
            starts = checkpoint.starts(window.horizon) if checkpoint else {}
            if checkpoint:
                _within(checkpoint.cut.offsets, cut.offsets)
            state, loading = await _read_state_once_loaded(redis, window.today)
            cut_offsets = checkpoint.cut.offsets if checkpoint else None
            books = await _rebuilt(consumer, ends, starts, cut_offsets, state.spill)
        finally:
            await consumer.stop()
        return compare(books, state, window, checkpoint.opening if checkpoint else None), loading, cut


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Millions of records, contents and models pass through memory on their way to and from disk,
    none in a cycle: the collector would only scan them."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _rebuilt(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], starts: Offsets, cut: Offsets | None, spill: Spill
) -> Books:
    """The books, each record taken as it is read and none held after (on disk, in `spill`): the dead
    letters first."""
    letters = {partition: end for partition, end in ends.items() if partition.topic == DEAD_LETTERS.name}
    rebuilding = Rebuilding(
        [record async for record in records_in_order(consumer, letters, starts)], cut, starts, spill
    )
    rest = {partition: end for partition, end in ends.items() if partition not in letters}
    async for record in records_in_order(consumer, rest, starts):
        rebuilding.take(record)
    # A partition retention emptied up to (or past) its end gives no record to tell it by.
    if unread := rebuilding.unread({(partition.topic, partition.partition): end for partition, end in ends.items()}):
        beginnings = await consumer.beginning_offsets([TopicPartition(*where) for where in unread])
        for partition, first in beginnings.items():
            rebuilding.held_from((partition.topic, partition.partition), first)
    return rebuilding.books


def _within(cut: Offsets, ends: Offsets) -> None:
    beyond = sorted(
        f"{topic}/{partition}" for (topic, partition), offset in cut.items() if offset > ends.get((topic, partition), 0)
    )
    if beyond:
        raise CheckpointInDoubt(
            f"the checkpoint names records the topics do not hold ({', '.join(beyond[:3])}): "
            "audit --deep --from-scratch"
        )


async def read_topics(settings: Settings, topics: list[Topic]) -> list[Record]:
    """Every record of the topics up to their ends when asked, as the operator reads them."""
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings, OPERATOR.name), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic.name, number) for topic in topics for number in range(topic.partitions(settings))
        ]
        return [record async for record in records_in_order(consumer, await consumer.end_offsets(partitions))]
    finally:
        await consumer.stop()


async def records_in_order(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], starts: Offsets | None = None
) -> AsyncIterator[Record]:
    """Every record of the partitions from `starts` (else their beginning) up to (not including)
    `ends`, one partition after another in the books' order (`in_order`)."""
    # Every partition placed at once, before its reading starts: one left to the consumer's own
    # reset meanwhile could have that reset land after the seek (at "latest", its end) and be read
    # as empty.
    consumer.assign(list(ends))
    await consumer.seek_to_beginning(*ends)
    for partition in ends:
        if start := (starts or {}).get((partition.topic, partition.partition)):
            consumer.seek(partition, start)
    consumer.pause(*ends)
    for partition in sorted(ends):  # (topic, partition): TopicPartition is a named tuple
        end, start = ends[partition], (starts or {}).get((partition.topic, partition.partition), 0)
        if end <= start:
            continue
        consumer.resume(partition)
        while await consumer.position(partition) < end:
            batch = await consumer.getmany(partition, timeout_ms=1000, max_records=20_000)
            for record in batch.get(partition, []):
                if record.offset < end:
                    yield Record(
                        record.topic,
                        record.key.decode(errors="replace") if record.key is not None else None,
                        json_object(record.value),
                        record.partition,
                        record.offset,
                    )
        consumer.pause(partition)


def masked(value: Any) -> Any:
    """Resident ID numbers masked wherever they appear: in ids, figures and words alike."""
    if isinstance(value, str):
        return _PERSON_ID.sub(lambda found: mask_person_id(found[0]), value)
    if isinstance(value, dict):
        return {name: masked(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value


def report_json(audit: DeepAudit, full_ids: bool = False) -> dict[str, Any]:
    """The report for tools, Jepsen-style: `valid?`, the counts, the first difference and the lists."""
    report = audit.report
    document = {
        "valid?": report.valid,
        "counts": report.counts,
        "differences_by_invariant": dict(Counter(difference.invariant for difference in report.differences)),
        "first": asdict(report.first) if report.first else None,
        "differences": [asdict(difference) for difference in report.differences[:LISTED]],
        "pending": [asdict(pending) for pending in report.pending[:LISTED]],
        "seconds": round(audit.seconds, 2),
        "attempts": audit.attempts,
        "redis_loading_seconds": round(audit.redis_loading_seconds, 2),
        # The cut of the checkpoint it started from (None: from scratch), and where it wrote the next.
        "started_from": audit.started_from.isoformat() if audit.started_from else None,
        "checkpoint_written": str(audit.checkpoint_written) if audit.checkpoint_written else None,
    }
    return document if full_ids else masked(document)


def report_lines(audit: DeepAudit) -> list[str]:
    """The report for people (rich markup), ids masked."""
    report, counts = audit.report, audit.report.counts
    lines = [
        f"[bold]valid?[/bold] {'[green]true[/green]' if report.valid else '[red]false[/red]'}",
        f"{counts['records']:,} records read ({counts['foreign_records']:,} foreign, ignored) "
        f"in {audit.seconds:.1f} s, {audit.attempts} attempt(s), "
        + (
            f"from the checkpoint of {audit.started_from:%Y-%m-%d %H:%M} ({counts['records_judged']:,} judged, "
            f"{counts['records_in_books']:,} in the books)"
            if audit.started_from
            else "from scratch"
        ),
        f"persons {counts['persons']:,} · claims {counts['claims_final']:,} final, "
        f"{counts['claims_pending']:,} pending · reversals {counts['reversals']:,}",
        f"relationships {counts['relationships']:,} · months {counts['months']:,}",
    ]
    if audit.redis_loading_seconds >= 1:
        lines.append(f"waited {audit.redis_loading_seconds:.0f} s for Redis to load its data")
    if report.pending:
        kinds = Counter(pending.what for pending in report.pending).most_common()
        lines.append(
            f"[yellow]pending {len(report.pending):,}[/yellow]: "
            + "; ".join(f"{what} ({count:,})" for what, count in kinds)
        )
    if first := report.first:
        by_invariant = Counter(difference.invariant for difference in report.differences).most_common()
        lines += [
            f"[red]differences {len(report.differences):,}[/red]: "
            + ", ".join(f"{invariant} {count:,}" for invariant, count in by_invariant),
            f"first: [bold]{first.invariant}[/bold]: {escape(first.what)}",
            "  " + escape(masked(" ".join(f"{role} {value}" for role, value in first.ids.items()))),
            f"  expected {escape(str(masked(first.expected)))}, found {escape(str(masked(first.found)))}",
        ]
    return lines
