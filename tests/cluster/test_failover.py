"""The platform on clusters (three Kafka nodes, a Redis Cluster of three primaries with a replica
each, two instances of each service) keeps every claim and pays nothing twice while one instance
of each service, the Kafka node leading the claims, and a Redis primary are each killed with
SIGKILL and started again (`gongji faults`: 60 s at 50 claims/s here, as the most this 2-core
machine settles on the clusters is about 110/s; `gongji faults --duration 600` for a long run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gongji.ops import infra
from services.relationship.store import LIBRARY as RELATIONSHIP_LIBRARY
from services.settlement.store import LIBRARY as SETTLEMENT_LIBRARY
from services.wallet.store import LIBRARY as WALLET_LIBRARY
from shared.settings import PROJECT_ROOT, Settings
from tests.cluster.conftest import PORT_BASE

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def faults_run(cluster: Settings) -> dict:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "gongji",
            "faults",
            "--duration",
            "60",
            "--rate",
            "50",
            "--persons",
            "600",
            "--restore-after",
            "8",
            "--json",
        ],  # fmt: skip
        cwd=PROJECT_ROOT,
        env={**infra.child_environment(), "GONGJI_CLUSTER": "true", "GONGJI_HTTP_PORT_BASE": str(PORT_BASE)},
        capture_output=True,
        text=True,
        timeout=1100,
    )
    summary = json.loads(finished.stdout.strip().splitlines()[-1]) if finished.stdout.strip() else {}
    print(json.dumps(summary.get("faults"), indent=2))  # the gaps, in the test's output
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    return summary


def test_every_claim_has_exactly_one_result_through_every_fault(faults_run: dict) -> None:
    assert faults_run["failures"] == []
    assert faults_run["claims"]["without_result"] == 0
    assert faults_run["claims"]["with_more_than_one_result"] == 0
    assert faults_run["claims"]["duplicates_sent"] > 0
    assert [fault["fault"] for fault in faults_run["faults"]] == ["instances", "broker", "redis-primary"]
    for fault in faults_run["faults"]:
        assert fault["killed"] and fault["restored_at_s"] is not None, fault


def test_a_promoted_replica_has_every_function_and_no_call_crossed_slots(cluster: Settings, faults_run: dict) -> None:
    libraries = {RELATIONSHIP_LIBRARY.name, WALLET_LIBRARY.name, SETTLEMENT_LIBRARY.name}
    state = infra.redis_cluster_state(cluster)
    assert sum(node.role == "primary" for node in state) == 3
    # The primary killed during the run is back as a replica: the one that took over was a replica.
    killed = next(fault for fault in faults_run["faults"] if fault["fault"] == "redis-primary")["node"]
    assert next(node for node in state if node.address == killed).role == "replica"
    for node in infra.redis_nodes(cluster):
        with infra.node_redis(cluster, node) as client:
            loaded = {library["library_name"].decode() for library in client.function_list()}
            assert libraries <= loaded, (node.port, loaded)
            errors = client.info("errorstats")
            assert not [name for name in errors if "CROSSSLOT" in name], (node.port, errors)
