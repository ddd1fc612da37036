"""Redis replicates asynchronously: a batch's outputs leave only once a replica of every primary has
its writes (shared/redis_client.py, ReplicationBarrier). Each primary has two replicas and the
barrier waits for one: with one of them paused the batch goes on; with both paused the barrier
refuses (the batch is read again later), and lets the batch go once a replica has caught up. A
batch that began under other primaries (a failover meanwhile) is read again, not waited for."""

from __future__ import annotations

import os
import signal

import pytest

from gongji.ops import infra
from shared.redis_client import ReplicaBehind, connect, replication_barrier
from shared.settings import REDIS_REPLICAS_PER_PRIMARY, Settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


async def test_a_batch_waits_for_a_replica_of_every_primary(cluster: Settings) -> None:
    redis = connect(cluster, "wallet")  # the service's own user may write the marker and WAIT
    await redis.initialize()
    barrier = replication_barrier(redis, cluster, "wallet", "wal:")
    try:
        primaries = barrier.primaries()
        assert len(primaries) == 3
        await barrier(primaries)
        demoted = frozenset([*sorted(primaries)[1:], "127.0.0.1:17099"])
        with pytest.raises(ReplicaBehind, match="primaries changed"):
            await barrier(demoted)
        state = infra.redis_cluster_state(cluster)
        primary = next(node for node in state if node.role == "primary")
        replicas = [node.port for node in state if node.primary_id == primary.node_id]
        assert len(replicas) == REDIS_REPLICAS_PER_PRIMARY
        pids = [int(node.pid.read_text()) for node in infra.redis_nodes(cluster) if node.port in replicas]
        os.kill(pids[0], signal.SIGSTOP)
        try:
            await barrier(primaries)  # the other replica has the batch
            os.kill(pids[1], signal.SIGSTOP)
            with pytest.raises(ReplicaBehind, match=primary.address):
                await barrier(primaries)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        await barrier(primaries)
    finally:
        await redis.aclose()
