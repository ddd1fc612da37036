"""Redis Functions: each service's library is its `.lua` file with shared/prelude.lua in front.

Functions persist in Redis (unlike EVAL's script cache, which a restart or SCRIPT FLUSH empties).
Every library and function name carries the version of its source (a hash): instances of two
releases running side by side during a rolling deploy each call their own release's functions,
so an old instance never calls a function whose keys or arguments have changed under it (which
could write half a step and then fail).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import hiredis
from pydantic import BaseModel
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared.redis_client import require_durable

PRELUDE_LUA = Path(__file__).with_name("prelude.lua")

Result = TypeVar("Result", bound=BaseModel)


class LibraryNotLoaded(RuntimeError):
    pass


class Library:
    """One service's Redis Functions, named by the version of their source."""

    def __init__(self, name: str, lua_file: Path) -> None:
        self.lua_file = lua_file
        self._code = f"{PRELUDE_LUA.read_text()}\n{lua_file.read_text()}"
        self.version = hashlib.sha256(self._code.encode()).hexdigest()[:12]
        self.name = f"{name}_v{self.version}"
        self.functions: list[Function] = []

    def function(self, name: str) -> str:
        """The name under which this release's `name` is registered (see `register` in prelude.lua)."""
        return f"{name}_v{self.version}"

    def declare(
        self, name: str, keys: tuple[str, ...], args: tuple[str, ...], result: type[Result] | None = None
    ) -> Function[Result]:
        """`result`: the stored record a step answers with (a function that is no step, none)."""
        declared = Function(self, name, keys, args, result)
        self.functions.append(declared)
        return declared

    @property
    def source(self) -> str:
        return f"#!lua name={self.name}\nlocal LIBRARY_VERSION = '{self.version}'\n{self._code}"

    async def load(self, redis: Redis) -> None:
        """Loads this release's library (the operator's right: `gongji infra up` loads all three).
        Loading the same release again changes nothing."""
        await require_durable(redis)
        await redis.function_load(self.source, replace=True)

    async def require_loaded(self, redis: Redis) -> None:
        """Every service checks, before it consumes anything, that Redis keeps acknowledged writes
        and that its release's library is there (its own user may call functions, never load one):
        on a cluster, on every primary (a replica has its primary's)."""
        await require_durable(redis)
        every_primary = {"target_nodes": RedisCluster.PRIMARIES} if isinstance(redis, RedisCluster) else {}
        try:
            await redis.execute_command("FCALL_RO", self.function("library_loaded"), 0, **every_primary)
        except ResponseError as error:
            if "Function not found" not in str(error):
                raise
            raise LibraryNotLoaded(
                f"Redis has no library {self.name}: run `gongji infra up` "
                "(the operator loads every service's Functions)"
            ) from None


@dataclass(frozen=True)
class Function(Generic[Result]):
    """One Redis Function, declared once: its KEYS and its ARGV by name, in order. Its Lua function
    reads them into locals of the same names (`local seen_key, account_key = unpack(keys)`), and
    tests/unit/test_redis_functions.py holds the two together: a value follows its name across
    `fcall`, never a position."""

    library: Library
    name: str
    keys: tuple[str, ...]  # each named `…_key`
    args: tuple[str, ...]
    result: type[Result] | None

    def call(self, **values: Any) -> Call[Result]:
        """The step with every key and argument named. None travels as '' and a bool as '1' or '0'
        (Redis takes strings and numbers only); a name missing or unknown is an error here."""
        names = {*self.keys, *self.args}
        if set(values) != names:
            raise TypeError(
                f"{self.name}: missing {sorted(names - set(values))}, unknown {sorted(set(values) - names)}"
            )
        return Call(
            self.library.function(self.name),
            [values[name] for name in self.keys],
            [_as_argument(values[name]) for name in self.args],
            self.result,
        )


