"""The idempotency window, as the operator changes it. Each claim's records are kept by the day the
claim occurred, until the window has closed on that day plus the grace, an expiry written with
each record. Lengthening the window would leave the records written before the change to expire
by the old one, while copies of their claims are still let in: so when `gongji infra up` finds the
window longer than the one Redis was last kept for, it lengthens every day's records to the new
keep first. Shortening needs nothing: records only outlive what they must.

The inputs' seen ids are kept a generation (the input window and the grace) past each key's last
write: when that grows, every key of seen ids (and of rule 7's terminations, kept alike) is kept
that much longer."""

from __future__ import annotations

import re
from datetime import datetime

import redis

from shared.window import ClaimWindow, InputWindow

KEPT_FOR = "gongji:claim-window"  # seconds past a day's end its records were last kept for
SEEN_KEPT_FOR = "gongji:input-window"  # seconds past its last write a key of seen ids was last kept for
_SEEN = re.compile(r"[a-z]+:\{p:[^}]+\}:(?:seen:[a-z-]+|terminations)(?::earlier)?")
_DAY_BUCKET = re.compile(r"(?:stl:\{s\d+\}:claims|wal:\{p:[^}]+\}:(?:plans|answers|takes|refunds)):(?P<day>\d{8})")
_OWNER = "stl:{c*}:owner:*"


def keep_for_window(client: redis.Redis, window: ClaimWindow, now: datetime) -> int:
    """Lengthens what the window has grown past; answers how many keys it re-kept."""
    kept_for = int((window.length + window.grace).total_seconds())
    before = client.get(KEPT_FOR)
    kept = 0
    if before is not None and int(before) < kept_for:
        kept = _lengthen(client, window, now)
    client.set(KEPT_FOR, kept_for)
    return kept


def _lengthen(client: redis.Redis, window: ClaimWindow, now: datetime) -> int:
    days: dict[bytes, str] = {}
    for key in client.scan_iter(count=5000):
        if match := _DAY_BUCKET.fullmatch(key.decode()):
            days[key] = match["day"]
    owners = list(client.scan_iter(match=_OWNER, count=5000))
    with client.pipeline(transaction=False) as pipe:
        for key in owners:
            pipe.get(key)
        for key, owner in zip(owners, pipe.execute(), strict=True):
            if owner is not None:
                days[key] = owner.decode().rsplit("|", 1)[1]  # <recipient>|<day>
    with client.pipeline(transaction=False) as pipe:
        for key, day in days.items():
            left = window.kept_until(day) - now
            if left.total_seconds() > 0:
                pipe.pexpire(key, int(left.total_seconds() * 1000), gt=True)
        pipe.execute()
    return len(days)


def keep_seen_for_window(client: redis.Redis, window: InputWindow) -> int:
    """Lengthens every key of seen ids by what the generation has grown; answers how many. At the
    first `infra up` that finds no record of a generation, the seen ids the release before kept for
    good are given one: kept as if written now, they stop growing for good."""
    kept_for = int(window.generation.total_seconds())
    before = client.get(SEEN_KEPT_FOR)
    keys = []
    if before is None or int(before) < kept_for:
        keys = [key for key in client.scan_iter(count=5000) if _SEEN.fullmatch(key.decode())]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            left = pipe.execute()
            for key, ms in zip(keys, left, strict=True):
                if before is None and ms == -1:  # kept for good so far
                    pipe.pexpire(key, kept_for * 1000)
                elif before is not None and ms > 0:
                    pipe.pexpire(key, ms + (kept_for - int(before)) * 1000)
            pipe.execute()
    client.set(SEEN_KEPT_FOR, kept_for)
    return len(keys)
