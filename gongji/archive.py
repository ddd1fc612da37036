"""`gongji archive`: a closed month's settlements, reversals and clearing statement, per province, in
Parquet files a data team reads with any Parquet reader (pyarrow, pandas, DuckDB, Spark), with a
manifest: each file's SHA-256, its rows, and the month's sums, which must equal the statement the
clearing published. A checker of the clearing, so it keeps its own arithmetic: a claim's
cross-province payers add to (payer province, the province of care), a reversal takes them back in
the month it was made.

A province's files hold every settlement and reversal of care given in it or paid from its people's
accounts, and the statement's rows that concern it. They carry resident ID numbers: written for
the operator alone (directories 0700, files 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gongji.audit.books import Record
from shared.topics import CLEARING, SETTLEMENTS

PAID = ("settled", "partial")

_PAYERS = pa.list_(
    pa.struct([("provider_id", pa.string()), ("provider_region", pa.string()), ("amount_fen", pa.int64())])
)
SETTLEMENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("claim_id", pa.string()),
        ("recipient_id", pa.string()),
        ("status", pa.string()),
        ("category", pa.string()),
        ("service_region", pa.string()),
        ("reverses", pa.string()),
        ("requested_fen", pa.int64()),
        ("paid_fen", pa.int64()),
        ("self_pay_fen", pa.int64()),
        ("payers", _PAYERS),
        ("clearing_month", pa.string()),
        ("settled_at", pa.timestamp("ms", tz="Asia/Shanghai")),
    ]
)
CLEARING_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("month", pa.string()),
        ("row", pa.string()),
        ("payer_province", pa.string()),
        ("payee_province", pa.string()),
        ("province", pa.string()),
        ("amount_fen", pa.int64()),
        ("claims", pa.int64()),
        ("reversals", pa.int64()),
        ("closed_at", pa.timestamp("ms", tz="Asia/Shanghai")),
    ]
)


class NotArchivable(Exception):
    """The month cannot be archived (not closed, or its sums differ from its statement): said in words."""


@dataclass
class Line:
    """One (payer province, payee province) pair of a month: fen, claims paid, reversals made."""

    amount_fen: int = 0
    claims: int = 0
    reversals: int = 0


@dataclass
class Month:
    """What the topics say of one clearing month, each output once (a republished one keeps its id)."""

    settlements: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id -> event
    reversals: dict[str, dict[str, Any]] = field(default_factory=dict)
    statement: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> dict[str, Line]:
        """ "PP>QQ" -> the month's line, from its settlements and reversals alone."""
        lines: dict[str, Line] = defaultdict(Line)
        for events, sign in ((self.settlements, 1), (self.reversals, -1)):
            for event in events.values():
                # A reversal gives back the claim it reverses, whose id begins with its region of care.
                payee = (event["reverses"] if sign < 0 else event["claim_id"])[:2]
                owed: dict[str, int] = defaultdict(int)
                for payer in event["payers"]:
                    if payer["provider_region"][:2] != payee:
                        owed[f"{payer['provider_region'][:2]}>{payee}"] += payer["amount_fen"]
                for pair, amount in owed.items():
                    lines[pair].amount_fen += sign * amount
                    if sign > 0:
                        lines[pair].claims += 1
                    else:
                        lines[pair].reversals += 1
        return dict(lines)

    def provinces(self) -> set[str]:
        return {province for event in self._events() for province in _concerns(event)} | {
            province for row in self.statement.values() for province in _row_provinces(row)
        }

    def _events(self) -> Iterable[dict[str, Any]]:
        return [*self.settlements.values(), *self.reversals.values()]


def _concerns(event: dict[str, Any]) -> set[str]:
    """The provinces a settlement or reversal concerns: where the care was given, and every payer's."""
    care = (event.get("reverses") or event["claim_id"])[:2]
    return {care} | {payer["provider_region"][:2] for payer in event["payers"]}


def _row_provinces(row: dict[str, Any]) -> set[str]:
    return {row[name] for name in ("payer_province", "payee_province", "province") if row.get(name)}


def month_of(records: Iterable[Record], month: str) -> Month:
    found = Month()
    for record in records:
        value = record.value
        if value is None:
            continue
        if record.topic == SETTLEMENTS.name and value.get("clearing_month") == month:
            if value.get("status") in PAID:
                found.settlements[value["event_id"]] = value
            elif value.get("status") == "reversed":
                found.reversals[value["event_id"]] = value
        elif record.topic == CLEARING.name and value.get("month") == month:
            found.statement[value["event_id"]] = value
    return found


