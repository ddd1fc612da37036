"""Pipelined acknowledgements: what is committed, when, and where the consumer goes back to when a
batch's outputs are not confirmed. The consumer is a stand-in that records seeks and commits; the
integration and end-to-end tiers run the real one (kill -9, broker and Redis restarts)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError

from shared.acknowledgements import Acknowledgements, FlushOnRevoke

P0, P1, P2 = (TopicPartition("gongji.claims.v1", partition) for partition in range(3))


class Consumer:
    def __init__(self, *assigned: TopicPartition) -> None:
        self.assigned = set(assigned)
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.failing_commits = 0
        self.gate: asyncio.Event | None = None  # a commit in flight until it is set

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing_commits:
            self.failing_commits -= 1
            raise CommitFailedError("the group rebalanced")
        self.commits.append(dict(offsets))


def records(partition: TopicPartition, *offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(topic=partition.topic, partition=partition.partition, offset=offset) for offset in offsets]


def pipeline(consumer: Consumer) -> Acknowledgements:
    acknowledgements = Acknowledgements("unit")
    acknowledgements.polling(consumer)
    return acknowledgements


async def polled_and_sent(
    acknowledgements: Acknowledgements, batch: list[SimpleNamespace], confirmation: asyncio.Future
) -> None:
    """As the runtime does: the batch is polled, handled, then its outputs are sent."""
    acknowledgements.polled(batch)
    await acknowledgements.send(batch, outputs(confirmation))


def outputs(*confirmations: asyncio.Future):
    async def send() -> list[asyncio.Future]:
        return list(confirmations)

    return send


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_batch_is_committed_only_once_its_outputs_are_confirmed_at_the_offset_after_its_last_record() -> None:
    consumer = Consumer(P0, P1)
    acknowledgements = pipeline(consumer)
    confirmation = asyncio.get_running_loop().create_future()
    await acknowledgements.send([*records(P0, 5, 6), *records(P1, 9)], outputs(confirmation))
    await settle()
    assert consumer.commits == []

    confirmation.set_result(None)
    await settle()
    assert consumer.commits == [{P0: 7, P1: 10}]


async def test_the_next_batchs_outputs_wait_for_the_previous_confirmation_and_commits_keep_the_batch_order() -> None:
    consumer = Consumer(P0)
    acknowledgements = pipeline(consumer)
    first, second = (asyncio.get_running_loop().create_future() for _ in range(2))
    await acknowledgements.send(records(P0, 1, 2), outputs(first))
    sent = []

    async def send_second() -> list[asyncio.Future]:
        sent.append("second")
        return [second]

    sending = asyncio.create_task(acknowledgements.send(records(P0, 3), send_second))
    await settle()
    assert sent == []  # the first batch is not confirmed yet

    first.set_result(None)
    second.set_result(None)
    await sending
    await settle()
    assert sent == ["second"]
    assert [commit[P0] for commit in consumer.commits] in ([3, 4], [4])  # in order, never backwards


async def test_when_the_previous_outputs_fail_both_batches_are_read_again_and_nothing_is_committed() -> None:
    consumer = Consumer(P0, P1, P2)
    acknowledgements = pipeline(consumer)
    failed = asyncio.get_running_loop().create_future()
    await acknowledgements.send([*records(P0, 10, 11), *records(P1, 4)], outputs(failed))
    failed.set_exception(KafkaTimeoutError())
    sent = []

    async def never() -> list[asyncio.Future]:
        sent.append("second")
        return []

    with pytest.raises(KafkaTimeoutError):
        await acknowledgements.send([*records(P0, 12), *records(P2, 7)], never)
    await settle()
    assert sent == []  # the later batch's outputs never overtake the failed ones
    assert dict(consumer.seeks) == {P0: 10, P1: 4, P2: 7}  # P0 back to the failed batch's first, not the later one's
    assert consumer.commits == []

    consumer.seeks.clear()  # the batches are read again: no failure is left to act on twice
    acknowledgements.polling(consumer)
    assert consumer.seeks == []


async def test_outputs_that_fail_while_no_batch_is_in_hand_are_read_again_at_the_next_poll() -> None:
    consumer = Consumer(P0)
    acknowledgements = pipeline(consumer)
    failed = asyncio.get_running_loop().create_future()
    await acknowledgements.send(records(P0, 3, 4), outputs(failed))
    acknowledgements.polling(consumer)
    assert consumer.seeks == []  # not failed yet: nothing moves

    failed.set_exception(KafkaTimeoutError())
    await settle()
    acknowledgements.polling(consumer)
    acknowledgements.polling(consumer)
    assert consumer.seeks == [(P0, 3)]
    assert consumer.commits == []


async def test_a_batch_whose_outputs_cannot_be_handed_to_the_producer_is_read_again() -> None:
    consumer = Consumer(P0, P1)
    acknowledgements = pipeline(consumer)

    async def refused() -> list[asyncio.Future]:
        raise KafkaTimeoutError()

    with pytest.raises(KafkaTimeoutError):
        await acknowledgements.send([*records(P0, 8, 9), *records(P1, 2)], refused)
    assert dict(consumer.seeks) == {P0: 8, P1: 2}


async def test_a_rewind_leaves_partitions_that_are_no_longer_assigned_alone() -> None:
    consumer = Consumer(P0)
    acknowledgements = pipeline(consumer)
    acknowledgements.rewind([*records(P0, 8), *records(P1, 2)])
    assert consumer.seeks == [(P0, 8)]


async def test_a_failed_commit_goes_with_the_next_one() -> None:
    consumer = Consumer(P0, P1)
    consumer.failing_commits = 1
    acknowledgements = pipeline(consumer)
    done = _confirmed_now()
    await acknowledgements.send(records(P0, 1), outputs(done))
    await settle()
    assert consumer.commits == []

    again = _confirmed_now()
    await acknowledgements.send(records(P1, 5), outputs(again))
    await settle()
    assert consumer.commits == [{P0: 2, P1: 6}]


async def test_a_batch_that_failed_before_its_handler_is_read_again_at_the_next_poll() -> None:
    consumer = Consumer(P0, P1)
    acknowledgements = pipeline(consumer)
    acknowledgements.polled([*records(P0, 4, 5), *records(P1, 9)])  # then FastStream's parsing raised
    acknowledgements.polling(consumer)
    assert dict(consumer.seeks) == {P0: 4, P1: 9}

    consumer.seeks.clear()
    acknowledgements.polled(records(P0, 4, 5))
    done = _confirmed_now()
    await acknowledgements.send(records(P0, 4, 5), outputs(done))  # handled: nothing to read again
    acknowledgements.polling(consumer)
    assert consumer.seeks == []


async def test_before_partitions_move_what_is_confirmed_is_committed() -> None:
    consumer = Consumer(P0, P1)
    acknowledgements = pipeline(consumer)
    confirmation = asyncio.get_running_loop().create_future()
    await acknowledgements.send([*records(P0, 1), *records(P1, 3)], outputs(confirmation))
    asyncio.get_running_loop().call_later(0.01, confirmation.set_result, None)

    await FlushOnRevoke(acknowledgements).on_partitions_revoked({P0, P1})
    assert consumer.commits == [{P0: 2, P1: 4}]  # the flush waited for the confirmation and the commit


async def test_a_rebalance_waits_for_an_unwell_kafka_only_so_long() -> None:
    consumer = Consumer(P0)
    acknowledgements = pipeline(consumer)
    never = asyncio.get_running_loop().create_future()
    await acknowledgements.send(records(P0, 1), outputs(never))
    started = asyncio.get_running_loop().time()
    await acknowledgements.flush(timeout=0.05)
    assert asyncio.get_running_loop().time() - started < 1
    assert consumer.commits == []


async def test_offsets_confirmed_under_an_earlier_assignment_are_never_committed() -> None:
    consumer = Consumer(P0)
    consumer.failing_commits = 1
    acknowledgements = pipeline(consumer)
    first = _confirmed_now()
    await acknowledgements.send(records(P0, 100), outputs(first))
    await settle()  # its commit failed: it would go with the next one...
    late = asyncio.get_running_loop().create_future()
    await acknowledgements.send(records(P0, 101), outputs(late))

    await acknowledgements.flush(timeout=0.01)  # ...but P0 moves away (its flush given up), and comes back later
    await FlushOnRevoke(acknowledgements).on_partitions_assigned({P0})
    late.set_result(None)  # confirmed only now, read under the old assignment
    await settle()
    fresh = _confirmed_now()
    await polled_and_sent(acknowledgements, records(P0, 500), fresh)
    await acknowledgements.flush()
    assert consumer.commits == [{P0: 501}]  # never 101 or 102: another owner may have gone further


async def test_a_commit_that_fails_after_a_rebalance_is_not_carried_into_the_new_assignment() -> None:
    consumer = Consumer(P0, P1)
    consumer.failing_commits, consumer.gate = 1, asyncio.Event()
    acknowledgements = pipeline(consumer)
    first = _confirmed_now()
    await acknowledgements.send(records(P0, 100), outputs(first))
    await settle()  # its commit is in flight...
    await FlushOnRevoke(acknowledgements).on_partitions_assigned({P0, P1})
    consumer.gate.set()  # ...and fails once P0 was assigned again
    await settle()
    fresh = _confirmed_now()
    await polled_and_sent(acknowledgements, records(P1, 500), fresh)
    await acknowledgements.flush()
    assert consumer.commits == [{P1: 501}]  # not P0's stale 101: another owner may have gone further


async def test_a_batch_held_while_partitions_move_away_and_back_is_not_committed() -> None:
    consumer = Consumer(P0)
    acknowledgements = pipeline(consumer)
    first = asyncio.get_running_loop().create_future()
    await polled_and_sent(acknowledgements, records(P0, 10, 11), first)
    acknowledgements.polled(records(P0, 12, 13))  # read under this assignment...
    held = asyncio.create_task(acknowledgements.send(records(P0, 12, 13), outputs(_confirmed_now())))
    await settle()
    listener = FlushOnRevoke(acknowledgements)
    await listener.on_partitions_assigned({P0})  # ...P0 went to another owner and came back meanwhile
    await listener.on_partitions_assigned({P0})
    first.set_result(None)
    await held
    await acknowledgements.flush()
    assert consumer.commits == []  # the other owner may have committed beyond 14


async def test_a_batch_that_keeps_failing_before_its_handler_is_polled_again_after_a_growing_pause() -> None:
    consumer = Consumer(P0)
    acknowledgements = pipeline(consumer)
    pauses = []
    for _ in range(8):
        acknowledgements.polled(records(P0, 7))  # and FastStream's parsing raises, every time
        pauses.append(acknowledgements.polling(consumer))
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert consumer.seeks == [(P0, 7)] * 8  # never skipped

    acknowledgements.polled(records(P0, 7))
    await acknowledgements.send(records(P0, 7), outputs(_confirmed_now()))  # handled at last
    assert acknowledgements.polling(consumer) == 0.0


async def test_a_flush_commits_what_a_failed_commit_left() -> None:
    consumer = Consumer(P0)
    consumer.failing_commits = 1
    acknowledgements = pipeline(consumer)
    await acknowledgements.send(records(P0, 3), outputs(_confirmed_now()))
    await settle()
    assert consumer.commits == []
    await acknowledgements.flush()
    assert consumer.commits == [{P0: 4}]


def _confirmed_now() -> asyncio.Future:
    confirmation = asyncio.get_running_loop().create_future()
    confirmation.set_result(None)
    return confirmation
