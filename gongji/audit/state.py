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
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from services.settlement.store import PREFIX as SETTLEMENT_PREFIX
from services.wallet.store import PREFIX as WALLET_PREFIX
from shared.redis_functions import execute

RELATIONSHIP_PREFIX = "rel:"  # services/relationship/relationship.lua
_PERSON_KEY = re.compile(r"(?P<prefix>[a-z]+:)\{p:(?P<person>[^}]+)\}:(?P<part>.+)")
_SHARD_KEY = re.compile(re.escape(SETTLEMENT_PREFIX)
                        + r"\{s(?P<shard>\d+)\}:(?P<part>claims|closed|clearing:\d{4}-\d{2})")

# The wallet's per-person hashes the audit reads; `seen:<topic>` hold each applied input's result.
# `seen` is where a release before per-topic ids kept every result, its refunds as `refund:<id>`.
WALLET_PARTS = ("account", "grants", "relationships", "rel-versions", "takes", "refunds",
                "seen:credits", "seen:spends", "seen:commands", "seen:relationship-events", "seen")
_EARLIER_REFUND = "refund:"
RELATIONSHIP_PARTS = ("rels", "versions")
_READ_BATCH = 200  # persons (or shards) per MULTI: short enough never to hold Redis up for long


@dataclass
class WalletAccount:
    totals: dict[str, int] = field(default_factory=dict)  # balance, frozen, credited, spent, paid, refunded
    grants: dict[str, int] = field(default_factory=dict)  # recipient -> remaining quota
    relationships: dict[str, str] = field(default_factory=dict)  # recipient -> region, while active
    relationship_versions: dict[str, int] = field(default_factory=dict)
    takes: dict[str, dict[str, Any]] = field(default_factory=dict)  # claim id -> what it drew here
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)  # refund id -> what went back
    applied: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # seen:<topic> -> id -> result


@dataclass
class RedisState:
    wallets: dict[str, WalletAccount] = field(default_factory=dict)
    # The relationship service: (provider, recipient) -> the pending or active relationship, and its version.
    relationships: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    relationship_versions: dict[tuple[str, str], int] = field(default_factory=dict)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)  # claim id -> record
    clearing: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)  # shard -> month -> field -> fen
    closed: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)  # shard -> month -> as closed

    def accumulators(self, month: str) -> dict[str, int]:
        """A month's clearing accumulators summed over the shards."""
        totals: dict[str, int] = defaultdict(int)
        for months in self.clearing.values():
            for name, value in months.get(month, {}).items():
                totals[name] += value
        return dict(totals)


async def read_state(redis: Redis) -> RedisState:
    keys = [key.decode() async for key in redis.scan_iter(count=5000)]
    state = RedisState()
    await _read_settlement(redis, keys, state)
    await _read_relationships(redis, keys, state)
    await _read_wallets(redis, keys, state)
    return state


def _persons(keys: list[str], prefix: str, parts: tuple[str, ...]) -> dict[str, list[str]]:
    """The keys of `parts` present for each person."""
    found: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        if (match := _PERSON_KEY.fullmatch(key)) and match["prefix"] == prefix and match["part"] in parts:
            found[match["person"]].append(key)
    return found


async def _hashes_in_batches(redis: Redis, groups: list[list[str]]) -> list[list[dict[bytes, bytes]]]:
    """HGETALL of each group's keys, every batch of groups in one MULTI."""
    replies: list[list[dict[bytes, bytes]]] = []
    for start in range(0, len(groups), _READ_BATCH):
        batch = groups[start:start + _READ_BATCH]
        async with redis.pipeline(transaction=True) as pipe:
            for keys in batch:
                for key in keys:
                    pipe.hgetall(key)
            flat = iter(await execute(pipe))
        replies += [[next(flat) for _ in keys] for keys in batch]
    return replies


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in raw.items()}


def _json(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {name.decode(): json.loads(value) for name, value in raw.items()}


def _seen(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A seen hash holds "<fingerprint>|<result json>" per input id (shared/prelude.lua)."""
    return {name.decode(): json.loads(value.decode().split("|", 1)[1]) for name, value in raw.items()}


async def _read_settlement(redis: Redis, keys: list[str], state: RedisState) -> None:
    by_shard: dict[int, list[str]] = defaultdict(list)
    for key in keys:
        if match := _SHARD_KEY.fullmatch(key):
            by_shard[int(match["shard"])].append(key)
    shards = sorted(by_shard)
    for shard, hashes in zip(shards, await _hashes_in_batches(redis, [by_shard[s] for s in shards]), strict=True):
        for key, raw in zip(by_shard[shard], hashes, strict=True):
            part = _SHARD_KEY.fullmatch(key)["part"]  # type: ignore[index]
            if part == "claims":
                state.claims.update(_json(raw))
            elif part == "closed":
                state.closed[shard] = {month: {name: int(value) for name, value in totals.items()
                                               if not name.startswith("_")}
                                       for month, totals in _json(raw).items()}
            else:
                month = part.split(":", 1)[1]
                state.clearing.setdefault(shard, {})[month] = {name: int(value) for name, value in _text(raw).items()}


async def _read_relationships(redis: Redis, keys: list[str], state: RedisState) -> None:
    persons = _persons(keys, RELATIONSHIP_PREFIX, RELATIONSHIP_PARTS)
    providers = list(persons)
    for provider, hashes in zip(providers, await _hashes_in_batches(redis, [persons[p] for p in providers]),
                                strict=True):
        for key, raw in zip(persons[provider], hashes, strict=True):
            if key.endswith(":rels"):
                state.relationships.update({(provider, recipient): stored for recipient, stored in _json(raw).items()})
            else:
                state.relationship_versions.update({(provider, recipient): int(version)
                                                    for recipient, version in _text(raw).items()})


async def _read_wallets(redis: Redis, keys: list[str], state: RedisState) -> None:
    persons = _persons(keys, WALLET_PREFIX, WALLET_PARTS)
    ids = list(persons)
    for person, hashes in zip(ids, await _hashes_in_batches(redis, [persons[p] for p in ids]), strict=True):
        account = state.wallets.setdefault(person, WalletAccount())
        for key, raw in zip(persons[person], hashes, strict=True):
            part = _PERSON_KEY.fullmatch(key)["part"]  # type: ignore[index]
            if part == "account":
                account.totals = {name: int(value) for name, value in _text(raw).items()
                                  if name in ("balance", "frozen", "credited", "spent", "paid", "refunded")}
            elif part == "grants":
                account.grants = {recipient: int(value) for recipient, value in _text(raw).items()}
            elif part == "relationships":
                account.relationships = _text(raw)
            elif part == "rel-versions":
                account.relationship_versions = {recipient: int(value) for recipient, value in _text(raw).items()}
            elif part == "takes":
                account.takes = _json(raw)
            elif part == "refunds":
                account.refunds.update(_json(raw))
            elif part == "seen":
                refunds = {name: value for name, value in raw.items() if name.startswith(_EARLIER_REFUND.encode())}
                account.refunds.update({name.removeprefix(_EARLIER_REFUND): result
                                        for name, result in _seen(refunds).items()})
            else:
                account.applied[part.split(":", 1)[1]] = _seen(raw)
