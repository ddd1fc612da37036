"""The Redis client every service uses: on one Redis, a bounded pool whose callers wait for a free
connection (batches run many keys at once; an unbounded burst would otherwise fail with "too many
connections"); on a Redis Cluster, redis-py's cluster client, which routes each call to its slot's
primary and follows MOVED, ASK and failovers."""

from __future__ import annotations

import asyncio
from typing import Protocol

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import AskError, MovedError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.credentials import redis_options
from shared.settings import Settings


def in_database(redis_url: str, db: int) -> str:
    """The same server, another database. (`Redis.from_url(url, db=n)` keeps the url's own `/0`.)"""
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


def connect(settings: Settings, principal: str) -> Redis:
    """A client authenticated as `principal`'s Redis user (shared/principals.py says what it may do).
    A cluster client has the same calls as a single Redis's (the keys of one call share a slot)."""
    if settings.cluster:
        # Connections per node; a batch's keys in flight are bounded well under it (shared/concurrency.py).
        return RedisCluster.from_url(  # type: ignore[return-value]
            settings.redis_url, max_connections=settings.redis_max_connections, **redis_options(settings, principal)
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=30,
        **redis_options(settings, principal),
    )
    return Redis(connection_pool=pool)


class RedisNotDurable(RuntimeError):
    pass


async def require_durable(redis: Redis) -> None:
    """Refuses to run on a Redis that may lose acknowledged writes. A service commits its Kafka
    offset once Redis has answered; with `appendfsync everysec` a crash could then roll back a
    debit whose answer was already published as paid. Only AOF with `appendfsync always` is safe."""
    for node, config in (await _every_node(redis, "CONFIG", "GET", "append*")).items():
        if (config.get("appendonly"), config.get("appendfsync")) != ("yes", "always"):
            raise RedisNotDurable(
                f"Redis {node} runs with appendonly={config.get('appendonly')}, "
                f"appendfsync={config.get('appendfsync')}: Gongji needs appendonly yes and appendfsync "
                "always (see docs/architecture.md, Redis durability)"
            )


async def _every_node(redis: Redis, *command: str) -> dict[str, dict[str, str]]:
    """A CONFIG GET's answer from each node, replicas too (one may be promoted), by node name."""
    if isinstance(redis, RedisCluster):
        answers = await redis.execute_command(*command, target_nodes=RedisCluster.ALL_NODES)
    else:
        answers = {"": await redis.execute_command(*command)}
    return {name: _pairs(answer) for name, answer in answers.items()}