def check(found: Month, month: str) -> dict[str, Any]:
    """The month's sums against its statement; NotArchivable if it has none or they differ."""
    gross = {
        f"{row['payer_province']}>{row['payee_province']}": row
        for row in found.statement.values()
        if row["row"] == "gross"
    }
    net = {row["province"]: row["amount_fen"] for row in found.statement.values() if row["row"] == "net"}
    if not gross and not net:
        raise NotArchivable(f"{month} has no clearing statement: close it first (`gongji clearing close {month}`)")
    computed = {pair: line for pair, line in found.lines().items() if line.amount_fen or line.claims or line.reversals}
    differences = [
        f"{pair}: settlements {computed.get(pair, Line())}, statement "
        f"{Line(row['amount_fen'], row['claims'], row.get('reversals', 0)) if (row := gross.get(pair)) else None}"
        for pair in sorted(set(computed) | set(gross))
        if (row := gross.get(pair)) is None
        or computed.get(pair, Line()) != Line(row["amount_fen"], row["claims"], row.get("reversals", 0))
    ]
    positions: dict[str, int] = defaultdict(int)
    for pair, line in computed.items():
        positions[pair[3:]] += line.amount_fen
        positions[pair[:2]] -= line.amount_fen
    differences += [
        f"net of {province}: settlements {positions.get(province, 0)}, statement {net.get(province, 0)}"
        for province in sorted(set(positions) | set(net))
        if positions.get(province, 0) != net.get(province, 0)
    ]
    if differences:
        raise NotArchivable(f"{month}'s settlements do not add up to its statement: " + "; ".join(differences))
    return {pair: vars(line) for pair, line in sorted(computed.items())}


def write(found: Month, month: str, out: Path, only: str | None = None) -> dict[str, Any]:
    """Writes each province's files and the manifest (`<out>/<month>/manifest.json`); answers it."""
    lines = check(found, month)
    folder = out / month
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    provinces = sorted(found.provinces() if only is None else {only})
    manifest: dict[str, Any] = {
        "month": month,
        "written_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "format": "parquet",
        "clearing": lines,
        "provinces": {},
    }
    for province in provinces:
        manifest["provinces"][province] = _write_province(found, province, folder / province, lines)
    manifest_path = folder / "manifest.json" if only is None else folder / f"manifest-{only}.json"
    _private(manifest_path).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _write_province(found: Month, province: str, folder: Path, lines: dict[str, Any]) -> dict[str, Any]:
    folder.mkdir(exist_ok=True, mode=0o700)
    tables = {
        "settlements": _table([e for e in found.settlements.values() if province in _concerns(e)], SETTLEMENT_SCHEMA),
        "reversals": _table([e for e in found.reversals.values() if province in _concerns(e)], SETTLEMENT_SCHEMA),
        "clearing": _table(
            [row for row in found.statement.values() if province in _row_provinces(row)], CLEARING_SCHEMA
        ),
    }
    files = {}
    for name, table in tables.items():
        path = _private(folder / f"{name}.parquet")
        pq.write_table(table, path)
        files[f"{province}/{name}.parquet"] = {"sha256": _sha256(path), "rows": table.num_rows}
    settlements, reversals = tables["settlements"], tables["reversals"]
    own = {pair: line for pair, line in lines.items() if province in (pair[:2], pair[3:])}
    return {
        "files": files,
        "sums": {
            "settlements": settlements.num_rows,
            "paid_fen": sum(settlements.column("paid_fen").to_pylist()),
            "reversals": reversals.num_rows,
            "reversed_fen": sum(reversals.column("paid_fen").to_pylist()),
            "cross_province": own,
            "net_fen": sum(line["amount_fen"] * (1 if pair[3:] == province else -1) for pair, line in own.items()),
        },
    }


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = sorted(rows, key=lambda row: row["event_id"])
    columns = {name: [_typed(row.get(name), schema.field(name).type) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _typed(value: Any, kind: pa.DataType) -> Any:
    if pa.types.is_timestamp(kind) and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def _private(path: Path) -> Path:
    """A file only its owner reads: created 0600 before anything is written to it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_month(folder: Path, manifest_name: str = "manifest.json") -> list[str]:
    """Reads a month back: each file's checksum and rows as the manifest says, and the sums again
    from the files. Answers what differs (nothing: the archive stands)."""
    manifest = json.loads((folder / manifest_name).read_text())
    problems = []
    for province, written in manifest["provinces"].items():
        for name, expected in written["files"].items():
            path = folder / name
            if not path.exists():
                problems.append(f"{name}: missing")
                continue
            if _sha256(path) != expected["sha256"]:
                problems.append(f"{name}: its checksum differs from the manifest's")
            if pq.read_metadata(path).num_rows != expected["rows"]:
                problems.append(f"{name}: its rows differ from the manifest's")
        settlements = pq.read_table(folder / province / "settlements.parquet").to_pylist()
        if sum(row["paid_fen"] for row in settlements) != written["sums"]["paid_fen"]:
            problems.append(f"{province}: its settlements no longer add up to the manifest's paid_fen")
    return problems
