"""The deep audit's view of Redis: what each service holds, read by the key layouts documented at the
top of services/*/*.lua.

Each person's keys are read in one MULTI, and each settlement shard's (a recipient's claims and the
clearing amounts they made) in another, so that what is compared inside one of them is one moment.
Settlement is read before the wallet: a claim final when read had drawn before, so its takes are in
the wallet read after it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

from redis.asyncio import Redis

from gongji.audit.spill import Shelf, Spill
from services.settlement.store import PREFIX as SETTLEMENT_PREFIX
from services.wallet.store import PREFIX as WALLET_PREFIX
from shared.redis_functions import execute

RELATIONSHIP_PREFIX = "rel:"  # services/relationship/relationship.lua
_PERSON_KEY = re.compile(r"(?P<prefix>[a-z]+:)\{p:(?P<person>[^}]+)\}:(?P<part>.+)")
_SHARD_KEY = re.compile(
    re.escape(SETTLEMENT_PREFIX) + r"\{s(?P<shard>\d+)\}:(?P<part>claims:\d{8}|closed|clearing:\d{4}-\d{2})"
)
_CLAIMS = "claims:"
_DRAW_BUCKET = re.compile(r"(?:takes|refunds):(?P<day>\d{8})")

# The wallet's per-person hashes the audit reads; `seen:<topic>` (and `seen:<topic>:earlier`, the
# generation before) hold each applied input's result.
_APPLIED = ("credits", "spends", "commands", "relationship-events")
WALLET_PARTS = (
    "account",
    "grants",
    "relationships",
    "rel-versions",
    *(f"seen:{topic}{generation}" for topic in _APPLIED for generation in ("", ":earlier")),
)
_CLEARING = "clearing:"
TOTALS = ("balance", "frozen", "credited", "spent", "paid", "refunded")  # the account's running totals
RELATIONSHIP_PARTS = ("rels", "versions")
_READ_BATCH = 200  # persons per MULTI: short enough never to hold Redis up for long
T = TypeVar("T")  # what names a group of keys read at one instant (a person, a shard)
_SHARDS_AT_ONCE = 4  # a shard holds a 64th of the claims Redis keeps: a few at a time in memory


@dataclass
class WalletAccount:
    totals: dict[str, int] = field(default_factory=dict)  # balance, frozen, credited, spent, paid, refunded
    grants: dict[str, int] = field(default_factory=dict)  # recipient -> remaining quota
    relationships: dict[str, str] = field(default_factory=dict)  # recipient -> region, while active
    relationship_versions: dict[str, int] = field(default_factory=dict)
    takes: dict[str, dict[str, Any]] = field(default_factory=dict)  # claim id -> what it drew here
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)  # refund id -> what went back
    applied: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # seen:<topic> -> id -> result


class RedisState:
    """What grows with the accounts and the claims Redis holds is on disk (gongji/audit/spill.py)."""

    def __init__(self) -> None:
        self.spill = spill = Spill()  # the audit's one database: its books are kept in it too
        self.wallets: Shelf[WalletAccount] = Shelf(
            spill, encode=lambda account: json.dumps(vars(account)), decode=_account, keep="last"
        )  # by person
        # The relationship service: (provider, recipient) -> the pending or active relationship, and its version.
        self.relationships: dict[tuple[str, str], dict[str, Any]] = {}
        self.relationship_versions: dict[tuple[str, str], int] = {}
        self.claims: Shelf[dict[str, Any]] = Shelf(spill, keep="last")  # claim id -> record
        self.clearing: dict[int, dict[str, dict[str, int]]] = {}  # shard -> month -> field -> fen
        self.closed: dict[int, dict[str, dict[str, int]]] = {}  # shard -> month -> as closed

    def accumulators(self, month: str) -> dict[str, int]:
        """A month's clearing accumulators summed over the shards."""
        totals: dict[str, int] = defaultdict(int)
        for months in self.clearing.values():
            for name, value in months.get(month, {}).items():
                totals[name] += value
        return dict(totals)


