"""The exact statistics and the daily reconciliation on the real Redis: every result and dead letter
counts once however often it is published or read, in the minute and day of its first copy, and
what is published equals the audit's own figures from the topics (gongji/audit/figures.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from gongji.audit.figures import RECONCILIATION_SIDES, STATISTICS_FIELDS, figures
from gongji.reconcile import checked, held
from services.settlement.handlers import Publication, SettlementHandlers
from shared.contracts import DeadLetter, ReconciliationDay, SettlementEvent, StatisticsSnapshot
from shared.runtime import Delivery, ToTopic
from shared.settings import Settings
from shared.topics import DEAD_LETTERS, SETTLEMENTS, province_claims
from tests.integration.bus import Bus, bus_on_its_own_database

STATISTICS_DATABASE = 9  # the sums are the whole database's: this test's alone
REGION = "510100"


@pytest.fixture
async def bus(infrastructure):
    async with bus_on_its_own_database(infrastructure, STATISTICS_DATABASE) as bus:
        yield bus


async def provided_recipient(bus: Bus) -> str:
    """A recipient in REGION with 50,000 fen granted by a provider in province 44."""
    recipient = await bus.person("resident", REGION)
    provider = await bus.person("employee", "440300")
    await bus.credit(provider, 1_000_000)
    await bus.establish(provider, recipient, REGION)
    assert (await bus.grant(provider, recipient, REGION, 50_000)).type == "granted"
    return recipient


async def every_copy_read_again(bus: Bus) -> None:
    """Every result and dead letter published so far, read again (a consumer that rewound)."""
    again = [
        Delivery(SETTLEMENTS if record.topic == SETTLEMENTS.name else DEAD_LETTERS, model.model_validate(record.value))
        for record in bus.records
        for model in [SettlementEvent if record.topic == SETTLEMENTS.name else DeadLetter]
        if record.topic in (SETTLEMENTS.name, DEAD_LETTERS.name)
    ]
    await bus.saga.settlement.on_published(again)


def published(publication: Publication, kind: type) -> list:
    return [output for output in publication.outputs if isinstance(output, kind)]


def assert_as_the_ledger_says(bus: Bus, publication: Publication) -> None:
    ledger = figures(bus.records)
    snapshots = published(publication, StatisticsSnapshot)
    assert snapshots
    for snapshot in snapshots:
        assert snapshot.model_dump(mode="json", include=set(STATISTICS_FIELDS)) == ledger.statistics(snapshot.minute)
    for day in published(publication, ReconciliationDay):
        assert day.model_dump(mode="json", include=set(RECONCILIATION_SIDES)) == ledger.reconciliation(
            day.day, day.province
        )


async def test_each_result_counts_once_whatever_its_copies_and_as_the_ledger_says(bus: Bus) -> None:
    recipient = await provided_recipient(bus)
    paid, refused = bus.saga.settle(recipient, 30_000), bus.saga.settle(recipient, 1_000, category="cosmetics")
    for claim in (paid, refused, bus.saga.reverse(recipient, paid.claim_id), bus.saga.settle(recipient, 40_000)):
        await bus.claim(claim)
    await bus.claim(paid)  # redelivered: its result is published again
    await bus.claim(refused.model_copy(update={"amount_fen": 2_000}))  # its id reused: CONFLICT
    await every_copy_read_again(bus)
    settlement = bus.saga.settlement

    publication = await settlement.publication_due()
    (snapshot,) = published(publication, StatisticsSnapshot)
    counts = {one.key: (one.count, one.amount_fen) for one in snapshot.by_status}
    assert counts == {"settled": (2, 70_000), "reversed": (1, 30_000), "rejected": (2, 0)}
    assert {one.key: one.count for one in snapshot.rejections_by_reason} == {
        "CATEGORY_NOT_ALLOWED": 1,
        "CONFLICT": 1,
    }
    assert {one.key: one.amount_fen for one in snapshot.by_province_pair} == {"44>51": 70_000}
    assert snapshot.revision == 5
    assert_as_the_ledger_says(bus, publication)
    # The day is open: every province whose figures moved, on the national topic only.
    days = {day.province: day for day in published(publication, ReconciliationDay)}
    assert set(days) == {"51"} and not days["51"].final
    assert not any(isinstance(output, ToTopic) for output in publication.outputs)
    service = days["51"].as_service.total
    assert (service.settlements, service.mutual_aid_fen, service.refunds, service.refunded_fen) == (
        2,
        70_000,
        1,
        30_000,
    )

    await settlement.published(publication)
    assert (await settlement.publication_due()).outputs == []  # nothing changed since


async def test_a_change_while_publishing_keeps_its_minute_marked(bus: Bus) -> None:
    recipient = await provided_recipient(bus)
    await bus.claim(bus.saga.settle(recipient, 10_000))
    settlement = bus.saga.settlement
    publication = await settlement.publication_due()
    await bus.claim(bus.saga.settle(recipient, 5_000))  # counted after the snapshot was read
    await settlement.published(publication)
    (snapshot,) = published(await settlement.publication_due(), StatisticsSnapshot)
    assert {one.key: one.count for one in snapshot.by_status} == {"settled": 2}


async def test_a_result_of_just_before_midnight_published_again_after_it_belongs_to_its_day_only(
    bus: Bus,
) -> None:
    recipient = await provided_recipient(bus)
    before_midnight = datetime.fromisoformat("2026-03-02T23:59:59.500+08:00")
    bus.clock.set(before_midnight)
    paid = bus.saga.settle(recipient, 20_000)
    misplaced = bus.saga.settle(recipient, 1_000)  # sent on province 44's topic: refused before its id is taken
    await bus.claim(paid)
    await bus.claim(misplaced, topic=province_claims("44"))
    bus.clock.set(before_midnight + timedelta(seconds=1))  # 00:00:00.5 the next day
    await bus.claim(paid)  # its result again, settled_at as first published
    await bus.claim(misplaced, topic=province_claims("44"))  # the same answer, dated after midnight
    await every_copy_read_again(bus)
    settlement = bus.saga.settlement
    settle = timedelta(seconds=Settings().reconciliation_settle_seconds)
    bus.clock.set(datetime.fromisoformat("2026-03-03T00:00:00+08:00") + settle)

    publication = await settlement.publication_due()
    snapshots = {one.minute: one for one in published(publication, StatisticsSnapshot)}
    statuses = {minute: {one.key: one.count for one in snapshot.by_status} for minute, snapshot in snapshots.items()}
    # The result counts before midnight only; the refusal, answered again the next day, is that
    # day's answer too.
    assert statuses == {"2026-03-02T23:59": {"settled": 1, "rejected": 1}, "2026-03-03T00:00": {"rejected": 1}}
    days = [day for day in published(publication, ReconciliationDay) if day.province == "51"]
    assert [(day.day, day.final, day.as_service.total.settlements) for day in days] == [("2026-03-02", True, 1)]
    # Final: every province gets its day, on its own topic too.
    copies = [output for output in publication.outputs if isinstance(output, ToTopic)]
    assert len(copies) == len(published(publication, ReconciliationDay)) == 32
    assert_as_the_ledger_says(bus, publication)
    # `gongji reconcile` reads the same day from Redis and finds the ledger agrees, both days.
    for day in ("2026-03-02", "2026-03-03"):
        held_days = await held(bus.redis, Settings().statistics_shards, day, bus.clock, 60)
        assert all(not one.differences for one in checked(held_days, bus.records)), day
    assert (
        sum(
            one.as_service.total.settlements
            for one in await held(bus.redis, Settings().statistics_shards, "2026-03-03", bus.clock, 60)
        )
        == 0
    )


async def test_a_difference_from_the_ledger_is_shown(bus: Bus) -> None:
    recipient = await provided_recipient(bus)
    await bus.claim(bus.saga.settle(recipient, 10_000))
    day = bus.clock.now().strftime("%Y-%m-%d")
    held_days = await held(bus.redis, Settings().statistics_shards, day, bus.clock, 60)
    ledger_without_it = [record for record in bus.records if record.topic != SETTLEMENTS.name]
    (found,) = [one for one in checked(held_days, ledger_without_it) if one.differences]
    assert found.day.province == "51"
    assert "as_service.total.settlements: 1 held, 0 in the ledger" in found.differences


async def test_a_publisher_never_clears_a_mark_set_after_what_it_read(bus: Bus) -> None:
    """Two instances publish: the slower one's publication, confirmed after a result was counted
    again in the same minute, leaves that result's mark (it was not in what it published)."""
    recipient = await provided_recipient(bus)
    await bus.claim(bus.saga.settle(recipient, 10_000))
    settlement = bus.saga.settlement
    other = SettlementHandlers(settlement.store, bus.clock)  # another instance on the same Redis
    first, second = await settlement.publication_due(), await other.publication_due()
    await settlement.published(first)
    await bus.claim(bus.saga.settle(recipient, 5_000))  # counted after both read the marks
    await other.published(second)
    (snapshot,) = published(await settlement.publication_due(), StatisticsSnapshot)
    assert {one.key: one.count for one in snapshot.by_status} == {"settled": 2}


