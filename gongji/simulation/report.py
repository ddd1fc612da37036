"""What `gongji simulate` prints: per run its seed, operations, faults, invariants checked and
result; for a failure the invariant, its evidence and the shortest operation list found."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console
from rich.table import Table

from gongji.simulation.run import Outcome
from gongji.simulation.world import Op


def render(console: Console, outcomes: list[Outcome], replay_hint: str) -> None:
    table = Table(title="Simulation runs")
    for column in ("seed", "operations", "faults", "invariants checked", "seconds", "steps/s", "result"):
        table.add_column(column, justify="right" if column not in ("seed", "result") else "left")
    for outcome in outcomes:
        result = "[green]ok[/green]" if outcome.failure is None else f"[red]{outcome.failure.invariant}[/red]"
        table.add_row(
            str(outcome.seed),
            str(len(outcome.ops)),
            str(sum(outcome.faults.values())),
            f"{outcome.checks:,}",
            f"{outcome.seconds:.1f}",
            f"{len(outcome.ops) / outcome.seconds:.0f}",
            result,
        )
    console.print(table)
    kinds = sum((outcome.kinds for outcome in outcomes), Counter())
    faults = sum((outcome.faults for outcome in outcomes), Counter())
    console.print("operations by kind: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()))
    console.print("faults injected: " + (", ".join(f"{fault} {n}" for fault, n in faults.most_common()) or "none"))
    seconds = sum(outcome.seconds for outcome in outcomes)
    console.print(
        f"{sum(len(o.ops) for o in outcomes):,} operations, {sum(o.checks for o in outcomes):,} invariant "
        f"checks in {seconds:.1f}s ({sum(len(o.ops) for o in outcomes) / seconds:.0f} steps/s)"
    )
    for outcome in outcomes:
        if outcome.failure is not None:
            _render_failure(console, outcome, replay_hint.format(seed=outcome.seed))


def _render_failure(console: Console, outcome: Outcome, replay: str) -> None:
    failure = outcome.failure
    assert failure is not None
    console.print(
        f"\n[red]FAILED[/red] seed {outcome.seed}, at operation {failure.step} of {len(outcome.ops)}"
        + (" (delivering everything left in flight)" if failure.step > len(outcome.ops) else "")
    )
    console.print(f"invariant [bold]{failure.invariant}[/bold]: {failure.detail}", markup=False, highlight=False)
    console.print("cast: " + "; ".join(outcome.cast))
    ops = outcome.shrunk if outcome.shrunk is not None else outcome.ops[: failure.step]
    shrunk = f", shrunk from {failure.step} in {outcome.replays} replays" if outcome.shrunk is not None else ""
    console.print(f"shortest sequence found ({len(ops)} operations{shrunk}), then everything in flight delivered:")
    for number, op in enumerate(ops, 1):
        console.print(f"  {number:3d}. {op}", markup=False, highlight=False)
    console.print(f"replay: {replay}")


def as_json(outcomes: list[Outcome]) -> dict:
    return {
        "valid": all(outcome.failure is None for outcome in outcomes),
        "runs": [
            {
                "seed": outcome.seed,
                "operations": len(outcome.ops),
                "operations_by_kind": dict(outcome.kinds),
                "faults": dict(outcome.faults),
                "invariants_checked": outcome.checks,
                "seconds": round(outcome.seconds, 3),
                "failure": None
                if outcome.failure is None
                else {
                    "step": outcome.failure.step,
                    "invariant": outcome.failure.invariant,
                    "detail": outcome.failure.detail,
                    "shortest": [op.to_json() for op in (outcome.shrunk or outcome.ops[: outcome.failure.step])],
                },
            }
            for outcome in outcomes
        ],
    }


def read_ops(text: str) -> list[Op]:
    """Operations to replay: a JSON list of them, or the report of `--json` (its first failure's shortest)."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = next(run["failure"]["shortest"] for run in data["runs"] if run["failure"])
    return [Op.from_json(op) for op in data]
