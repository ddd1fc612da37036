"""Where a claim's time goes: the per-hop latency budget, from the services' own timing of each
phase (`gongji_hop_seconds`, shared/runtime.py), read from their /metrics before and after a run.

A claim takes three hops — its province's claims topic to settlement, the draw request to the
wallet, the draw answer back to settlement — and then its result travels to the client. On each
hop a record spends `waiting` (from the moment its producer sent it until the service hands it
to the handler), `handler` (Python), `redis`, and `publish` (the previous batch's outputs
confirmed, its own handed to the producer, which stamps them). The phases follow one another, so
with the client's part they add up to the end-to-end mean; Kafka's confirmation of the outputs and
the commit overlap the next batch (shared/acknowledgements.py).
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from gongji.ops.launcher import SERVICE_NAMES, http_port
from shared.runtime import HOP_PHASES
from shared.settings import Settings
from shared.topics import DRAW_ANSWERS, DRAW_REQUESTS, province_claims

# The hops of a claim, in order: (name in the report, service, topic label).
CLAIM_HOPS = (
    ("claim → settlement", "settlement", province_claims("11").pattern),
    ("draw request → wallet", "wallet", DRAW_REQUESTS.name),
    ("draw answer → settlement", "settlement", DRAW_ANSWERS.name),
)
Snapshot = Counter  # (metric, service, topic, phase) -> total


def snapshot(settings: Settings) -> Snapshot | None:
    """The hop counters of the services on this machine; None when one does not answer."""
    totals: Snapshot = Counter()
    for name in SERVICE_NAMES:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port(settings, name)}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            if family.name in ("gongji_hop_seconds", "gongji_hop_records"):
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        labels = sample.labels
                        totals[(family.name, labels["service"], labels["topic"], labels.get("phase", ""))] += (
                            sample.value
                        )
    return totals


def claim_budget(before: Snapshot, after: Snapshot, client_wait_ms: float, end_to_end_mean_ms: float) -> dict[str, Any]:
    """Mean milliseconds per record in each phase of each hop over the run, the client's wait for
    the result, and how much of the measured end-to-end mean the phases account for."""
    hops: dict[str, dict[str, float]] = {}
    accounted = client_wait_ms
    for hop, service, topic in CLAIM_HOPS:
        records = after[("gongji_hop_records", service, topic, "")] - before[("gongji_hop_records", service, topic, "")]
        if records <= 0:
            continue
        phases = {
            phase: round(
                1000
                * (
                    after[("gongji_hop_seconds", service, topic, phase)]
                    - before[("gongji_hop_seconds", service, topic, phase)]
                )
                / records,
                2,
            )
            for phase in HOP_PHASES
        }
        hops[hop] = {"records": int(records), **phases}
        accounted += sum(phases.values())  # the phases follow one another
    return {
        "hops_ms": hops,
        "result_to_client_ms": round(client_wait_ms, 2),
        "accounted_ms": round(accounted, 2),
        "end_to_end_mean_ms": round(end_to_end_mean_ms, 2),
    }


def budget_table(budget: dict[str, Any]) -> Table:
    table = Table(title="where a claim's time goes (mean ms per claim)")
    table.add_column("hop")
    for phase in HOP_PHASES:
        table.add_column(phase, justify="right")
    for hop, phases in budget["hops_ms"].items():
        table.add_row(hop, *(f"{phases[phase]:.2f}" for phase in HOP_PHASES))
    table.add_row("result → client", f"{budget['result_to_client_ms']:.2f}", *[""] * (len(HOP_PHASES) - 1))
    table.caption = (
        f"every phase of every hop, and the result's way to the client: "
        f"{budget['accounted_ms']:.1f} ms of the {budget['end_to_end_mean_ms']:.1f} ms measured"
    )
    return table
