"""Every door, tried from outside against the real broker and Redis that `gongji infra up` started:
who is refused, and that those allowed in can do exactly their part (shared/principals.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
import redis.asyncio as redis_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from gongji.ops import infra
from services.settlement.store import LIBRARY as SETTLEMENT_LIBRARY
from services.wallet.store import WalletStore
from shared.credentials import (
    aiokafka_options,
    ca_file,
    make_secrets_dir,
    password,
    redis_options,
    secrets_dir,
    ssl_context,
)
from shared.policy import POLICY_KEY
from shared.principals import PRINCIPALS, SERVICES, principal
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    ALL_TOPICS,
    CLAIMS,
    CLEARING,
    DEAD_LETTERS,
    DRAW_ANSWERS,
    DRAW_REQUESTS,
    ENROLLMENT,
    KINSHIP,
    PROVINCE_TOPICS,
    RECONCILIATION,
    REFUND_REQUESTS,
    RELATIONSHIP_EVENTS,
    SETTLEMENT_GROUP,
    SETTLEMENTS,
    STATISTICS,
    SUPERVISION,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    WALLET_GROUP,
    Topic,
    province_claims,
    province_clearing,
    province_settlements,
    route_group,
)
from tests.integration.conftest import integration_redis_url
from tests.support import SEEN, new_id, new_person_id

pytestmark = pytest.mark.timeout(300)
INTERNAL = (DRAW_REQUESTS, DRAW_ANSWERS, REFUND_REQUESTS)


# ---- probes: each asks the broker once, as one principal --------------------------------------


async def writable(settings: Settings, name: str, topics: list[Topic]) -> dict[str, bool]:
    """Which of `topics` `name` may produce to (one producer, one try each)."""
    producer = AIOKafkaProducer(
        **aiokafka_options(settings, name), enable_idempotence=False, acks=1, request_timeout_ms=10_000
    )
    await producer.start()
    answers = {}
    try:
        for topic in topics:
            try:
                # Never valid for any contract: should one get through, the service dead-letters it.
                await producer.send_and_wait(topic.name, b"door test", key=b"door")
                answers[topic.name] = True
            except TopicAuthorizationFailedError:
                answers[topic.name] = False
    finally:
        await producer.stop()
    return answers


async def readable(settings: Settings, name: str, topics: list[Topic]) -> dict[str, bool]:
    """Which of `topics` `name` may consume, in a consumer group of its own prefix (each principal
    that reads has one: `province-11…`, `dashboard…`). The broker refuses an unauthorized topic at once."""
    answers = {}
    for topic in topics:
        consumer = AIOKafkaConsumer(
            topic.name,
            **aiokafka_options(settings, name),
            group_id=new_id(name),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            await consumer.getmany(timeout_ms=2_000)
            answers[topic.name] = True
        except TopicAuthorizationFailedError:
            answers[topic.name] = False
        finally:
            await consumer.stop()
    return answers


async def may_join(settings: Settings, name: str, group: str, topic: Topic) -> bool:
    consumer = AIOKafkaConsumer(
        topic.name, **aiokafka_options(settings, name), group_id=group, enable_auto_commit=False
    )
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=2_000)  # the join happens on the first fetch
        return True
    except GroupAuthorizationFailedError:
        return False
    finally:
        await consumer.stop()


def everything_but(*allowed: Topic) -> list[Topic]:
    names = {topic.name for topic in allowed}
    return [topic for topic in (*ALL_TOPICS, *PROVINCE_TOPICS) if topic.name not in names]


# ---- the front door: who may connect at all ---------------------------------------------------


async def _start(producer: AIOKafkaProducer) -> None:
    try:
        await producer.start()
    finally:
        await producer.stop()


async def test_an_unauthenticated_client_is_refused(infrastructure) -> None:
    """TLS without SASL: the broker wants a SCRAM handshake first."""
    with pytest.raises(KafkaError):
        await _start(
            AIOKafkaProducer(
                bootstrap_servers=infrastructure.kafka_bootstrap,
                security_protocol="SSL",
                ssl_context=ssl_context(infrastructure),
                request_timeout_ms=5_000,
            )
        )


async def test_a_wrong_password_is_refused(infrastructure, caplog) -> None:
    options = aiokafka_options(infrastructure, "operator") | {"sasl_plain_password": "not-the-password"}
    with pytest.raises(KafkaConnectionError):
        await _start(AIOKafkaProducer(**options, request_timeout_ms=5_000))
    assert "SaslAuthenticationFailed" in caplog.text and "invalid credentials" in caplog.text


async def test_plaintext_to_the_tls_port_is_refused(infrastructure) -> None:
    with pytest.raises(KafkaConnectionError):
        await _start(AIOKafkaProducer(bootstrap_servers=infrastructure.kafka_bootstrap, request_timeout_ms=5_000))
    options = aiokafka_options(infrastructure, "operator") | {
        "security_protocol": "SASL_PLAINTEXT",
        "ssl_context": None,
    }
    with pytest.raises(KafkaConnectionError):
        await _start(AIOKafkaProducer(**options, request_timeout_ms=5_000))


async def test_a_client_cannot_reach_the_controller_listener(infrastructure) -> None:
    """The controller's listener takes only a certificate signed by the local CA's key, which only
    the broker has: a client with the operator's password and the CA's certificate gets no further
    than the TLS handshake."""
    controller = f"{infrastructure.kafka_bootstrap.rpartition(':')[0]}:{infrastructure.kafka_controller_port}"
    for protocol in ("SSL", "SASL_SSL"):
        options = aiokafka_options(infrastructure, "operator") | {
            "bootstrap_servers": controller,
            "security_protocol": protocol,
        }
        with pytest.raises(KafkaError):
            await _start(AIOKafkaProducer(**options, request_timeout_ms=5_000))
    with pytest.raises(KafkaConnectionError):
        await _start(AIOKafkaProducer(bootstrap_servers=controller, request_timeout_ms=5_000))


# ---- a province: its own claims in, its own results out, nothing else -----------------------


async def test_a_province_writes_only_its_own_claims_topic(infrastructure) -> None:
    answers = await writable(
        infrastructure,
        "province-11",
        [
            province_claims("11"),
            province_claims("31"),
            CLAIMS,
            WALLET_COMMANDS,
            SUPERVISION,
            *INTERNAL,
            ENROLLMENT,
            KINSHIP,
            ACCOUNT_CREDITS,
            SETTLEMENTS,
            DEAD_LETTERS,
            STATISTICS,
            province_settlements("11"),
            province_clearing("11"),
        ],
    )
    assert answers.pop(province_claims("11").name) is True
    assert not any(answers.values()), [name for name, allowed in answers.items() if allowed]


async def test_a_province_reads_only_its_own_topics(infrastructure) -> None:
    answers = await readable(
        infrastructure,
        "province-11",
        [
            province_settlements("11"),
            province_clearing("11"),
            province_settlements("31"),
            province_clearing("31"),
            province_claims("31"),
            SETTLEMENTS,
            CLEARING,
            CLAIMS,
            DEAD_LETTERS,
            WALLET_EVENTS,
            *INTERNAL,
        ],
    )
    assert answers.pop(province_settlements("11").name) and answers.pop(province_clearing("11").name)
    assert not any(answers.values()), [name for name, allowed in answers.items() if allowed]


async def test_a_province_cannot_join_a_services_consumer_group(infrastructure) -> None:
    own = province_settlements("11")
    assert not await may_join(infrastructure, "province-11", SETTLEMENT_GROUP, own)
    assert not await may_join(infrastructure, "province-11", WALLET_GROUP, own)
    assert not await may_join(infrastructure, "province-11", route_group(SETTLEMENT_GROUP, SETTLEMENTS), own)
    assert not await may_join(infrastructure, "province-11", "province-31-reader", own)
    assert await may_join(infrastructure, "province-11", f"province-11-{new_id('reader')}", own)


# ---- dashboards and services ------------------------------------------------------------------


async def test_the_dashboard_reads_statistics_and_the_reconciliation_and_nothing_else(infrastructure) -> None:
    aggregates = [STATISTICS, RECONCILIATION]
    answers = await readable(infrastructure, "dashboard", [*aggregates, *everything_but(*aggregates)[:25]])
    assert answers.pop(STATISTICS.name) is answers.pop(RECONCILIATION.name) is True
    assert not any(answers.values()), [name for name, allowed in answers.items() if allowed]
    assert not any((await writable(infrastructure, "dashboard", [*aggregates, CLAIMS, SETTLEMENTS])).values())


@pytest.mark.parametrize("service", [one.name for one in SERVICES])
async def test_a_service_writes_only_the_topics_it_owns(infrastructure, service: str) -> None:
    owned = {
        right.name for right in principal(service).kafka if right.resource == "topic" and right.operation == "write"
    }
    answers = await writable(
        infrastructure,
        service,
        [*ALL_TOPICS, province_settlements("44"), province_claims("44"), province_clearing("44")],
    )
    assert {name for name, allowed in answers.items() if allowed} == owned & set(answers)
    # Only the settlement service writes settlements and clearing; only the wallet draws.
    assert answers[SETTLEMENTS.name] == answers[CLEARING.name] == (service == "settlement")
    assert answers[DRAW_ANSWERS.name] == answers[WALLET_EVENTS.name] == (service == "wallet")
    assert answers[RELATIONSHIP_EVENTS.name] == (service == "relationship")


# ---- Redis --------------------------------------------------------------------------------------


def _redis(settings: Settings, name: str | None = None, **options) -> redis.Redis:
    credentials = redis_options(settings, name) if name else {}
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5, **credentials, **options)


def test_anonymous_redis_is_refused(infrastructure) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis(infrastructure).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):  # the default user is off, whatever its password
        _redis(infrastructure, username="default", password="").ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis(infrastructure, username="wallet", password="not-the-password").ping()


def test_the_wallets_redis_user_cannot_touch_settlement_keys(infrastructure) -> None:
    wallet = _redis(infrastructure, "wallet")
    shard = "stl:{s0}"
    refused = [
        lambda: wallet.hget(f"{shard}:claims:20260302", "x"),
        lambda: wallet.hset(f"{shard}:claims:20260302", "x", "{}"),
        lambda: wallet.fcall(
            SETTLEMENT_LIBRARY.function("settlement_close_month"),
            2,
            f"{shard}:closed",
            f"{shard}:clearing:2026-01",
            "2026-01",
            "2026-02-01T00:00:00+08:00",
        ),
        lambda: wallet.hset(POLICY_KEY, "closed_regions", ""),  # the policy is read-only to services
        lambda: wallet.function_load(SETTLEMENT_LIBRARY.source, replace=True),  # no service loads code
        lambda: wallet.keys("*"),
        lambda: list(wallet.scan_iter("stl:*")),  # key names hold person ids
        lambda: wallet.flushdb(),
        lambda: wallet.config_set("appendfsync", "everysec"),
        lambda: wallet.acl_list(),
        lambda: wallet.function_list(withcode=True),  # every library's code
    ]
    for attempt in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert wallet.hgetall(f"wal:{{p:{new_id()}}}:account") == {}  # its own keys
    assert isinstance(wallet.hgetall(POLICY_KEY), dict)
    settlement = _redis(infrastructure, "settlement")
    with pytest.raises(redis.exceptions.NoPermissionError):
        settlement.hgetall(f"wal:{{p:{new_id()}}}:account")
    with pytest.raises(redis.exceptions.NoPermissionError):
        settlement.hgetall(POLICY_KEY)  # settlement has no use for the policy


async def test_a_redis_restart_keeps_every_functions_writes(infrastructure, redis) -> None:
    """A Function's writes are kept in the AOF as transactions, which Redis 7.0 checks against the
    default user's rights when it loads them: the default user is off, but not without rights, or
    every restart would silently drop them."""
    store = WalletStore(redis)
    await store.load()
    person = new_person_id()
    assert (
        await store.credit(new_id("cred"), "fingerprint", person, 1_234, "2026-03-02T12:00:00+08:00", SEEN)
    ).outcome == "applied"
    paths = infra.Paths(infrastructure.state_dir)
    logged = paths.redis_log.stat().st_size
    assert infra.stop(paths.redis_pid, "Redis") == "stopped Redis"
    infra.up(infrastructure)
    await redis.connection_pool.disconnect()  # the session's client: its connections died with the server
    with paths.redis_log.open() as log:
        log.seek(logged)
        assert "AOF-loading-client" not in log.read()  # no transaction of the AOF refused
    client = redis_asyncio.Redis.from_url(
        integration_redis_url(infrastructure.redis_url), **redis_options(infrastructure, "operator")
    )
    try:
        assert await client.hget(f"wal:{{p:{person}}}:account", "balance") == b"1234"
    finally:
        await client.aclose()


def test_redis_listens_on_loopback_only(infrastructure) -> None:
    port = int(infrastructure.redis_url.rsplit(":", 1)[1].split("/")[0])
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert out.split() and all(address.startswith("127.0.0.1:") for address in out.split()[3::5])


# ---- secrets ------------------------------------------------------------------------------------


def test_secret_files_are_0600_in_a_0700_directory_and_kept_out_of_git(infrastructure) -> None:
    directory = secrets_dir(infrastructure)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert {f"{one.name}.password" for one in PRINCIPALS} <= {path.name for path in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not list(directory.glob("java-arguments*"))  # read by the Java launcher, then deleted
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(directory / "operator.password")], cwd=Path(__file__).parent
    )
    assert ignored.returncode == 0


def _processes_of(infrastructure) -> list[int]:
    paths = infra.Paths(infrastructure.state_dir)
    return [int(pid_file.read_text()) for pid_file in (paths.kafka_pid, paths.redis_pid)]


def test_no_secret_is_in_a_process_argument_or_a_log(infrastructure) -> None:
    secrets = [password(infrastructure, one.name) for one in PRINCIPALS]
    for pid in _processes_of(infrastructure):
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not [secret for secret in secrets if secret in arguments], pid
    paths = infra.Paths(infrastructure.state_dir)
    logs = [paths.kafka_log, paths.redis_log, *(infrastructure.state_dir / "test-logs").glob("*.log")]
    for log in logs:
        if log.exists():
            text = log.read_text(errors="replace")
            assert not [secret for secret in secrets if secret in text], log


def gongji(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gongji", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_credentials_show_prints_a_principals_aiokafka_settings(infrastructure) -> None:
    shown = gongji("credentials", "show", "province-11", "--json")
    assert shown.returncode == 0, shown.stderr
    settings = json.loads(shown.stdout)
    assert settings == {
        "bootstrap_servers": infrastructure.kafka_bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "province-11",
        "sasl_plain_password": password(infrastructure, "province-11"),
        "ssl_cafile": str(ca_file(infrastructure)),
    }
    ssl.create_default_context(cafile=settings["ssl_cafile"])  # a CA file clients can load
    assert gongji("credentials", "show", "nobody", "--json").returncode == 1


async def test_a_rotated_password_works_at_once_and_the_old_one_no_longer_does(infrastructure, caplog) -> None:
    """Kafka (SCRAM, through the admin API) and Redis (ACL) take the new password with no restart."""
    old = password(infrastructure, "wallet")
    rotated = gongji("credentials", "rotate", "wallet")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new = password(infrastructure, "wallet")
    assert new != old and stat.S_IMODE((secrets_dir(infrastructure) / "wallet.password").stat().st_mode) == 0o600
    await _start(AIOKafkaProducer(**aiokafka_options(infrastructure, "wallet"), request_timeout_ms=5_000))
    with pytest.raises(KafkaConnectionError):
        await _start(
            AIOKafkaProducer(
                **aiokafka_options(infrastructure, "wallet") | {"sasl_plain_password": old}, request_timeout_ms=5_000
            )
        )
    assert "invalid credentials" in caplog.text
    assert _redis(infrastructure, "wallet").ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        _redis(infrastructure, username="wallet", password=old).ping()
    # Redis keeps it across a restart too: ACL SAVE wrote the new hash to its ACL file.
    assert hashlib.sha256(new.encode()).hexdigest() in infra.Paths(infrastructure.state_dir).redis_users.read_text()


# ---- round 2: what the broker's process and its TLS give away ------------------------------------


def test_tls_below_1_3_is_refused(infrastructure) -> None:
    """TLS 1.3's suites are all AEAD; 1.2 would still offer CBC ones (and 1.0, 1.1 worse)."""
    host, port = infrastructure.kafka_bootstrap.rsplit(":", 1)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=str(ca_file(infrastructure)))
        context.minimum_version = context.maximum_version = version
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            if version == ssl.TLSVersion.TLSv1_3:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    assert tls.version() == "TLSv1.3"
            else:
                with pytest.raises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname=host)


