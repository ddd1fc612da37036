"""Redis replicates asynchronously: a batch's outputs leave only once a replica of every primary has
its writes (shared/redis_client.py, ReplicationBarrier). With a replica paused, the barrier refuses
(the batch is read again later), and lets the batch go once the replica has caught up."""

from __future__ import annotations

import os
import signal

import pytest

from gongji.ops import infra
from shared.redis_client import ReplicaBehind, connect, replication_barrier
from shared.settings import Settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


async def test_a_batch_waits_for_a_replica_of_every_primary(cluster: Settings) -> None:
    redis = connect(cluster, "wallet")  # the service's own user may write the marker and WAIT
    await redis.initialize()
    barrier = replication_barrier(redis, cluster, "wallet", "wal:")
    try:
        await barrier()
        state = infra.redis_cluster_state(cluster)
        primary = next(node for node in state if node.role == "primary")
        replica = next(node for node in state if node.primary_id == primary.node_id)
        (paused,) = [node for node in infra.redis_nodes(cluster) if node.port == replica.port]
        pid = int(paused.pid.read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ReplicaBehind, match=primary.address):
                await barrier()
        finally:
            os.kill(pid, signal.SIGCONT)
        await barrier()
    finally:
        await redis.aclose()