async def test_an_open_day_whose_publication_failed_is_published_again(bus: Bus) -> None:
    recipient = await provided_recipient(bus)
    await bus.claim(bus.saga.settle(recipient, 10_000))
    settlement = bus.saga.settlement
    failed = await settlement.publication_due()  # never confirmed: `published` is not told
    assert [day.province for day in published(failed, ReconciliationDay)] == ["51"]
    again = await settlement.publication_due()
    assert [day.province for day in published(again, ReconciliationDay)] == ["51"]
    await settlement.published(again)
    assert published(await settlement.publication_due(), ReconciliationDay) == []


async def test_a_months_pairs_less_their_reversals_are_its_clearing_statement(bus: Bus) -> None:
    recipient = await provided_recipient(bus)  # paid from province 44 for care in 51
    paid = bus.saga.settle(recipient, 30_000)
    for claim in (paid, bus.saga.settle(recipient, 15_000), bus.saga.reverse(recipient, paid.claim_id)):
        await bus.claim(claim)
    rows = await bus.close("2026-03", datetime.fromisoformat("2026-04-01T00:00:00+08:00"))
    snapshots = published(await bus.saga.settlement.publication_due(), StatisticsSnapshot)
    pairs: dict[str, list[int]] = {}
    for snapshot in snapshots:
        for line, sign in [
            *((one, 1) for one in snapshot.by_province_pair),
            *((one, -1) for one in snapshot.reversals_by_province_pair),
        ]:
            figures_of = pairs.setdefault(line.key, [0, 0, 0])
            figures_of[0] += sign * line.amount_fen
            figures_of[1 if sign == 1 else 2] += line.count
    gross = {f"{row.payer_province}>{row.payee_province}": row for row in rows if row.row == "gross"}
    assert pairs == {pair: [row.amount_fen, row.claims, row.reversals] for pair, row in gross.items()}
    assert pairs == {"44>51": [15_000, 2, 1]}