async def read_state(redis: Redis, today: str) -> RedisState:
    """`today`: the audit's day on the services' clock (YYYYMMDD, Asia/Shanghai)."""
    scan = _Scan(found_days={today})
    async for key in redis.scan_iter(count=5000):
        scan.take(key.decode())
    state = RedisState()
    await _read_settlement(redis, scan, state)
    await _read_relationships(redis, scan, state)
    await _read_wallets(redis, scan, state)
    return state


@dataclass
class _Scan:
    """What the keys scanned name, not the keys (a few per person): everyone with a key is then read
    by key name, every part at once, so a key made after the scan is read as it stands (one made
    after the end offsets holds nothing the records read say)."""

    found_days: set[str]  # the settlement's claims buckets
    months: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))  # each shard's clearing months
    providers: set[str] = field(default_factory=set)  # with relationship keys
    draw_days: dict[str, set[str]] = field(default_factory=dict)  # each wallet's take and refund buckets

    def take(self, key: str) -> None:
        if match := _SHARD_KEY.fullmatch(key):
            shard, part = int(match["shard"]), match["part"]
            self.months[shard]  # every shard with a key is read
            if part.startswith(_CLEARING):
                self.months[shard].add(part.removeprefix(_CLEARING))
            elif part.startswith(_CLAIMS):
                self.found_days.add(part.removeprefix(_CLAIMS))
        elif match := _PERSON_KEY.fullmatch(key):
            if match["prefix"] == RELATIONSHIP_PREFIX:
                self.providers.add(match["person"])
            elif match["prefix"] == WALLET_PREFIX:
                days = self.draw_days.setdefault(match["person"], set())
                if bucket := _DRAW_BUCKET.fullmatch(match["part"]):
                    days.add(bucket["day"])


def _account(text: str) -> WalletAccount:
    return WalletAccount(**json.loads(text))


# Every hash of a group at one instant: a script runs alone. (MULTI would do on one Redis; redis-py's
# cluster client runs a MULTI's commands on a thread of their own, one by one.)
_HASHES_AT_ONCE = """
local hashes = {}
for i, key in ipairs(KEYS) do hashes[i] = redis.call('HGETALL', key) end
return hashes
"""


async def _hashes_in_batches(
    redis: Redis, groups: Iterable[tuple[T, list[str]]], batch: int = _READ_BATCH
) -> AsyncIterator[tuple[T, list[dict[bytes, bytes]]]]:
    """HGETALL of each group's keys (one person's, or one shard's: one slot), a group's keys read
    at one instant, with the group's name; a batch of groups in one pipeline (on a cluster, one per
    node), one batch's keys and replies held at a time."""
    groups = iter(groups)
    while some := list(islice(groups, batch)):
        async with redis.pipeline(transaction=False) as pipe:
            for _, keys in some:
                pipe.eval_ro(_HASHES_AT_ONCE, len(keys), *keys)
            answers = await execute(pipe)
        for (name, _), answer in zip(some, answers, strict=True):
            yield name, [_as_hash(flat) for flat in answer]


def _as_hash(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in raw.items()}


