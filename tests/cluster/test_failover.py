"""The platform on clusters (three Kafka nodes, a Redis Cluster of three primaries with two replicas
each, two instances of each service) keeps every claim and pays nothing twice while one instance
of each service, the Kafka node leading the claims and a Redis primary are each killed with
SIGKILL and started again, and a Kafka node is cut off from the others and from every client, then
joined again (`gongji faults`). Here 60 s at 20 claims/s, a fault every 12 s, with a claim path
fetch wait of 100 ms: three JVMs, nine Redis nodes, six services and the load share two cores
(`gongji faults --duration 600` for a long run). The gaps are printed, not asserted."""

from __future__ import annotations

import subprocess
import time

import pytest

from gongji.ops import infra
from gongji.ops.status import kafka_status
from gongji.perf.faults import FAULTS
from services.relationship.store import LIBRARY as RELATIONSHIP_LIBRARY
from services.settlement.store import LIBRARY as SETTLEMENT_LIBRARY
from services.wallet.store import LIBRARY as WALLET_LIBRARY
from shared.settings import Settings
from tests.cluster.conftest import PORT_BASE
from tests.faults_cli import run_faults

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

# A rolling restart takes minutes on these starved cores: it is tried on the single nodes
# (tests/e2e/test_rolling_restart.py), and here on demand (`gongji faults --fault rolling`).
CLUSTER_FAULTS = tuple(fault for fault in FAULTS if fault != "rolling")


@pytest.fixture(scope="module")
def faults_run(cluster: Settings) -> dict:
    options = ["--duration", "60", "--rate", "20", "--persons", "400", "--restore-after", "8"]
    faults = [argument for fault in CLUSTER_FAULTS for argument in ("--fault", fault)]
    environment = {
        "GONGJI_CLUSTER": "true",
        "GONGJI_HTTP_PORT_BASE": str(PORT_BASE),
        # Idle fetches every 25 ms, by each of six services, cost more than these cores have.
        "GONGJI_CLAIM_PATH_FETCH_MAX_WAIT_MS": "100",
    }
    return run_faults([*options, *faults], environment, timeout=1100)


def test_every_claim_has_exactly_one_result_through_every_fault(faults_run: dict) -> None:
    assert faults_run["failures"] == []
    assert faults_run["claims"]["without_result"] == 0
    assert faults_run["claims"]["with_more_than_one_result"] == 0
    assert faults_run["claims"]["duplicates_sent"] > 0
    assert [fault["fault"] for fault in faults_run["faults"]] == list(CLUSTER_FAULTS)
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
            # RESP2: each library is a flat list of field, value, ...
            loaded = {
                dict(zip(lib[::2], lib[1::2], strict=True))[b"library_name"].decode() for lib in client.function_list()
            }
            assert libraries <= loaded, (node.port, loaded)
            errors = client.info("errorstats")
            assert not [name for name in errors if "CROSSSLOT" in name], (node.port, errors)


def test_the_node_cut_off_is_joined_again_and_every_partition_is_fully_replicated(
    cluster: Settings, faults_run: dict
) -> None:
    """A partition, not a crash: the node ran on, cut off; once joined, it catches up as a follower
    (it could not have confirmed a write alone: two replicas in sync are needed)."""
    cut = next(fault for fault in faults_run["faults"] if fault["fault"] == "partition")["node"]
    routes = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True, check=True)
    assert cut not in routes.stdout
    deadline = time.monotonic() + 120
    while True:
        nodes = kafka_status(cluster)
        if all(node["up"] for node in nodes) and not sum(node["under_replicated"] for node in nodes):
            break
        assert time.monotonic() < deadline, nodes
        time.sleep(2)
