"""`gongji status`: the whole system at a glance — each Kafka node, each Redis node and each service
instance on this machine, as the settings name them (one of each, or the clusters). Every part is
asked for itself; one that does not answer is listed as down, never left out."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from gongji.ops import infra
from gongji.ops.launcher import MAX_INSTANCES, SERVICE_NAMES, http_port
from shared.settings import Settings

PROBE_TIMEOUT_SECONDS = 0.5


def kafka_status(settings: Settings) -> list[dict[str, Any]]:
    """Each node: its pid, role, address, how many partitions it leads and how many of those are
    under-replicated (fewer in-sync replicas than replicas)."""
    led: dict[int, int] = {}
    under: dict[int, int] = {}
    controller = None
    try:
        admin = infra.kafka_admin(settings)
        metadata = admin.list_topics(timeout=5)
        controller = admin.describe_cluster(request_timeout=5).result().controller
        for topic in metadata.topics.values():
            for partition in topic.partitions.values():
                led[partition.leader] = led.get(partition.leader, 0) + 1
                if len(partition.isrs) < len(partition.replicas):
                    under[partition.leader] = under.get(partition.leader, 0) + 1
    except Exception:  # noqa: BLE001 - no broker answers: every node is shown as it is
        pass
    nodes = []
    for node in infra.kafka_nodes(settings):
        pid = infra.pid_alive(node.pid)
        answering = pid is not None and infra.port_open(node.host, node.port)
        nodes.append(
            {
                "node_id": node.node_id,
                "address": f"{node.host}:{node.port}",
                "pid": pid,
                "role": "broker, controller" + (" (active)" if controller and controller.id == node.node_id else ""),
                "up": answering,
                "leader_of": led.get(node.node_id, 0) if answering else 0,
                "under_replicated": under.get(node.node_id, 0) if answering else 0,
            }
        )
    return nodes


def redis_status(settings: Settings) -> list[dict[str, Any]]:
    """Each node: its pid, role (primary or replica), address, slots, and a replica's lag behind its
    primary (bytes of the replication stream not yet applied)."""
    nodes = []
    offsets: dict[str, int] = {}  # a primary's replication offset, by address
    replicas: dict[str, tuple[str, int]] = {}  # a replica's (primary's address, own offset)
    for node in infra.redis_nodes(settings):
        address = f"{node.host}:{node.port}"
        entry: dict[str, Any] = {"address": address, "pid": infra.pid_alive(node.pid), "up": False, "role": None}
        try:
            with infra.node_redis(settings, node, socket_timeout=PROBE_TIMEOUT_SECONDS * 2) as client:
                replication = client.info("replication")
                memory = client.info("memory")
                entry["slots"] = _slots(client) if node.in_cluster else 16384
        except redis.exceptions.RedisError:
            nodes.append(entry)
            continue
        entry |= {"up": True, "memory_bytes": int(memory["used_memory"])}
        if replication["role"] == "master":
            entry["role"] = "primary"
            offsets[address] = int(replication["master_repl_offset"])
        else:
            entry["role"] = "replica"
            primary = f"{replication['master_host']}:{replication['master_port']}"
            entry["replica_of"] = primary
            entry["link"] = replication["master_link_status"]
            replicas[address] = (primary, int(replication.get("slave_repl_offset", 0)))
        nodes.append(entry)
    for entry in nodes:
        if entry["address"] in replicas:
            primary, offset = replicas[entry["address"]]
            entry["replication_lag_bytes"] = max(0, offsets[primary] - offset) if primary in offsets else None
    return nodes


def _slots(client: redis.Redis) -> int:
    """The slots a node serves (a replica: its primary's, none of its own)."""
    mine = next(line for line in client.execute_command("CLUSTER", "NODES").decode().splitlines() if "myself" in line)
    return infra.cluster_node_from_line(mine).slots


def _probe(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_SECONDS) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return None


def services_status(settings: Settings) -> list[dict[str, Any]]:
    """Each service instance that answers on its operations port (instance i on base + 100 × i)."""
    addresses = [
        (name, instance, f"http://127.0.0.1:{http_port(settings, name, instance)}")
        for instance in range(MAX_INSTANCES)
        for name in SERVICE_NAMES
    ]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda one: _probe(f"{one[2]}/status"), addresses))
    found = []
    for (name, instance, address), answer in zip(addresses, answers, strict=True):
        if answer is None:
            continue
        found.append(
            {
                "name": name,
                "instance": instance,
                "address": address,
                "pid": answer["pid"],
                "role": f"{name} instance {instance}",
                "healthy": not answer["problems"],
                "problems": answer["problems"],
                "partitions": sum(consumer["partitions"] for consumer in answer["consumers"]),
                "lag": sum(consumer["lag"] for consumer in answer["consumers"]),
            }
        )
    return found


def system_status(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    return {"kafka": kafka_status(settings), "redis": redis_status(settings), "services": services_status(settings)}
