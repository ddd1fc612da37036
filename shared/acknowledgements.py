"""Pipelined acknowledgements: a batch's outputs are confirmed by Kafka, and its offsets committed,
while the consumer already handles the next batch.

A subscriber used to wait, batch after batch, for its outputs' acknowledgements and then for its
commit before taking the next records (about 11 ms of every cycle at 100 claims/s). The guarantees
stay as they were:
- a batch's offsets are committed only once all its outputs are confirmed, and commits follow the
  batch order;
- a batch's outputs go to the producer only once the previous batch's outputs are confirmed, so
  outputs keep the order of their batches even when one fails, and at most one batch is unconfirmed;
- when a batch's outputs fail, every partition goes back to its first record not confirmed and the
  consumer reads it again (the effects are idempotent, the outputs carry the same ids).
Failures are acted on only on the consumer's own task (before a poll, or before the next batch's
outputs are sent), never from a callback, so a partition is never moved while a batch is handled.
A batch that failed anywhere else (FastStream's parsing, the decoder) is read again at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from shared.operations import end_process, is_fatal

logger = logging.getLogger("gongji")


# How long a rebalance or a shutdown waits for the last confirmation and commit: well within the
# group's rebalance timeout (GONGJI_CONSUMER_REBALANCE_TIMEOUT_MS, 10 s). An idempotent producer and the commit both
# retry for as long as Kafka is unwell; giving up only means the records are delivered again.
FLUSH_TIMEOUT_SECONDS = 2.0
# A batch that keeps failing before its handler (it is never skipped) is polled again after a pause
# that doubles up to this, so that it does not spin a core.
MAX_PAUSE_SECONDS = 5.0


@dataclass(frozen=True)
class _SentBatch:
    records: Sequence[ConsumerRecord]
    confirmation: asyncio.Future  # all the batch's outputs acknowledged by Kafka
    assignment: int  # which assignment of partitions it was read under


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offset to commit for each partition once these records are done: the one after the last."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        offsets[partition] = max(offsets.get(partition, 0), record.offset + 1)
    return offsets


def first_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        offsets[partition] = min(offsets.get(partition, record.offset), record.offset)
    return offsets


class Acknowledgements:
    """One subscriber's pipeline of confirmations and commits (see the module's docstring)."""

    def __init__(self, subscriber: str) -> None:
        self.subscriber = subscriber
        # For `/health`: whether the consumer has joined its group, and when it last made progress
        # (a poll that found nothing to do, or a batch confirmed).
        self.member = False
        self.progressed_at = time.monotonic()
        self.consumer: Any = None  # the AIOKafkaConsumer; FastStream builds a new one when it restarts
        self.lag = 0  # records on its partitions not read yet, as of its last poll (at most a second old)
        self._in_hand: Sequence[ConsumerRecord] = ()  # polled, neither sent on nor rewound yet
        self._read_under = 0  # the assignment the batch in hand was polled under
        self._failed_before_handler = 0  # times in a row
        self._unconfirmed: _SentBatch | None = None
        self._confirmed: dict[TopicPartition, int] = {}  # next offsets confirmed, not yet committed
        self._committing: asyncio.Task | None = None
        self._assignment = 0  # counts the rebalances: offsets of an earlier assignment are not committed

    def polling(self, consumer: Any) -> float:
        """Before each poll: the batch polled last, if it failed before it was handled, and a batch
        whose outputs failed while no other batch was in hand are read again. Returns how long to
        pause first (a batch that keeps failing before its handler)."""
        self.consumer = consumer
        pause = 0.0
        if self._in_hand:
            self._failed_before_handler += 1
            pause = min(MAX_PAUSE_SECONDS, 0.1 * 2 ** (self._failed_before_handler - 1))
            logger.warning(
                "%s: a batch failed before its handler (%d times); it will be read again in %.1f s",
                self.subscriber,
                self._failed_before_handler,
                pause,
            )
            self.rewind(self._in_hand)
        batch = self._unconfirmed
        if batch is not None and batch.confirmation.done() and _failed(batch.confirmation):
            self._unconfirmed = None
            self.rewind(batch.records)
        return pause

    def polled(self, records: Sequence[ConsumerRecord]) -> None:
        self._in_hand = records
        self._read_under = self._assignment
        batch = self._unconfirmed
        if not records and (batch is None or batch.confirmation.done() and not _failed(batch.confirmation)):
            self.progressed_at = time.monotonic()  # caught up, and nothing waits for Kafka

    def reassigned(self) -> None:
        """After a rebalance the consumer starts again from the committed offsets: what was confirmed
        before is read again, and committing it now could move another owner's offset back."""
        self._assignment += 1
        self._confirmed.clear()
        self.member = True

    async def send(
        self, records: Sequence[ConsumerRecord], send_outputs: Callable[[], Awaitable[Sequence[asyncio.Future]]]
    ) -> None:
        """The batch's effects are done: its outputs go to the producer once the previous batch's are
        confirmed. If they were not, both batches are read again and the previous failure is raised."""
        self._in_hand, self._failed_before_handler = (), 0
        read_under = self._read_under  # a rebalance while the previous batch is confirmed must not count
        if (previous := self._unconfirmed) is not None:
            try:
                # Shielded: a consumer stopped meanwhile must not cancel what `flush` waits for.
                await asyncio.shield(previous.confirmation)
            except BaseException:
                self._unconfirmed = None
                self.rewind([*previous.records, *records])
                raise
            self._unconfirmed = None
        try:
            confirmations = await send_outputs()
        except BaseException:
            self.rewind(records)
            raise
        batch = _SentBatch(records, asyncio.ensure_future(asyncio.gather(*confirmations)), read_under)
        batch.confirmation.add_done_callback(lambda _: self._settled(batch))
        self._unconfirmed = batch

    def rewind(self, records: Sequence[ConsumerRecord]) -> None:
        """The records will not be acknowledged: each of their partitions (still assigned) goes back to
        its first of them, and the consumer fetches from there again."""
        self._in_hand = ()
        assigned = self.consumer.assignment()
        for partition, offset in first_offsets(records).items():
            if partition in assigned:
                self.consumer.seek(partition, offset)

    def _settled(self, batch: _SentBatch) -> None:
        confirmation = batch.confirmation
        if not confirmation.cancelled() and is_fatal(error := confirmation.exception()):
            end_process(error, self.subscriber)
        if _failed(confirmation):
            logger.warning(
                "%s: a batch's outputs were not confirmed (%r); it will be read again",
                self.subscriber,
                confirmation.exception() if not confirmation.cancelled() else "cancelled",
            )
            return
        self.progressed_at = time.monotonic()
        if batch.assignment != self._assignment:
            return  # read under an earlier assignment: the consumer reads it again from the committed offset
        for partition, offset in next_offsets(batch.records).items():
            self._confirmed[partition] = max(self._confirmed.get(partition, 0), offset)
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit())

    async def _commit(self) -> None:
        """Commits what is confirmed, one request at a time, in order. A failed commit is only a lost
        bookmark: its offsets go with the next commit, or the records are delivered again."""
        while self._confirmed:
            offsets, self._confirmed, assignment = self._confirmed, {}, self._assignment
            assigned = self.consumer.assignment()
            offsets = {partition: offset for partition, offset in offsets.items() if partition in assigned}
            if not offsets:
                continue
            try:
                await self.consumer.commit(offsets)
            except Exception as error:  # noqa: BLE001 - see the docstring
                logger.warning("%s: commit failed (%s); it goes with the next one", self.subscriber, error)
                if assignment != self._assignment:
                    return
                for partition, offset in offsets.items():
                    self._confirmed[partition] = max(self._confirmed.get(partition, 0), offset)
                return

    async def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:
        """Waits, for at most `timeout`, for the last batch's confirmation and for its commit (on
        stopping, and before partitions are handed to another instance)."""
        deadline = asyncio.get_running_loop().time() + timeout
        if (batch := self._unconfirmed) is not None:
            await asyncio.wait([batch.confirmation], timeout=timeout)
        if self._confirmed and (self._committing is None or self._committing.done()):
            self._committing = asyncio.create_task(self._commit())  # what an earlier failed commit left
        while self._committing is not None and not self._committing.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                logger.warning(
                    "%s: the last commit did not finish in %.0f s; its records will be delivered again",
                    self.subscriber,
                    timeout,
                )
                return
            await asyncio.wait([self._committing], timeout=left)


class FlushOnRevoke(ConsumerRebalanceListener):
    """Before a partition moves to another instance, what is confirmed here is committed."""

    def __init__(self, acknowledgements: Acknowledgements) -> None:
        self._acknowledgements = acknowledgements

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._acknowledgements.flush()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._acknowledgements.reassigned()


def _failed(confirmation: asyncio.Future) -> bool:
    return confirmation.cancelled() or confirmation.exception() is not None