def test_sessions_authenticate_again_within_the_hour(infrastructure) -> None:
    """Without it, a session opened before a password was rotated stays in for ever."""
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.BROKER, "1")
    admin = infra.kafka_admin(infrastructure)  # kept: its futures die with it
    config = admin.describe_configs([resource])[resource].result()
    assert config["connections.max.reauth.ms"].value == str(infra.REAUTHENTICATE_MS)


def test_the_brokers_jvm_writes_no_perf_data(infrastructure) -> None:
    """`jps -m` read the broker's arguments, its password among them, from /tmp/hsperfdata_USER/PID."""
    broker = int(infra.Paths(infrastructure.state_dir).kafka_pid.read_text())
    assert not list(Path(tempfile.gettempdir()).glob(f"hsperfdata_*/{broker}"))
    secret = password(infrastructure, "broker").encode()
    for data in Path(tempfile.gettempdir()).glob("hsperfdata_*/*"):
        with contextlib.suppress(OSError):
            assert secret not in data.read_bytes(), data


def test_processes_the_launcher_starts_inherit_only_what_they_need(infrastructure, service_processes) -> None:
    pids = [*_processes_of(infrastructure), *(process.process.pid for process in service_processes.values())]
    for pid in pids:
        names = {
            entry.split(b"=", 1)[0].decode()
            for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if entry
        }
        assert {name for name in names if not name.startswith("GONGJI_")} <= infra.INHERITED_VARIABLES, pid


