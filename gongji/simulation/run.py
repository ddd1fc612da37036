"""Running, replaying and shrinking simulations. A run is a list of operations on a fresh world
(its database flushed, the libraries loaded); the same seed and operations replay the same
outcomes. A failing run is shrunk by delta debugging: chunks, then single operations, are left
out while the same invariant still breaks, each candidate replayed from scratch."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from gongji.simulation.cast import Cast
from gongji.simulation.generate import Generator
from gongji.simulation.model import Breach
from gongji.simulation.scenarios import scenario_ops
from gongji.simulation.world import Op, World


@dataclass(frozen=True)
class Failure:
    step: int  # operations run, the failing one included; one more: while everything in flight was delivered at the end
    invariant: str
    detail: str


@dataclass
class Outcome:
    seed: int
    ops: list[Op]
    log: list[str]
    failure: Failure | None
    checks: int = 0
    faults: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    cast: list[str] = field(default_factory=list)
    shrunk: list[Op] | None = None
    replays: int = 0

    @property
    def kinds(self) -> Counter:
        return Counter(op.kind for op in self.ops)


async def execute(redis: Redis, seed: int, ops: list[Op] | None = None, steps: int = 0) -> Outcome:
    """Runs `ops` (or, without them, the prelude and `steps` random operations from the seed), then
    delivers everything left in flight; every invariant is checked after each step."""
    started = time.perf_counter()
    world = World(redis, Cast(seed))
    await world.start()
    generator = Generator(seed, world, steps) if ops is None else None
    planned = iter(ops or [])
    done: list[Op] = []
    log: list[str] = []
    failure = None
    draining = False
    try:
        while (op := generator.next() if generator else next(planned, None)) is not None:
            done.append(op)
            log.append(f"{len(done)}. {op}")
            log[-1] += f" -> {await world.apply(op)}"
            if world.stored:  # else nothing changed since the last check
                await world.check()
        draining = True
        await world.drain()
        await world.check()
        await world.deep_audit()
    except Breach as breach:
        failure = Failure(len(done) + draining, breach.invariant, breach.detail)
    except Exception as error:  # a handler that raises is a finding too
        failure = Failure(len(done) + draining, "error", f"{type(error).__name__}: {error}")
    return Outcome(
        seed, done, log, failure, world.checks, world.faults, time.perf_counter() - started, world.cast.describe()
    )


async def shrink(redis: Redis, outcome: Outcome, seconds: float = 60.0) -> Outcome:
    """The shortest operation list found that still breaks the same invariant (delta debugging
    within a time budget); `outcome.shrunk` holds it and `outcome.replays` the tries."""
    assert outcome.failure is not None
    invariant = outcome.failure.invariant
    deadline = time.monotonic() + seconds
    replays = 0

    async def still_fails(candidate: list[Op]) -> list[Op] | None:
        nonlocal replays
        replays += 1
        result = await execute(redis, outcome.seed, candidate)
        if result.failure is None or result.failure.invariant != invariant:
            return None
        return candidate[: result.failure.step]  # what comes after the failure is not needed

    ops = outcome.ops[: outcome.failure.step]
    # Operations that found nothing to do go first, in one try.
    busy = [op for op, line in zip(ops, outcome.log, strict=False) if " -> nothing" not in line]
    if len(busy) < len(ops) and (smaller := await still_fails(busy)):
        ops = smaller
    # Then halves, quarters, … and single operations until none can go, the last ones first (they
    # depend on the earlier ones more often than the other way round).
    size = max(1, len(ops) // 2)
    while time.monotonic() < deadline:
        before, end = len(ops), len(ops)
        while end > 0 and time.monotonic() < deadline:
            start = max(0, end - size)
            if smaller := await still_fails(ops[:start] + ops[end:]):
                ops = smaller
            end = min(start, len(ops))
        if size == 1 and len(ops) == before:
            break
        size = max(1, size // 2)
    outcome.shrunk, outcome.replays = ops, replays
    return outcome


async def simulate(redis: Redis, seed: int, steps: int, shrink_seconds: float = 60.0) -> Outcome:
    outcome = await execute(redis, seed, steps=steps)
    if outcome.failure is not None and shrink_seconds > 0:
        await shrink(redis, outcome, shrink_seconds)
        # Leave the database as the failure left it, for a look with `redis-cli -n`.
        await execute(redis, seed, outcome.shrunk)
    return outcome


async def run_scenario(redis: Redis, name: str, seed: int = 0) -> Outcome:
    """A named scenario (a defect fixed before), on the cast of `seed`."""
    return await execute(redis, seed, scenario_ops(name, Cast(seed)))
