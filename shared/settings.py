"""Settings, read from the environment with the `GONGJI_` prefix (e.g. `GONGJI_KAFKA_BOOTSTRAP`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# The clusters `gongji infra up --cluster` starts on this machine (gongji/ops/infra.py): three
# KRaft nodes, and a Redis Cluster of three primaries with two replicas each, every link TLS. Two
# replicas, because a batch waits for one of them (shared/redis_client.py: ReplicationBarrier):
# once a primary fails over, its shard still has a replica to wait for.
# Each Kafka node on a loopback address of its own, so that a fault can cut one off from the others
# and from the clients (gongji/perf/faults.py: partition).
LOCAL_KAFKA_CLUSTER = ("127.0.1.1:29092", "127.0.1.2:29093", "127.0.1.3:29094")
REDIS_REPLICAS_PER_PRIMARY = 2
LOCAL_REDIS_CLUSTER = tuple(f"127.0.0.1:{port}" for port in range(17001, 17010))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GONGJI_", extra="ignore")

    # Kafka and Redis are clusters: every client of Redis is a Redis Cluster client, and topics
    # are replicated three times, two of them in sync before a write is confirmed. Unless set
    # otherwise, the addresses are those of the clusters `gongji infra up --cluster` starts.
    cluster: bool = False
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    # Development only: the broker also opens a SASL_PLAINTEXT listener (SCRAM, no TLS) on this
    # loopback port, and every client uses it instead of the TLS one. Off by default.
    kafka_plaintext_dev: bool = False
    kafka_plaintext_dev_port: int = 19094
    redis_url: str = "redis://127.0.0.1:16379/0"
    # Where the launcher keeps the broker's jars, logs, data and pid files.
    state_dir: Path = PROJECT_ROOT / ".gongji"
    # Where the local CA's private key is kept (default: state_dir/ca), apart from the services'
    # secrets; it is read only when the broker's certificate is issued or renewed.
    ca_key_dir: Path | None = None
    topic_partitions: int = 24
    # Each province's own topics carry one province's traffic: fewer partitions keep 32 × 3 of
    # them light on a small broker.
    province_topic_partitions: int = 3
    topic_replication_factor: int = 1
    redis_max_connections: int = 128
    # Redis's memory bound (`maxmemory`, with writes refused at it, never keys evicted).
    redis_max_memory_bytes: int = 4 * 1024**3
    # Health and metrics HTTP ports; a service listens on base + its index (0 = relationship).
    http_port_base: int = 18080
    dashboard_port: int = 18090  # `gongji dashboard`, on loopback
    # Host names, besides the loopback ones, that the health and metrics port answers to (a
    # Prometheus scraping it through a name of its own); any other `Host` is refused.
    http_allowed_hosts: list[str] = []
    # `/health` fails when a consumer has made no progress (a caught-up poll, a confirmed batch)
    # for this long.
    health_stale_seconds: float = 30.0
    # A consumer batch is bounded so that one slow batch cannot hold a partition for long. A poll
    # returns as soon as any record is fetched (a batch is what arrived while the last one was
    # handled: small when idle, large under load); an empty poll waits this long, then polls again.
    batch_max_records: int = 500
    poll_timeout_ms: int = 200
    # The longest a claim-path consumer's fetch waits at the broker for data (see shared/runtime.py):
    # it bounds the wait of a record on a partition that was just handed over. Lower costs fetches
    # that come back with little or nothing: at 10 ms the services and Kafka spent about 30% more
    # CPU per claim than at 25, at 60 and 250 claims/s alike, for no lower latency (docs/performance.md).
    claim_path_fetch_max_wait_ms: int = 25
    # ... unless this much data (about ten claims) came sooner: larger batches under load.
    claim_path_fetch_min_bytes: int = 4096
    # The wait of every other fetch, and of a claim-path fetch once its last one brought nothing
    # (answered at its first record): what an idle consumer costs is a fetch this often.
    idle_fetch_max_wait_ms: int = 500
    # A route that reads the platform's own results (nobody waits on it) fetches once this much
    # came, or the idle wait ended: a batch of about a hundred results, not one at a time.
    own_outputs_fetch_min_bytes: int = 64 * 1024
    # How long a consumer may be silent before its group hands its partitions to the other
    # instances: a crashed instance's partitions are read again about this plus a rebalance after
    # it died. It heartbeats four times in it; the brokers accept sessions down to 1 s.
    consumer_session_timeout_ms: int = Field(default=2000, ge=1000)
    # How long a rebalance waits for the group's live members to join again. Longer than a
    # session: a member busy with a batch, or flushing what it read before giving its partitions up
    # (shared/acknowledgements.py), would otherwise be dropped and start another rebalance.
    consumer_rebalance_timeout_ms: int = Field(default=10_000, ge=1000)
    # A record that fails this many times for a reason of its own is dead-lettered alone.
    poison_attempts: int = Field(default=3, ge=1)
    # Settlement spreads claim records and clearing accumulators over this many Redis hash
    # slots; a month is closed shard by shard. Never change it on a live system.
    settlement_shards: int = 64
    # What one province's own claims topic may carry, beyond which a claim is refused RATE_LIMITED:
    # claims for one recipient in an Asia/Shanghai day (a patient has a few; a province looping on
    # one person is stopped at this), and claims in a minute (60,000: about eighty times a
    # province's average at a million claims a day nationally). The national topic has none.
    claims_per_recipient_per_day: int = Field(default=100, ge=1)
    province_claims_per_minute: int = Field(default=60_000, ge=1)
    # The idempotency window (docs/contract.md): a claim or reversal is taken only while its
    # `occurred_at` is no older than this (older: CLAIM_TOO_OLD, before any state is read) and no
    # more than the clock skew ahead of the platform's clock (INVALID_MESSAGE). 30 days: a reversal
    # (退费) comes within days, and a clearing month is closed within days of its end.
    claim_window_seconds: int = Field(default=30 * 86400, ge=3600)
    claim_clock_skew_seconds: int = Field(default=300, ge=0)
    # What exists only to recognise a claim again (its record, its id's owner) is kept this much
    # longer than the window after it is written, then leaves Redis by itself: longer than the
    # skew, so every duplicate the window lets in is still recognised.
    claim_record_grace_seconds: int = Field(default=2 * 86400, ge=3600)
    # The window of every other input topic (enrollment, credits, spends, kinship, supervision, the
    # app's commands), by its `occurred_at` or `requested_at`: outside it only its id is read (an
    # input applied and delivered again late gets its stored answer); any other older input is
    # refused INPUT_TOO_OLD, one ahead of the clock by more than the skew INVALID_MESSAGE. Its ids
    # are kept at least this plus the grace (two generations of seen ids per person and topic).
    input_window_seconds: int = Field(default=30 * 86400, ge=3600)
    # How long the topics (the books) keep a record; 0: for good. The deep audit starts from its
    # last clean checkpoint and reads back two generations of the windows and a day before it
    # (docs/retention.md): a finite retention must keep that and two weeks more (a clean audit at
    # least weekly); `gongji audit --deep --from-scratch` needs every record since the first.
    books_retention_days: int = Field(default=0, ge=0)
    # How long the policy (opened regions, the cross-province date) is cached by a service.
    policy_cache_seconds: float = 1.0
    # Statistics are published every this many seconds.
    # How often the exact statistics and the day's reconciliation are published when they changed
    # (the dashboard shows them within 2 s), in how many Redis slots they are counted, how long a
    # minute's and a day's sums stay in Redis (the topics keep them for good; a day's, with the ids
    # counted in it, at least as long as its results may come again), and how long after
    # midnight a day is published final (a result settled just before it may be published just after).
    statistics_interval_seconds: float = Field(default=1.0, gt=0)
    statistics_shards: int = Field(default=16, ge=1)  # fixed for a deployment's life: an id is found in its shard
    statistics_minutes_kept_seconds: int = Field(default=2 * 86400, ge=3600)
    reconciliation_days_kept_seconds: int = Field(default=35 * 86400, ge=2 * 86400)
    reconciliation_settle_seconds: int = Field(default=60, ge=0)
    # How often an open day (the day so far) is published while it changes.
    reconciliation_interval_seconds: float = Field(default=10.0, ge=0)
    # A fixed processing time for every service process (RFC 3339), for demonstrations and tests
    # of day and month edges; empty means the real clock.
    clock_fixed_at: str = ""
    # A clock faster than real time, for `gongji soak` only: it read `clock_origin` (RFC 3339) at
    # Unix time `clock_real_origin` and runs `clock_speed` times as fast; 1 means the real clock.
    # Every instance must run on the same one: an expiry written under it lasts its span of it.
    clock_speed: float = Field(default=1.0, gt=0)
    clock_origin: str = ""
    clock_real_origin: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _cluster_addresses(cls, values: Any) -> Any:
        if isinstance(values, dict) and str(values.get("cluster", "")).lower() in ("1", "true", "yes", "on"):
            values.setdefault("kafka_bootstrap", ",".join(LOCAL_KAFKA_CLUSTER))
            values.setdefault("redis_url", f"rediss://{LOCAL_REDIS_CLUSTER[0]}/0")
            values.setdefault("topic_replication_factor", 3)
        return values

    @property
    def topic_min_insync_replicas(self) -> int:
        """A write is confirmed (acks=all) once this many replicas have it: with three, one broker
        may be lost without losing a confirmed record or stopping writes."""
        return min(2, self.topic_replication_factor)

    @model_validator(mode="after")
    def _books_kept_past_the_audit(self) -> Settings:
        windows = max(self.claim_window_seconds, self.input_window_seconds) + self.claim_record_grace_seconds
        least = -(-(2 * windows + 86400) // 86400) + 14
        if self.books_retention_days and self.books_retention_days < least:
            raise ValueError(
                f"GONGJI_BOOKS_RETENTION_DAYS must be 0 (for good) or at least {least}: the deep audit reads "
                "two generations of the windows and a day back from its last checkpoint, and two weeks more"
            )
        return self

    @model_validator(mode="after")
    def _one_clock(self) -> Settings:
        if self.clock_speed != 1.0 and (self.clock_fixed_at or not self.clock_origin or self.clock_real_origin <= 0):
            raise ValueError(
                "GONGJI_CLOCK_SPEED needs GONGJI_CLOCK_ORIGIN and GONGJI_CLOCK_REAL_ORIGIN, "
                "and no GONGJI_CLOCK_FIXED_AT"
            )
        return self