def _numbers(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {name.decode(): int(value) for name, value in raw.items()}


def _json(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {name.decode(): json.loads(value) for name, value in raw.items()}


def _seen(*generations: dict[bytes, bytes]) -> dict[str, Any]:
    """A seen hash holds "<fingerprint>|<result json>" per input id, in two generations, the current
    one's field '' holding when it began (shared/prelude.lua)."""
    return {
        name.decode(): json.loads(value.decode().split("|", 1)[1])
        for raw in generations
        for name, value in raw.items()
        if name
    }


async def _read_settlement(redis: Redis, scan: _Scan, state: RedisState) -> None:
    """Each shard's claims, closed months and clearing accumulators in one MULTI. The claims are read
    by day bucket, every day from the oldest the scan found to the day after `today`, in every shard
    (a day's first claim in a shard may come after the scan); the months are those the scan found
    and those the claims name: a shard whose claims name one more is read again."""
    months = scan.months
    days = _days_between(min(scan.found_days), max(scan.found_days))
    shards = sorted(months)
    while shards:
        unread = []
        groups = [(shard, _shard_keys(shard, days, sorted(months[shard]))) for shard in shards]
        async for shard, (closed, *hashes) in _hashes_in_batches(redis, groups, _SHARDS_AT_ONCE):
            records = {claim_id: record for raw in hashes[: len(days)] for claim_id, record in _json(raw).items()}
            if not (named := {month for record in records.values() if (month := _month_of(record))}) <= months[shard]:
                months[shard] |= named
                unread.append(shard)
                continue
            for claim_id, record in records.items():
                state.claims.add(claim_id, record)
            state.closed[shard] = {
                month: {name: int(value) for name, value in totals.items() if name != "_closed_at"}
                for month, totals in _json(closed).items()
            }
            clearing = hashes[len(days) :]
            state.clearing[shard] = {
                month: _numbers(raw) for month, raw in zip(sorted(months[shard]), clearing, strict=True)
            }
        shards = unread


def _days_between(first: str, last: str) -> list[str]:
    """Every day from `first` to the day after `last` (YYYYMMDD)."""
    day, end = (datetime.strptime(when, "%Y%m%d") for when in (first, last))
    return [(day + timedelta(days=n)).strftime("%Y%m%d") for n in range((end - day).days + 2)]


def _shard_keys(shard: int, days: list[str], months: list[str]) -> list[str]:
    prefix = f"{SETTLEMENT_PREFIX}{{s{shard}}}"
    return [
        f"{prefix}:closed",
        *(f"{prefix}:{_CLAIMS}{day}" for day in days),
        *(f"{prefix}:{_CLEARING}{month}" for month in months),
    ]


def _month_of(record: dict[str, Any]) -> str | None:
    """The clearing month a final claim or reversal counted in, if it counted in one."""
    return (record.get("result") or {}).get("month")


async def _read_relationships(redis: Redis, scan: _Scan, state: RedisState) -> None:
    groups = (
        (provider, [f"{RELATIONSHIP_PREFIX}{{p:{provider}}}:{part}" for part in RELATIONSHIP_PARTS])
        for provider in sorted(scan.providers)
    )
    async for provider, (rels, versions) in _hashes_in_batches(redis, groups):
        state.relationships.update({(provider, recipient): stored for recipient, stored in _json(rels).items()})
        state.relationship_versions.update(
            {(provider, recipient): version for recipient, version in _numbers(versions).items()}
        )


async def _read_wallets(redis: Redis, scan: _Scan, state: RedisState) -> None:
    """Each person's hashes, and the day buckets of their takes and refunds: a refund is kept in the
    bucket of the take it gives back, so each day a take or refund was scanned in is read whole."""

    def parts_of(person: str) -> list[str]:
        days = sorted(scan.draw_days[person])
        return [*WALLET_PARTS, *(f"{part}:{day}" for day in days for part in ("takes", "refunds"))]

    groups = (
        (person, [f"{WALLET_PREFIX}{{p:{person}}}:{part}" for part in parts_of(person)])
        for person in sorted(scan.draw_days)
    )
    async for person, hashes in _hashes_in_batches(redis, groups):
        parts = dict(zip(parts_of(person), hashes, strict=True))
        account = WalletAccount(
            totals={name: int(value) for name, value in _text(parts["account"]).items() if name in TOTALS},
            grants=_numbers(parts["grants"]),
            relationships=_text(parts["relationships"]),
            relationship_versions=_numbers(parts["rel-versions"]),
            takes={
                claim: take
                for part, raw in parts.items()
                if part.startswith("takes:")
                for claim, take in _json(raw).items()
            },
            refunds={
                refund: stored
                for part, raw in parts.items()
                if part.startswith("refunds:")
                for refund, stored in _json(raw).items()
            },
            applied={topic: _seen(parts[f"seen:{topic}"], parts[f"seen:{topic}:earlier"]) for topic in _APPLIED},
        )
        state.wallets.add(person, account)
