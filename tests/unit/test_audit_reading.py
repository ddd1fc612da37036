"""The deep audit reads the topics one partition after another, in the books' order, from where each
is read from up to its end when asked, and holds no record: each is taken into the books as read."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from gongji.audit.books import in_order
from gongji.audit.deep import _rebuilt, records_in_order
from gongji.audit.spill import Spill


class OnePartitionAtATime:
    """A consumer over stored partitions whose fetches give two records at a time, past the end
    asked for too (records published since), and only from the one partition resumed."""

    def __init__(self, held: dict[TopicPartition, int], deleted: dict[TopicPartition, int] | None = None) -> None:
        self.held = held
        self.log_starts = {partition: (deleted or {}).get(partition, 0) for partition in held}  # retention's
        self.positions = dict.fromkeys(held, 0)
        self.paused: set[TopicPartition] = set()
        self.assigned: set[TopicPartition] = set()
        self.placed: set[TopicPartition] = set()

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert set(partitions) <= set(self.held)
        self.assigned = set(partitions)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset
        self.placed.add(partition)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for partition in partitions:
            self.positions[partition] = self.log_starts[partition]
        self.placed |= set(partitions)

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {partition: self.log_starts[partition] for partition in partitions}

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int):
        # A real consumer resets a partition left unplaced on its own, and late (to its end).
        assert self.placed == self.assigned, "every partition is placed before any is read"
        resumed = [partition for partition in partitions if partition not in self.paused]
        assert len(resumed) == 1, "one partition is read at a time"
        partition = resumed[0]
        first = max(self.positions[partition], self.log_starts[partition])  # reset to the earliest held
        offsets = range(first, min(first + 2, self.held[partition]))
        self.positions[partition] = offsets.stop
        return {
            partition: [
                SimpleNamespace(
                    topic=partition.topic, partition=partition.partition, offset=offset, key=b"k", value=b"{}"
                )
                for offset in offsets
            ]
        }


async def test_each_partition_is_read_whole_from_its_start_to_its_end_in_the_books_order() -> None:
    later, earlier, second = TopicPartition("t", 0), TopicPartition("a", 0), TopicPartition("t", 1)
    consumer = OnePartitionAtATime({later: 10, earlier: 3, second: 5})
    ends = {later: 8, earlier: 3, second: 5}
    read = [record async for record in records_in_order(consumer, ends, starts={("t", 0): 3})]
    assert [in_order(record) for record in read] == [
        *(("a", 0, offset) for offset in range(3)),
        *(("t", 0, offset) for offset in range(3, 8)),  # not the records published after the end asked for
        *(("t", 1, offset) for offset in range(5)),
    ]
    assert consumer.paused == set(ends)


async def test_a_partition_with_nothing_between_its_start_and_end_is_not_fetched() -> None:
    empty, read_before = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = OnePartitionAtATime({empty: 0, read_before: 4})
    ends = {empty: 0, read_before: 4}
    assert [record async for record in records_in_order(consumer, ends, starts={("t", 1): 4})] == []


async def test_a_partition_retention_emptied_past_its_end_is_reported_truncated() -> None:
    """It gives no record whose offset would tell: the topic's own beginning does."""
    emptied, partly, whole, nothing_asked = (TopicPartition("t", number) for number in range(4))
    consumer = OnePartitionAtATime(
        {emptied: 10, partly: 10, whole: 5, nothing_asked: 6}, deleted={emptied: 10, partly: 7, nothing_asked: 6}
    )
    ends = {emptied: 10, partly: 10, whole: 5, nothing_asked: 6}
    books = await _rebuilt(consumer, ends, starts={("t", 0): 4, ("t", 3): 6}, cut=None, spill=Spill())
    assert books.truncated == {("t", 0): 10, ("t", 1): 7}
