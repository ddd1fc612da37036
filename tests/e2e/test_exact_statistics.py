"""The statistics and the day's reconciliation are exact on the running system: after claims with
duplicates, a settlement instance killed and restarted, and two settlement instances at once,
what is published equals the audit's own figures from the topics (gongji/audit/figures.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest

from gongji.audit.deep import read_topics
from gongji.audit.figures import RECONCILIATION_SIDES, SHANGHAI, STATISTICS_FIELDS, Figures, figures
from gongji.ops.launcher import ServiceProcess
from shared.settings import Settings
from shared.topics import CLAIMS, DEAD_LETTERS, PROVINCES, RECONCILIATION, SETTLEMENTS, STATISTICS
from tests.e2e.world import World

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def second_settlement(infrastructure: Settings):
    """Another settlement instance in the same consumer group, on its own operations port."""
    base = infrastructure.http_port_base + 100
    instance = ServiceProcess(
        "settlement",
        infrastructure.model_copy(update={"http_port_base": base}),
        infrastructure.state_dir / "test-logs" / "second",
        {"GONGJI_HTTP_PORT_BASE": str(base), "GONGJI_POLICY_CACHE_SECONDS": "0"},
    )
    instance.start()
    yield instance
    if instance.running():
        instance.stop()


def latest(messages: list[dict[str, Any]], key: Any) -> dict[Any, dict[str, Any]]:
    """The highest revision of each key (a minute, a province's day)."""
    found: dict[Any, dict[str, Any]] = {}
    for message in messages:
        held = found.get(key(message))
        if held is None or message["revision"] >= held["revision"]:
            found[key(message)] = message
    return found


def differing(kafka, ledger: Figures, minutes: set[str], day: str) -> list[str]:
    """What the published figures still lack of the ledger's (empty once they agree)."""
    snapshots = latest(kafka.matching(STATISTICS, lambda _: True), lambda m: m["minute"])
    days = latest(kafka.matching(RECONCILIATION, lambda m: m["day"] == day), lambda m: m["province"])
    wrong = [
        f"minute {minute}"
        for minute in sorted(minutes)
        if {name: snapshots.get(minute, {}).get(name) for name in STATISTICS_FIELDS} != ledger.statistics(minute)
    ]
    # Every province's day is published (one of a result recorded by an earlier release, which
    # names no insured region, is in no province's).
    provinces = {province for _, province in ledger.days.get(day, {})} & set(PROVINCES)
    wrong += [
        f"province {province} on {day}"
        for province in sorted(provinces)
        if {name: days.get(province, {}).get(name) for name in RECONCILIATION_SIDES}
        != ledger.reconciliation(day, province)
    ]
    return wrong


async def test_figures_stay_exact_through_duplicates_a_kill_and_two_instances(
    world: World, kafka, service_processes, second_settlement, infrastructure: Settings
) -> None:
    provider, recipient = await world.funded_family(provider_region="350100", quota_fen=200_000)
    claims = [world.claim_message(recipient, "510100", 500 + number, service_region="440300") for number in range(150)]
    for number, claim in enumerate(claims):
        if number == 75:
            service_processes["settlement"].stop(signal.SIGKILL)
            service_processes["settlement"].start()
        await kafka.publish(CLAIMS, claim)
        if number % 10 == 0:
            await kafka.publish(CLAIMS, claim)  # a duplicate, byte for byte
    results = await kafka.wait_for_each(SETTLEMENTS, "claim_id", {claim["claim_id"] for claim in claims}, timeout=120)
    minutes = {
        datetime.fromisoformat(result["settled_at"]).astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")
        for result in results
    }
    day = min(minutes)[:10]

    deadline, wrong = time.monotonic() + 60, ["not compared yet"]
    while wrong and time.monotonic() < deadline:
        await asyncio.sleep(2)
        ledger = figures(await read_topics(infrastructure, [SETTLEMENTS, DEAD_LETTERS]))
        wrong = differing(kafka, ledger, minutes, day)
    assert not wrong, f"the published figures differ from the ledger's: {wrong}"

    checked = subprocess.run(
        [sys.executable, "-m", "gongji", "reconcile", "--date", day, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["matches_ledger"] is True


async def test_a_dead_letter_is_counted_and_never_dead_lettered_again(world: World, kafka) -> None:
    """A record sent without a key is dead-lettered with an empty key; read back by the statistics,
    it is counted, not refused for its key (a dead letter of a dead letter would come back for ever)."""
    recipient = await world.person("resident", "510100")
    claim = world.claim_message(recipient, "510100", 700)
    await kafka.publish(CLAIMS, json.dumps(claim).encode(), key="")
    await kafka.wait_for(DEAD_LETTERS, lambda m: m["source_topic"] == CLAIMS.name and m["source_key"] == "")
    await asyncio.sleep(5)  # what the statistics would dead-letter of it would be there by now
    assert kafka.matching(DEAD_LETTERS, lambda m: m["source_topic"] == DEAD_LETTERS.name) == []