def test_the_cas_key_is_kept_apart_and_may_be_kept_offline(infrastructure, tmp_path) -> None:
    from gongji.ops.tls import CAKeyOffline, broker_keystore, ca_key_file, ensure_certificates

    assert ca_key_file(infrastructure).exists()
    assert not list(secrets_dir(infrastructure).glob("*ca-key*"))  # not beside the services' passwords
    assert stat.S_IMODE(ca_key_file(infrastructure).parent.stat().st_mode) == 0o700
    apart = Settings(state_dir=tmp_path)
    make_secrets_dir(apart)
    assert ensure_certificates(apart, {"127.0.0.1"})  # a CA and the broker's certificate
    offline = tmp_path / "offline-ca-key.pem"
    ca_key_file(apart).replace(offline)
    issued = broker_keystore(apart).read_bytes()
    assert ensure_certificates(apart, {"127.0.0.1"}) == []  # the certificate fits: no key needed, no new CA
    assert broker_keystore(apart).read_bytes() == issued
    with pytest.raises(CAKeyOffline, match="CA's key is not at"):
        ensure_certificates(apart, {"broker.example"})  # a new name needs the key
    offline.replace(ca_key_file(apart))
    assert ensure_certificates(apart, {"broker.example"}) == [
        "the broker's certificate for 127.0.0.1, broker.example, localhost"
    ]


async def test_a_service_tells_its_library_is_loaded_with_its_own_narrow_rights(infrastructure) -> None:
    from services.wallet.store import LIBRARY as WALLET_LIBRARY
    from shared.redis_client import connect
    from shared.redis_functions import Library, LibraryNotLoaded

    wallet = connect(infrastructure, "wallet")
    try:
        await WALLET_LIBRARY.require_loaded(wallet)
        elsewhere = Library("gongji_wallet", Path(__file__))  # another release: its source differs
        with pytest.raises(LibraryNotLoaded):
            await elsewhere.require_loaded(wallet)
    finally:
        await wallet.aclose()
