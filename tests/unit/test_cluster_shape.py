"""The clusters `gongji infra up --cluster` starts, as declared (gongji/ops/infra.py): three KRaft
nodes whose every topic has three replicas, two in sync before a write is confirmed; nine Redis
nodes speaking TLS on every link, their replicas logging in as `replica`; and the pieces read
back from them (CLUSTER NODES) and from a fault run's pauses."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gongji.ops import infra
from gongji.perf import faults
from gongji.perf.faults import Fault, gaps, longest_waits
from shared.acknowledgements import FLUSH_TIMEOUT_SECONDS
from shared.runtime import make_broker
from shared.settings import LOCAL_KAFKA_CLUSTER, Settings


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_cluster_settings_name_the_local_clusters_and_three_replicas() -> None:
    settings = Settings(cluster=True)
    assert settings.kafka_bootstrap == ",".join(LOCAL_KAFKA_CLUSTER)
    assert settings.redis_url.startswith("rediss://")
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (3, 2)
    single = Settings()
    assert (single.topic_replication_factor, single.topic_min_insync_replicas) == (1, 1)
    assert Settings(cluster=True, kafka_bootstrap="k1:9092,k2:9092").kafka_bootstrap == "k1:9092,k2:9092"


def test_each_kafka_node_is_a_voter_of_one_quorum_with_three_replicas_and_no_unclean_leader() -> None:
    settings = Settings(cluster=True)
    nodes = infra.kafka_nodes(settings)
    assert [node.node_id for node in nodes] == [1, 2, 3]
    assert len({node.port for node in nodes} | {node.controller_port for node in nodes}) == 6
    assert len({node.data for node in nodes}) == 3
    for node in nodes:
        config = properties(infra.kafka_properties(settings, node, nodes))
        assert config["node.id"] == str(node.node_id)
        assert config["controller.quorum.bootstrap.servers"] == ",".join(one.controller for one in nodes)
        assert config["advertised.listeners"] == f"CLIENT://{node.host}:{node.port}"
        assert config["default.replication.factor"] == config["offsets.topic.replication.factor"] == "3"
        assert config["min.insync.replicas"] == config["transaction.state.log.min.isr"] == "2"
        assert config["unclean.leader.election.enable"] == "false"
        assert int(config["offsets.retention.minutes"]) >= 5 * 365 * 24 * 60  # a stopped group keeps its offsets
        assert config["listener.name.controller.ssl.client.auth"] == "required"
        assert int(config["group.min.session.timeout.ms"]) <= Settings().consumer_session_timeout_ms
        # A member flushing what it read before giving its partitions up is waited for, not dropped.
        assert Settings().consumer_rebalance_timeout_ms >= 2 * FLUSH_TIMEOUT_SECONDS * 1000
        # A dead node's partitions are led elsewhere within the broker fault's target (10 s).
        assert int(config["broker.session.timeout.ms"]) <= 3000


def test_redis_cluster_nodes_speak_tls_on_every_link_and_keep_no_secret_in_their_arguments(tmp_path) -> None:
    settings = Settings(cluster=True, state_dir=tmp_path)
    nodes = infra.redis_nodes(settings)
    assert len(nodes) == 9 and all(node.in_cluster for node in nodes)
    assert len({node.users for node in nodes} | {node.secret_config for node in nodes}) == 2 * len(nodes)
    arguments = [
        *infra.redis_arguments(nodes[0].host, nodes[0].port, nodes[0].dir, nodes[0].users),
        *infra.cluster_node_arguments(settings, nodes[0].port),
    ]
    # Later arguments win: the plain port is closed, the TLS one is the node's.
    options: dict[str, str] = {}
    for name, value in zip(arguments[::2], arguments[1::2], strict=True):
        options[name] = value
    assert options["--port"] == "0" and options["--tls-port"] == str(nodes[0].port)
    assert options["--tls-replication"] == options["--tls-cluster"] == options["--cluster-enabled"] == "yes"
    assert options["--tls-protocols"] == "TLSv1.3"
    assert options["--masteruser"] == "replica" and "--masterauth" not in options
    assert options["--appendfsync"] == "always"


def test_a_single_redis_has_no_replica_user_and_a_cluster_node_has_one() -> None:
    assert "replica" not in infra._redis_principals(in_cluster=False)
    assert "replica" in infra._redis_principals(in_cluster=True)


def test_cluster_nodes_lines_are_read_as_roles_and_slots() -> None:
    primary = infra.cluster_node_from_line(
        "c923 127.0.0.1:17001@27001 myself,master - 0 1796500058000 1 connected 0-5460 7000 [7001->-1a35]"
    )
    assert (primary.role, primary.slots, primary.port, primary.failing) == ("primary", 5462, 17001, False)
    replica = infra.cluster_node_from_line("ea21 127.0.0.1:17006@27006 slave,fail bea7 0 1796500060000 3 disconnected")
    assert (replica.role, replica.primary_id, replica.slots, replica.failing) == ("replica", "bea7", 0, True)


def test_a_pause_is_charged_to_the_latest_fault_before_it() -> None:
    pauses = [
        {"at_s": 5.0, "seconds": 4.0},
        {"at_s": 20.5, "seconds": 1.2},
        {"at_s": 24.0, "seconds": 2.5},
        {"at_s": 39.5, "seconds": 7.0},
        {"at_s": 61.0, "seconds": 3.0},
    ]
    broker = Fault("broker", at_s=20.0, restored_at_s=30.0)
    redis = Fault("redis-primary", at_s=40.0, restored_at_s=50.0)
    assert gaps(pauses, [broker, redis], within=5.0) == [2.5, 7.0]
    assert gaps(pauses, [broker, redis], within=15.0) == [2.5, 7.0]
    assert gaps(pauses, [Fault("instances", at_s=70.0, restored_at_s=75.0)], within=5.0) == [0.0]


def test_a_claim_held_by_a_stopped_partition_is_charged_to_the_fault_though_results_went_on() -> None:
    """Half the partitions stopped for 9 s: results came every second (no gap), but the claims
    those partitions held arrived 9 s late, in the fault's window."""
    timeline = [
        {"second": 18, "settled": 50, "max_ms": 240.0},
        {"second": 21, "settled": 25, "max_ms": 310.0},
        {"second": 30, "settled": 90, "max_ms": 9_400.0},
        {"second": 41, "settled": 50, "max_ms": 12_000.0},  # the next fault's
        {"second": 47, "settled": 0},  # no result that second: no latency
        {"second": 60, "settled": 50, "max_ms": 5_000.0},  # after the last fault's window
    ]
    instances = Fault("instances", at_s=20.0, restored_at_s=30.0)
    broker = Fault("broker", at_s=40.0, restored_at_s=45.0)
    assert longest_waits(timeline, [instances, broker], within=5.0) == [9.4, 12.0]
    assert gaps([], [instances, broker], within=5.0) == [0.0, 0.0]


def test_a_killed_child_that_is_still_a_zombie_counts_as_stopped(tmp_path: Path) -> None:
    """A fault run kills nodes its own process started; until reaped they are zombies, and signal 0
    still reaches them. Taken for alive, they were never started again."""
    child = subprocess.Popen(["sleep", "60"])
    pid_file = tmp_path / "node.pid"
    pid_file.write_text(str(child.pid))
    assert infra.pid_alive(pid_file) == child.pid
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert infra.pid_alive(pid_file) is None
    assert not Path(f"/proc/{child.pid}").exists(), "the zombie is reaped"


def test_a_partition_never_cuts_off_the_address_every_node_shares() -> None:
    with pytest.raises(ValueError, match="every node's address"):
        faults.cut_off("127.0.0.1")
    assert len({infra._host_port(address)[0] for address in LOCAL_KAFKA_CLUSTER}) == len(LOCAL_KAFKA_CLUSTER)


def test_a_services_consumers_learn_a_moved_leader_within_seconds() -> None:
    # A partition awaiting its first position is only told of its new leader by a metadata refresh.
    consumer_options = make_broker(Settings(), "wallet").config.broker_config.builder.keywords
    assert consumer_options["metadata_max_age_ms"] <= 10_000