def _as_argument(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return value


@dataclass(frozen=True)
class Step(Generic[Result]):
    """The answer of one atomic step: `applied` now, a `duplicate` of an earlier input (the stored
    result comes back unchanged), a `conflict` (same id, other content: nothing changed; `result`
    is the record that holds the id, if the function says), or `refused` (the input does not fit
    the state it names: nothing changed; `why` says why)."""

    outcome: Literal["applied", "duplicate", "conflict", "refused"]
    result: Result | None
    why: str | None = None

    @property
    def conflict(self) -> bool:
        return self.outcome == "conflict"


# The Redis time of the batch in hand (the runtime sets a fresh tally per batch; tasks a handler
# starts share it): one phase of the per-hop latency budget.
REDIS_SECONDS: ContextVar[list[float] | None] = ContextVar("redis_seconds", default=None)


async def execute(pipe: Pipeline) -> list[Any]:
    """Runs a pipeline and raises the first error as Redis gave it: redis-py would rewrite its text
    ("Command # n (…) of pipeline caused error: …"), and the runtime reads the error to tell an
    unwell Redis (retry the batch) from a record's own failure."""
    started = time.perf_counter()
    replies = await pipe.execute(raise_on_error=False)
    return _checked_replies(replies, started)


Command = tuple[Any, ...]  # a Redis command and its arguments: str, bytes or int each


async def send_all(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    """The commands in one round trip, their replies in order as Redis gives them (no redis-py
    reply callbacks); the first error raised as Redis gave it, as `execute`.

    On one Redis they are packed by hiredis straight onto one of the pool's connections, and the
    replies read under one timer: redis-py's pipeline spends about 49 µs of CPU per command
    packing each argument and timing each reply, this about 7 (docs/performance.md). On a cluster
    redis-py's cluster pipeline sends each command to its slot's node and follows MOVED, ASK and
    failovers."""
    if not commands:
        return []
    if isinstance(redis, RedisCluster):
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await execute(pipe)
    started = time.perf_counter()
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        # A write or read that fails, times out or is cancelled disconnects the connection (redis-py
        # does): none goes back to the pool with replies still unread on it.
        await connection.send_packed_command(b"".join(map(hiredis.pack_command, commands)))
        replies = await _replies(connection, len(commands))
    finally:
        await pool.release(connection)
    return _checked_replies(replies, started)


async def _replies(connection: Any, count: int) -> list[Any]:
    """`count` replies, each given at least the connection's socket timeout to come, as redis-py
    gives each (a large batch's replies may take longer than that in all): one timer, moved on
    once less than the timeout is left, not one per reply (13 µs of CPU each)."""
    patience = connection.socket_timeout
    loop = asyncio.get_running_loop()
    replies = []
    async with asyncio.timeout(patience) as deadline:
        for _ in range(count):
            replies.append(await _reply(connection))
            if patience is not None and deadline.when() - (now := loop.time()) < patience:
                deadline.reschedule(now + 1.5 * patience)
    return replies


async def _reply(connection: Any) -> Any:
    try:
        return await connection.read_response(timeout=math.inf)  # `_replies`' timer bounds it
    except ResponseError as error:  # one command's error: the replies after it are still to be read
        return error


def _checked_replies(replies: list[Any], started: float) -> list[Any]:
    if (tally := REDIS_SECONDS.get()) is not None:
        tally[0] += time.perf_counter() - started
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def call_step(redis: Redis, call: Call[Result]) -> Step[Result]:
    """One step on its own."""
    (step,) = await run_steps(redis, [call])
    return step


@dataclass(frozen=True)
class Call(Generic[Result]):
    """One atomic step to run: a function of a loaded library, its keys (one hash slot) and
    arguments, and the record its reply is read as."""

    function: str
    keys: list[str]
    args: list[Any]
    result: type[Result] | None

    def step(self, outcome: str, encoded: bytes) -> Step[Result]:
        if self.result is None:
            raise TypeError(f"{self.function} declares no result: it is not a step")
        if outcome == "refused":
            return Step("refused", None, json.loads(encoded)["why"])
        # Read straight from the reply's JSON: one pass in pydantic's core, not json.loads and then
        # a walk of the Python objects.
        return Step(outcome, self.result.model_validate_json(encoded) if encoded else None)  # type: ignore[attr-defined]

    @property
    def command(self) -> Command:
        return ("FCALL", self.function, len(self.keys), *self.keys, *self.args)

    def on(self, client: Redis) -> Any:
        """Sends it alone: its reply."""
        return client.execute_command(*self.command)


async def run_steps(redis: Redis, calls: Sequence[Call]) -> list[Step]:
    """Runs the steps in one pipeline, in order: steps on the same keys apply one after another
    exactly as if awaited one by one, at a fraction of the round trips."""
    replies = await send_all(redis, [call.command for call in calls])
    return [call.step(outcome.decode(), encoded) for call, (outcome, encoded) in zip(calls, replies, strict=True)]
