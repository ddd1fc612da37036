"""`gongji archive` on the records the services published (real Redis, the records kept as Kafka
would keep them): each province's Parquet files, their manifest, and sums that must equal the
clearing statement, including a reversal made in the next month of a claim of a closed one."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gongji.archive import NotArchivable, month_of, verify_month, write
from shared.topics import CLEARING
from tests.integration.bus import Bus, bus_on_its_own_database

ARCHIVE_DATABASE = 10  # closing a month sums every claim of the database: this test's alone
REGION = "510100"  # the recipient's, and where the care is given (province 51)


@pytest.fixture
async def bus(infrastructure):
    async with bus_on_its_own_database(infrastructure, ARCHIVE_DATABASE) as bus:
        yield bus


async def two_months(bus: Bus) -> dict[str, str]:
    """Providers in 44 and 12 pay for care in 51 in March (one claim split between both, one paid by
    44 alone, one paid within 51); March is closed; in April the split claim is reversed; April closed."""
    recipient = await bus.person("resident", REGION)
    providers = {code: await bus.person("employee", region) for code, region in (("44", "440300"), ("12", "120100"))}
    providers["51"] = await bus.person("employee", "510104")
    for provider in providers.values():
        await bus.credit(provider, 1_000_000)
        await bus.establish(provider, recipient, REGION)
        bus.clock.set(bus.clock.now() + timedelta(seconds=1))  # grants draw in the order made: 44, 12, 51
    for code, quota in (("44", 30_000), ("12", 20_000)):
        assert (await bus.grant(providers[code], recipient, REGION, quota)).type == "granted"
        bus.clock.set(bus.clock.now() + timedelta(seconds=1))
    split, alone = bus.saga.settle(recipient, 40_000), bus.saga.settle(recipient, 10_000)
    await bus.claim(split)  # 30,000 from 44, 10,000 from 12
    await bus.claim(alone)  # the last 10,000 of 12's quota
    assert (await bus.grant(providers["51"], recipient, REGION, 5_000)).type == "granted"
    within = bus.saga.settle(recipient, 5_000)
    await bus.claim(within)  # paid within 51: no clearing
    await bus.close("2026-03", datetime.fromisoformat("2026-04-01T00:00:00+08:00"))
    bus.clock.set(datetime.fromisoformat("2026-04-01T10:00:00+08:00"))  # within the split claim's window
    await bus.claim(bus.saga.reverse(recipient, split.claim_id))
    await bus.close("2026-04", datetime.fromisoformat("2026-05-01T00:00:00+08:00"))
    return {"split": split.claim_id, "alone": alone.claim_id, "within": within.claim_id}


async def test_a_closed_month_is_archived_per_province_and_adds_up_to_its_statement(bus: Bus, tmp_path: Path) -> None:
    claims = await two_months(bus)
    manifest = write(month_of(bus.records, "2026-03"), "2026-03", tmp_path)
    assert manifest["clearing"] == {
        "12>51": {"amount_fen": 20_000, "claims": 2, "reversals": 0},
        "44>51": {"amount_fen": 30_000, "claims": 1, "reversals": 0},
    }
    provinces = manifest["provinces"]
    assert sorted(provinces) == ["12", "44", "51"]
    assert provinces["51"]["sums"]["net_fen"] == 50_000 and provinces["44"]["sums"]["net_fen"] == -30_000
    assert provinces["51"]["sums"]["paid_fen"] == 55_000  # every claim of its care, within 51 too
    settled = pq.read_table(tmp_path / "2026-03" / "44" / "settlements.parquet").to_pylist()
    assert [row["claim_id"] for row in settled] == [claims["split"]]  # 44 paid for the split claim alone
    assert [payer["amount_fen"] for payer in settled[0]["payers"]] == [30_000, 10_000]
    statement = pq.read_table(tmp_path / "2026-03" / "12" / "clearing.parquet").to_pylist()
    assert {(row["row"], row["amount_fen"]) for row in statement} == {("gross", 20_000), ("net", -20_000)}
    assert verify_month(tmp_path / "2026-03") == []
    files = [path for path in (tmp_path / "2026-03").rglob("*") if path.is_file()]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)  # they carry resident IDs

    april = write(month_of(bus.records, "2026-04"), "2026-04", tmp_path, only="44")
    assert april["clearing"]["44>51"] == {"amount_fen": -30_000, "claims": 0, "reversals": 1}
    assert april["provinces"]["44"]["sums"]["reversed_fen"] == 40_000
    assert verify_month(tmp_path / "2026-04", "manifest-44.json") == []


async def test_a_month_is_archived_only_closed_and_only_if_it_adds_up(bus: Bus, tmp_path: Path) -> None:
    await two_months(bus)
    with pytest.raises(NotArchivable, match="no clearing statement"):
        write(month_of(bus.records, "2026-05"), "2026-05", tmp_path)
    changed = [
        replace(record, value={**record.value, "amount_fen": record.value["amount_fen"] + 1})
        if record.topic == CLEARING.name and record.value and record.value.get("payer_province") == "44"
        else record
        for record in bus.records
    ]
    with pytest.raises(NotArchivable, match="44>51"):
        write(month_of(changed, "2026-03"), "2026-03", tmp_path)
    assert not (tmp_path / "2026-03").exists()  # nothing written for a month that does not add up


async def test_an_archive_changed_after_it_was_written_is_found(bus: Bus, tmp_path: Path) -> None:
    await two_months(bus)
    write(month_of(bus.records, "2026-03"), "2026-03", tmp_path)
    folder = tmp_path / "2026-03"
    table = pq.read_table(folder / "51" / "settlements.parquet")
    pq.write_table(table.slice(1), folder / "51" / "settlements.parquet")  # a row lost
    problems = verify_month(folder)
    assert any("51/settlements.parquet: its checksum differs" in problem for problem in problems)
    assert any("51/settlements.parquet: its rows differ" in problem for problem in problems)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["provinces"]["51"]["files"]["51/settlements.parquet"]["rows"] == 3