def _pairs(answer: dict | list) -> dict[str, str]:
    if isinstance(answer, dict):
        return {_text(name): _text(value) for name, value in answer.items()}
    return {_text(name): _text(value) for name, value in zip(answer[::2], answer[1::2], strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ReplicaBehind(RedisError):
    """A primary's writes did not reach a replica in time: the batch is not confirmed, and is read
    again (its steps are idempotent)."""


# How long a batch waits for a replica before it is read again; and for the whole barrier, should a
# primary not answer at all (frozen, or cut off) rather than refuse.
REPLICA_WAIT_MS = 2000
BARRIER_TIMEOUT_SECONDS = REPLICA_WAIT_MS / 1000 + 2.0
# A marker key is looked for among this many hash tags; a primary that owns no slot has none.
MARKER_CANDIDATES = 100_000


class Barrier(Protocol):
    """What a service awaits after a batch's handler, before its outputs leave: `primaries()` is
    called as the batch begins, and the barrier given its answer once the batch's writes are done."""

    def primaries(self) -> frozenset[str]: ...

    async def __call__(self, primaries: frozenset[str]) -> None: ...


class ReplicationBarrier:
    """On a Redis Cluster, called before a batch's outputs are published and its offsets committed:
    once it returns, every write the batch made is on a replica of its primary too.

    Why: Redis replicates asynchronously. A primary that died holding a write its replica lacked
    is replaced by that replica, and the write is gone while its output (a draw's answer, a
    result) is already on Kafka and its input committed: a quota that paid comes back, money is
    paid twice. With the barrier, a write a failover can lose was never answered: its input is
    read again and the step applied again on the new primary.

    How: WAIT counts the writes of its own connection only. On each primary one connection writes a
    marker, then WAITs for one replica; the replication stream keeps its order, so a replica that
    has the marker has every write made before it, whoever made it. One round trip per primary, per
    batch, all primaries at once.

    Only the primaries the batch began with can hold its writes. If the client's map changed during
    the batch (a failover: a write may have gone to a primary since demoted, whose replicas will
    drop it), the batch is read again rather than waited for on the new primaries."""

    def __init__(self, cluster: RedisCluster, settings: Settings, principal: str, key_prefix: str) -> None:
        self.cluster = cluster
        self.options = redis_options(settings, principal)
        self.key_prefix = key_prefix
        # By node name. Clients are kept for the process's life (a cluster has a few nodes, and a
        # batch still waiting on one must not see it closed); markers are chosen again whenever
        # the slots move.
        self.clients: dict[str, Redis] = {}
        self.markers: dict[str, str] = {}

    def primaries(self) -> frozenset[str]:
        return frozenset(node.name for node in self.cluster.get_primaries())

    async def __call__(self, primaries: frozenset[str]) -> None:
        if (now := self.primaries()) != primaries:
            self.markers = {}
            raise ReplicaBehind(
                f"the primaries changed during the batch ({', '.join(sorted(primaries))} → "
                f"{', '.join(sorted(now))}): a write may be on a primary that lost its slots"
            )
        try:
            async with asyncio.timeout(BARRIER_TIMEOUT_SECONDS):
                await asyncio.gather(*(self._replicated(node) for node in self.cluster.get_primaries()))
        except TimeoutError:
            raise ReplicaBehind(f"a primary did not answer the barrier within {BARRIER_TIMEOUT_SECONDS} s") from None
        except (MovedError, AskError, RedisConnectionError) as error:
            # The slots moved (a failover): the cluster client's map is read again, and the
            # markers are chosen again from it; the batch is read again meanwhile.
            self.markers = {}
            await self.cluster.nodes_manager.initialize()
            raise ReplicaBehind(f"the cluster's slots moved under the replication barrier: {error}") from error

    async def _replicated(self, node: ClusterNode) -> None:
        client = self.clients.get(node.name)
        if client is None:
            client = self.clients[node.name] = Redis(host=node.host, port=node.port, ssl=True, **self.options)
        marker = self.markers.get(node.name) or self.markers.setdefault(node.name, self._marker(node))
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr(marker)
            pipe.wait(1, REPLICA_WAIT_MS)
            _, replicas = await pipe.execute()
        if replicas < 1:
            raise ReplicaBehind(f"no replica of {node.name} had this batch's writes within {REPLICA_WAIT_MS} ms")

    def _marker(self, node: ClusterNode) -> str:
        """The first key of the form `<prefix>{r<n>}:replicated` that lies in one of the node's slots."""
        for n in range(MARKER_CANDIDATES):
            key = f"{self.key_prefix}{{r{n}}}:replicated"
            if self.cluster.get_node_from_key(key).name == node.name:
                return key
        raise ReplicaBehind(f"{node.name} owns no slot in the client's map: the slots are moving")


class AlreadyReplicated:
    """A single Redis has no replica to wait for: every write is on its disk (appendfsync always)
    before it is answered, and no failover can put an older copy in its place."""

    def primaries(self) -> frozenset[str]:
        return frozenset()

    async def __call__(self, primaries: frozenset[str]) -> None:
        return None


def replication_barrier(redis: Redis, settings: Settings, principal: str, key_prefix: str) -> Barrier:
    """What a service awaits before a batch's outputs leave (see ReplicationBarrier)."""
    if isinstance(redis, RedisCluster):
        return ReplicationBarrier(redis, settings, principal, key_prefix)
    return AlreadyReplicated()
