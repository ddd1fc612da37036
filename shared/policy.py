"""Run-time policy (rule 1): which regions have the wallet opened, and since when cross-province
relationships are in force. Operators change it with `gongji policy …` without restarting anything;
services re-read it after `policy_cache_seconds`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime

from redis.asyncio import Redis

from shared.clock import SHANGHAI
from shared.ids import PROVINCE_CODES, province_of, validate_region

POLICY_KEY = "gongji:policy"
CROSS_PROVINCE_SINCE_DEFAULT = date(2026, 1, 9)


@dataclass(frozen=True)
class Policy:
    cross_province_since: date = CROSS_PROVINCE_SINCE_DEFAULT
    # Most regions have opened the wallet; the few still testing are listed here. An entry is a
    # 6-digit region or a 2-digit province (closing all of its regions).
    closed_regions: frozenset[str] = frozenset()

    def wallet_open(self, region: str) -> bool:
        return region not in self.closed_regions and province_of(region) not in self.closed_regions

    def cross_province_in_force(self, moment: datetime) -> bool:
        return moment.astimezone(SHANGHAI).date() >= self.cross_province_since


def validate_area(code: str) -> str:
    """An entry of the closed list must name something: a known 2-digit province code or a valid
    6-digit region. A typo would otherwise be stored and silently close or open nothing."""
    if code in PROVINCE_CODES:
        return code
    try:
        return validate_region(code)
    except ValueError:
        raise ValueError(
            f"{code!r} is neither a known province code (2 digits, e.g. 66) "
            "nor a 6-digit region of a known province (e.g. 510100)"
        ) from None


async def read_policy(redis: Redis) -> Policy:
    fields = await redis.hgetall(POLICY_KEY)
    since = fields.get(b"cross_province_since")
    closed = fields.get(b"closed_regions", b"").decode().split()
    return Policy(
        cross_province_since=date.fromisoformat(since.decode()) if since else CROSS_PROVINCE_SINCE_DEFAULT,
        closed_regions=frozenset(closed),
    )


async def write_policy(redis: Redis, policy: Policy) -> None:
    await redis.hset(
        POLICY_KEY,
        mapping={
            "cross_province_since": policy.cross_province_since.isoformat(),
            "closed_regions": " ".join(sorted(policy.closed_regions)),
        },
    )


class PolicyCache:
    """Reads the policy at most once per `ttl_seconds` (0: on every use)."""

    def __init__(self, redis: Redis, ttl_seconds: float) -> None:
        self._redis = redis
        self._ttl_seconds = ttl_seconds
        self._policy: Policy | None = None
        self._read_at = 0.0

    async def get(self) -> Policy:
        if self._policy is None or time.monotonic() - self._read_at >= self._ttl_seconds:
            self._policy = await read_policy(self._redis)
            self._read_at = time.monotonic()
        return self._policy
