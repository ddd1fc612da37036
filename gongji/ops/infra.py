"""Starts and stops the real infrastructure on loopback: Apache Kafka (KRaft) from its Maven Central
jars and the OS's redis-server, each with its own port, data directory and pid file, secure by
default: TLS from a local CA, SCRAM users bootstrapped when the storage is formatted, the ACLs and
Redis users of shared/principals.py, and secrets that never appear in a process's arguments."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis
from aiokafka.errors import ClusterAuthorizationFailedError
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from gongji.ops.kafka_io import make_producer
from gongji.ops.quotas import sync_quotas
from gongji.ops.tls import CAKeyOffline, broker_keystore, ensure_certificates
from gongji.ops.window import keep_for_window, keep_seen_for_window
from services.relationship.store import LIBRARY as RELATIONSHIP_LIBRARY
from services.settlement.store import LIBRARY as SETTLEMENT_LIBRARY
from services.wallet.store import LIBRARY as WALLET_LIBRARY
from shared.clock import clock_from_settings
from shared.credentials import (
    SCRAM_MECHANISM,
    CredentialsMissing,
    ca_file,
    ensure_passwords,
    kafka_client_settings,
    new_password,
    password,
    redis_options,
    secrets_dir,
    set_password,
    write_secret,
)
from shared.principals import (
    BROKER,
    BY_NAME,
    OPERATOR,
    PRINCIPALS,
    SERVICES,
    KafkaRight,
    Principal,
    redis_acl_rules,
)
from shared.settings import PROJECT_ROOT, Settings
from shared.topics import ALL_TOPICS, PROVINCE_TOPICS, Topic
from shared.window import ClaimWindow, InputWindow

POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
JARS_LOCK = PROJECT_ROOT / "deploy" / "kafka" / "jars.sha256"
READY_TIMEOUT_SECONDS = 120
SCRAM_ITERATIONS = 8192
REAUTHENTICATE_MS = 3_600_000
# The JVM's perf data (hsperfdata, what `jps -m` reads) would hold the broker's arguments, its
# password among them, in a file other local users can read: it is not written.
JVM_OPTIONS = ("-XX:+PerfDisableSharedMem",)
FUNCTION_LIBRARIES = (RELATIONSHIP_LIBRARY, WALLET_LIBRARY, SETTLEMENT_LIBRARY)


class InfraError(RuntimeError):
    """An operating problem with one clear sentence that names the fix."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def kafka_libs(self) -> Path:
        return self.root / "kafka" / "libs"

    @property
    def kafka_data(self) -> Path:
        return self.root / "kafka" / "data"

    @property
    def kafka_config(self) -> Path:
        return self.root / "kafka" / "server.properties"

    @property
    def kafka_log(self) -> Path:
        return self.root / "kafka" / "broker.log"

    @property
    def kafka_pid(self) -> Path:
        return self.root / "kafka" / "broker.pid"

    @property
    def java_arguments(self) -> Path:
        """An @argfile: the Java launcher reads arguments that hold secrets from it, so that they
        never show in the process's command line. Written 0600, deleted once read."""
        return self.root / "secrets" / "java-arguments"

    @property
    def redis_users(self) -> Path:
        """Redis's ACL file: its users, with SHA-256 hashes of their passwords."""
        return self.root / "secrets" / "redis-users.acl"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_pid(self) -> Path:
        return self.root / "redis" / "redis.pid"

    @property
    def redis_log(self) -> Path:
        return self.root / "redis" / "redis.log"


# What a process the launcher starts (the broker, Redis, a service) inherits of its environment:
# what it needs to run, and Gongji's own settings; nothing else the operator's shell holds (tokens,
# other programs' passwords) is handed on.
INHERITED_VARIABLES = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "JAVA_HOME", "VIRTUAL_ENV"}
)


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    inherited = {
        name: value for name, value in os.environ.items() if name in INHERITED_VARIABLES or name.startswith("GONGJI_")
    }
    return {**inherited, **(extra or {})}


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def kafka_version(paths: Paths) -> str | None:
    """The broker's version, read from the kafka_2.13 jar that the launcher runs."""
    for jar in sorted(paths.kafka_libs.glob("kafka_2.13-*.jar")):
        return jar.stem.removeprefix("kafka_2.13-")
    return None


def _require(tool: str, fix: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise InfraError(f"`{tool}` was not found on PATH: {fix}")
    return found


def _locked_jars() -> dict[str, str]:
    """{jar name: its SHA-256}, from deploy/kafka/jars.sha256 (`sha256sum` lines; # comments)."""
    lines = [line.split() for line in JARS_LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {name: digest for digest, name in lines}


def kafka_jars_verified(paths: Paths) -> bool:
    """The libs folder holds exactly the locked jars, each with its locked hash: no jar missing,
    none added, none changed since it was fetched."""
    locked = _locked_jars()
    present = {jar.name: jar for jar in paths.kafka_libs.glob("*.jar")}
    return set(present) == set(locked) and all(
        hashlib.sha256(jar.read_bytes()).hexdigest() == locked[name] for name, jar in present.items()
    )


def fetch_kafka_jars(paths: Paths) -> None:
    if kafka_jars_verified(paths):
        return
    mvn = _require("mvn", "install Maven (e.g. `apt-get install maven`) so the Kafka jars can be fetched.")
    shutil.rmtree(paths.kafka_libs, ignore_errors=True)
    paths.kafka_libs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        # -C: a jar whose checksum differs from the one Maven Central publishes fails the fetch.
        [
            mvn,
            "-q",
            "-B",
            "-C",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={paths.kafka_libs}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        shutil.rmtree(paths.kafka_libs, ignore_errors=True)
        raise InfraError(f"Maven could not fetch Apache Kafka from Maven Central:\n{result.stdout}{result.stderr}")
    if not kafka_jars_verified(paths):
        shutil.rmtree(paths.kafka_libs, ignore_errors=True)
        raise InfraError(f"the jars Maven fetched differ from {JARS_LOCK.relative_to(PROJECT_ROOT)}: none is run")


def _write_kafka_config(settings: Settings, paths: Paths) -> None:
    paths.kafka_config.parent.mkdir(parents=True, exist_ok=True)
    paths.kafka_config.write_text(kafka_properties(settings, paths.kafka_data))


def kafka_properties(settings: Settings, data_dir: Path, listen_on: str | None = None) -> str:
    """The broker's configuration, one declaration for the launcher's broker and the container's
    (gongji/ops/docker.py): `listen_on` is the address it binds (the bootstrap host by default; a
    container binds every address, and clients reach it through its published port)."""
    host, port = _host_port(settings.kafka_bootstrap)
    bind = listen_on or host
    controller = f"{host}:{settings.kafka_controller_port}"
    listeners = {"CLIENT": (f"{host}:{port}", "SASL_SSL"), "CONTROLLER": (controller, "SSL")}
    if settings.kafka_plaintext_dev:
        listeners["DEV"] = (f"{host}:{settings.kafka_plaintext_dev_port}", "SASL_PLAINTEXT")
    advertised = [f"{name}://{address}" for name, (address, _) in listeners.items() if name != "CONTROLLER"]
    bound = [f"{name}://{bind}:{address.rpartition(':')[2]}" for name, (address, _) in listeners.items()]
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={controller}",
            f"listeners={','.join(bound)}",
            # The controller's listener is never advertised, so clients are never sent there.
            f"advertised.listeners={','.join(advertised)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=CLIENT",
            f"listener.security.protocol.map={','.join(f'{name}:{kind}' for name, (_, kind) in listeners.items())}",
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            # SCRAM servers need a login module per listener; the broker's own password comes
            # from the @argfile (see start_kafka).
            "listener.name.dev.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            # TLS from the local CA, as PEM files.
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={broker_keystore(settings)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={ca_file(settings)}",
            # The controller's listener takes only a client certificate signed by the local CA,
            # and only the broker holds one: a client (which holds the CA's certificate, not its
            # key) cannot even finish the handshake. Its certificate's CN is its principal.
            "listener.name.controller.ssl.client.auth=required",
            # TLS 1.3 only: its suites are all AEAD (1.2 still offers CBC ones), and every client
            # here (Python's ssl, librdkafka, Java 17) speaks it.
            "ssl.enabled.protocols=TLSv1.3",
            "ssl.protocol=TLSv1.3",
            # A SCRAM session authenticates again within the hour: a rotated or removed password
            # shuts its old sessions out then, instead of never (0, Kafka's default).
            f"connections.max.reauth.ms={REAUTHENTICATE_MS}",
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{BROKER.name};User:{OPERATOR.name}",
            f"log.dirs={data_dir}",
            # One local broker: internal topics cannot have more replicas than brokers.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Topics are created by the launcher with their partition counts; a typo must fail.
            "auto.create.topics.enable=false",
            "",
        ]
    )


def _write_java_arguments(paths: Paths, arguments: list[str]) -> str:
    """Writes arguments that hold secrets to the @argfile, one per line, each quoted (the
    launcher splits on white space outside quotes); returns the `@path` argument."""
    assert all("'" not in argument and "\\" not in argument for argument in arguments)
    paths.java_arguments.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(paths.java_arguments, "".join(f"'{argument}'\n" for argument in arguments).encode())
    return f"@{paths.java_arguments}"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return _require("java", "install a Java 17 runtime (e.g. `apt-get install openjdk-17-jre-headless`).")


def _scram(settings: Settings, principal: Principal) -> str:
    return (
        f"{SCRAM_MECHANISM}=[name={principal.name},password={password(settings, principal.name)},"
        f"iterations={SCRAM_ITERATIONS}]"
    )


def format_kafka_storage(java: str, paths: Paths, cluster_id: str, settings: Settings) -> None:
    """Formats the KRaft storage once, with every principal's SCRAM credentials in it (KIP-900):
    the broker authenticates from its very first start, with no window without users.
    `--cluster-id=` keeps an id that starts with '-' (one in 64 random ids) from being read as an option."""
    users = [argument for principal in PRINCIPALS for argument in ("--add-scram", _scram(settings, principal))]
    try:
        formatted = subprocess.run(
            [
                java,
                *JVM_OPTIONS,
                "-cp",
                f"{paths.kafka_libs}/*",
                _write_java_arguments(
                    paths,
                    [
                        "kafka.tools.StorageTool",
                        "format",
                        "--standalone",
                        f"--cluster-id={cluster_id}",
                        "-c",
                        str(paths.kafka_config),
                        *users,
                    ],
                ),
            ],
            capture_output=True,
            text=True,
            env=child_environment(),
        )
    finally:
        paths.java_arguments.unlink(missing_ok=True)
    if formatted.returncode != 0:
        # The tool's own sentence: its usage text comes before it, a Java stack trace after it.
        said = [
            line
            for line in (formatted.stderr or formatted.stdout).splitlines()
            if line.strip() and not line.lstrip().startswith("at ")
        ]
        raise InfraError(f"formatting Kafka's storage in {paths.kafka_data} failed: {said[-1] if said else '?'}")


def start_kafka(settings: Settings, paths: Paths) -> bool:
    """Start the broker unless ours is running; return True if it was started now."""
    host, port = _host_port(settings.kafka_bootstrap)
    if _pid_alive(paths.kafka_pid):
        return False
    if port_open(host, port):
        raise InfraError(f"port {port} is taken by another process: stop it or set GONGJI_KAFKA_BOOTSTRAP.")
    java = _java()
    fetch_kafka_jars(paths)
    _write_kafka_config(settings, paths)
    classpath = f"{paths.kafka_libs}/*"
    if not (paths.kafka_data / "meta.properties").exists():
        format_kafka_storage(java, paths, base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="), settings)
    broker_login = (
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER.name}" password="{password(settings, BROKER.name)}";'
    )
    arguments = _write_java_arguments(paths, ["kafka.Kafka", str(paths.kafka_config), "--override", broker_login])
    log = paths.kafka_log.open("ab")
    process = subprocess.Popen(
        [
            java,
            *JVM_OPTIONS,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-cp",
            classpath,
            arguments,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=child_environment(),
        umask=0o077,  # its data is personal data: only its owner reads the files it writes
    )
    paths.kafka_pid.write_text(str(process.pid))
    return True


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return _require("redis-server", "install it with `apt-get install redis-server`.")


def _hashed(secret: str) -> str:
    """A password as Redis keeps it (`#<sha256>`): its ACL file never holds the password itself."""
    return f"#{hashlib.sha256(secret.encode()).hexdigest()}"


# No one can log in as the default user (`off`, no password), yet it keeps every right: Redis 7.0
# replays the AOF's transactions — every Function's writes — checking each command against the
# default user's rights, so a default user without them would lose those writes at every restart.
REDIS_DEFAULT_USER = ("off", "resetpass", "~*", "&*", "+@all")


def _redis_user_line(settings: Settings, principal: Principal) -> str:
    """One user of the ACL file: its rules and its hashed password."""
    assert principal.redis is not None
    return " ".join(
        ["user", principal.name, *redis_acl_rules(principal.redis), _hashed(password(settings, principal.name))]
    )


def _redis_address(settings: Settings) -> tuple[str, int]:
    kwargs = redis.Redis.from_url(settings.redis_url).connection_pool.connection_kwargs
    return kwargs["host"], kwargs["port"]


def start_redis(settings: Settings, paths: Paths) -> bool:
    host, port = _redis_address(settings)
    if _pid_alive(paths.redis_pid):
        return False
    if port_open(host, port):
        raise InfraError(f"port {port} is taken by another process: stop it or set GONGJI_REDIS_URL.")
    server = _redis_server()
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    write_redis_users(settings, paths)
    process = subprocess.Popen(
        [
            server,
            *redis_arguments(host, port, paths.redis_dir, paths.redis_users),
            "--logfile",
            str(paths.redis_log),
            "--daemonize",
            "no",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_environment(),
        start_new_session=True,
        umask=0o077,  # its data and its ACL file (rewritten by ACL SAVE) stay 0600
    )
    paths.redis_pid.write_text(str(process.pid))
    return True


def write_redis_users(settings: Settings, paths: Paths) -> None:
    """Redis's users, once: no anonymous access from the first moment (the default user is off)."""
    if not paths.redis_users.exists():
        users = [_redis_user_line(settings, principal) for principal in PRINCIPALS if principal.redis]
        write_secret(
            paths.redis_users, "\n".join([" ".join(["user", "default", *REDIS_DEFAULT_USER]), *users, ""]).encode()
        )


def redis_arguments(bind: str, port: int, data_dir: Path, users_file: Path, protected_mode: bool = True) -> list[str]:
    """redis-server's settings, one declaration for the launcher's Redis and the container's: every
    write on disk before it is answered, the declared users only. A container is reached through
    its published port, from beyond its loopback: protected mode (loopback only) is off there, and
    the default user, off, and every user's password keep it closed."""
    return [
        "--bind", bind, "--port", str(port), "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--aclfile", str(users_file), "--save", "",
        "--protected-mode", "yes" if protected_mode else "no",
        # A whole day of records (a day's claims, the ids counted that day) expires as one key: freed
        # in the background, so that Redis never stops to free it.
        "--lazyfree-lazy-expire", "yes",
    ]  # fmt: skip


def redis_memory_config(settings: Settings) -> dict[str, str]:
    """A bound on Redis's memory, and writes refused (OOM) at the bound rather than keys evicted:
    an evicted key would be a lost balance or a forgotten claim id. The services retry a refused
    write until there is room (nothing is lost), their `/health` turns 503, and `gongji infra
    status` warns from REDIS_MEMORY_WARNING of the bound on."""
    return {"maxmemory": str(settings.redis_max_memory_bytes), "maxmemory-policy": "noeviction"}


REDIS_MEMORY_WARNING = 0.8


def redis_memory(client: redis.Redis) -> tuple[int, int]:
    """(bytes used, the bound)."""
    info = client.info("memory")
    return int(info["used_memory"]), int(info["maxmemory"])


def operator_redis(settings: Settings, **options) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **redis_options(settings, OPERATOR.name), **options)


def _wait_for_redis(settings: Settings, deadline: float) -> redis.Redis:
    client = operator_redis(settings, socket_timeout=5)
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return client
        except redis.exceptions.AuthenticationError:
            raise InfraError(
                "Redis refuses the operator's credentials: it was started without Gongji's users "
                "(before security?) — `gongji infra down && gongji infra up`"
            ) from None
        except redis.exceptions.RedisError:
            time.sleep(0.2)
    raise InfraError(f"Redis did not answer within {READY_TIMEOUT_SECONDS}s; see {Paths(settings.state_dir).redis_log}")


def sync_redis_users(settings: Settings, client: redis.Redis) -> None:
    """Makes Redis's users exactly the declared ones (rules and current passwords), and saves them
    to the ACL file: a right taken out of the declaration is taken out of Redis too."""
    declared = {principal.name: principal for principal in PRINCIPALS if principal.redis}
    for principal in declared.values():
        client.execute_command(
            "ACL",
            "SETUSER",
            principal.name,
            *redis_acl_rules(principal.redis),
            "resetpass",
            _hashed(password(settings, principal.name)),
        )
    client.execute_command("ACL", "SETUSER", "default", *REDIS_DEFAULT_USER)
    for name in client.execute_command("ACL", "USERS"):
        if name.decode() not in declared and name.decode() != "default":
            client.execute_command("ACL", "DELUSER", name)
    client.execute_command("ACL", "SAVE")


def load_functions(client: redis.Redis) -> None:
    """The operator loads every service's Redis Functions library: a service's own user may call
    functions but never load one (FUNCTION LOAD could replace another service's library)."""
    for library in FUNCTION_LIBRARIES:
        client.function_load(library.source, replace=True)


def _librdkafka_log() -> logging.Logger:
    quiet = logging.getLogger("gongji.ops.infra.librdkafka")
    quiet.setLevel(logging.CRITICAL)  # refused connections while the broker starts; the deadline reports failure
    return quiet


def kafka_admin(settings: Settings) -> AdminClient:
    """The operator's admin client (librdkafka: aiokafka has no API for ACLs or SCRAM users)."""
    options = kafka_client_settings(settings, OPERATOR.name)
    return AdminClient(
        {
            "bootstrap.servers": options["bootstrap_servers"],
            "security.protocol": options["security_protocol"],
            "sasl.mechanism": options["sasl_mechanism"],
            "sasl.username": options["sasl_plain_username"],
            "sasl.password": options["sasl_plain_password"],
            "ssl.ca.location": options["ssl_cafile"],
            "logger": _librdkafka_log(),
        }
    )


def _wait_for_kafka(settings: Settings, admin: AdminClient, deadline: float) -> None:
    while True:
        try:
            admin.list_topics(timeout=5)
            return
        except KafkaException as error:
            if error.args[0].code() == KafkaError._AUTHENTICATION:
                raise InfraError(
                    "Kafka refuses the operator's credentials: its data may predate security or "
                    "the secrets were replaced — `gongji infra reset`"
                ) from None
            if time.monotonic() > deadline:
                raise InfraError(
                    f"Kafka did not answer within {READY_TIMEOUT_SECONDS}s; see {Paths(settings.state_dir).kafka_log}"
                ) from None


def _settle(futures: dict, tolerated: tuple[int, ...] = ()) -> None:
    for future in futures.values():
        try:
            future.result()
        except KafkaException as error:
            if error.args[0].code() not in tolerated:
                raise


def topic_config(topic: Topic, settings: Settings) -> dict[str, str]:
    # The topics are the books the deep audit rebuilds: kept for good, or as long as set.
    days = settings.books_retention_days
    config = {"retention.ms": str(days * 86_400_000) if days else "-1"}
    if topic.max_message_bytes is not None:
        config["max.message.bytes"] = str(topic.max_message_bytes)
    return config


def create_topics(settings: Settings, admin: AdminClient) -> None:
    """The national topics and every province's own, each with its partition count and its
    configuration (set again on the topics that exist: a release may change it)."""
    topics = (*ALL_TOPICS, *PROVINCE_TOPICS)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [
        NewTopic(
            topic.name,
            topic.partitions(settings),
            settings.topic_replication_factor,
            config=topic_config(topic, settings),
        )
        for topic in topics
        if topic.name not in existing
    ]
    if missing:
        _settle(admin.create_topics(missing, request_timeout=30), tolerated=(KafkaError.TOPIC_ALREADY_EXISTS,))
    configured = [
        ConfigResource(
            ResourceType.TOPIC,
            topic.name,
            incremental_configs=[
                ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
                for name, value in topic_config(topic, settings).items()
            ],
        )
        for topic in topics
        if topic.name in existing
    ]
    if configured:
        _settle(admin.incremental_alter_configs(configured, request_timeout=30))


def ensure_scram_users(settings: Settings, admin: AdminClient) -> None:
    """Principals declared after the storage was formatted get their SCRAM credentials now."""
    known = set()
    for name, future in admin.describe_user_scram_credentials([p.name for p in PRINCIPALS]).items():
        try:
            if future.result().scram_credential_infos:
                known.add(name)
        except KafkaException:  # RESOURCE_NOT_FOUND: no credentials for that user yet
            pass
    missing = {p.name: password(settings, p.name) for p in PRINCIPALS if p.name not in known}
    if missing:
        set_scram_passwords(admin, missing)


def set_scram_passwords(admin: AdminClient, passwords: dict[str, str]) -> None:
    _settle(
        admin.alter_user_scram_credentials(
            [
                UserScramCredentialUpsertion(
                    name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS), value.encode()
                )
                for name, value in passwords.items()
            ]
        )
    )


def _binding(principal: str, right: KafkaRight) -> AclBinding:
    return AclBinding(
        ResourceType.GROUP if right.resource == "group" else ResourceType.TOPIC,
        right.name,
        ResourcePatternType.PREFIXED if right.prefixed else ResourcePatternType.LITERAL,
        f"User:{principal}",
        "*",
        AclOperation.WRITE if right.operation == "write" else AclOperation.READ,
        AclPermissionType.ALLOW,
    )


def declared_acls() -> set[AclBinding]:
    return {_binding(principal.name, right) for principal in PRINCIPALS for right in principal.kafka}


def sync_acls(admin: AdminClient) -> tuple[int, int]:
    """Makes the broker's ACLs exactly the declared ones; returns (created, deleted)."""
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    existing = set(admin.describe_acls(everything, request_timeout=30).result())
    declared = declared_acls()
    missing, extra = declared - existing, existing - declared
    if missing:
        _settle(admin.create_acls(list(missing), request_timeout=30))
    if extra:
        _settle(
            admin.delete_acls(
                [
                    AclBindingFilter(
                        binding.restype,
                        binding.name,
                        binding.resource_pattern_type,
                        binding.principal,
                        binding.host,
                        binding.operation,
                        binding.permission_type,
                    )
                    for binding in extra
                ],
                request_timeout=30,
            )
        )
    return len(missing), len(extra)


def rotate(settings: Settings, name: str) -> list[str]:
    """A new password for a principal: set on the running broker (SCRAM, through the admin API) and
    in Redis (ACL SETUSER), then kept. The new one waits in a file of its own until both have it,
    so that a rotation cut short can be run again and finish with the same password."""
    pending = secrets_dir(settings) / f"{name}.password.next"
    if not pending.exists():
        write_secret(pending, new_password().encode())
    value = pending.read_text().strip()
    set_scram_passwords(kafka_admin(settings), {name: value})
    notes = [f"Kafka: {name}'s SCRAM password changed"]
    if BY_NAME[name].redis is not None:
        with operator_redis(settings) as client:
            client.execute_command("ACL", "SETUSER", name, "resetpass", _hashed(value))
            client.execute_command("ACL", "SAVE")
        notes.append(f"Redis: {name}'s password changed")
    set_password(settings, name, value)
    pending.unlink()
    return notes


def up(settings: Settings) -> list[str]:
    """Idempotent: makes the secrets and certificates that are missing, starts what is not running,
    waits until both answer, then makes the topics, users, ACLs and Functions what the code declares."""
    paths = Paths(settings.state_dir)
    notes = []
    if made := ensure_passwords(settings):
        notes.append(f"generated credentials for {len(made)} principals")
    try:
        notes += [f"made {what}" for what in ensure_certificates(settings, _host_port(settings.kafka_bootstrap)[0])]
    except CAKeyOffline as error:
        raise InfraError(str(error)) from None
    if start_redis(settings, paths):
        notes.append("started redis-server")
    try:
        if start_kafka(settings, paths):
            notes.append(f"started Apache Kafka {kafka_version(paths)} (KRaft, SASL_SSL)")
        return notes + configure(settings)
    finally:
        paths.java_arguments.unlink(missing_ok=True)  # read by the launcher at start


def configure(settings: Settings) -> list[str]:
    """Once both answer (the launcher's, or the containers'): Redis's memory bound, users and
    Functions, and Kafka's topics, SCRAM users, ACLs and quotas, as the code declares them."""
    notes = []
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    client = _wait_for_redis(settings, deadline)
    for name, value in redis_memory_config(settings).items():  # on any Redis, one an earlier release started too
        client.config_set(name, value)
    sync_redis_users(settings, client)
    load_functions(client)
    now = clock_from_settings(settings).now()
    if kept := keep_for_window(client, ClaimWindow.from_settings(settings), now):
        notes.append(f"the claim window grew: {kept} keys of claims' days kept for it")
    if kept := keep_seen_for_window(client, InputWindow.from_settings(settings)):
        notes.append(f"the input window: {kept} keys of seen ids kept for it (grown, or first kept by a generation)")
    client.close()
    admin = kafka_admin(settings)
    _wait_for_kafka(settings, admin, deadline)
    create_topics(settings, admin)
    ensure_scram_users(settings, admin)
    created, deleted = sync_acls(admin)
    if created or deleted:
        notes.append(f"ACLs: {created} created, {deleted} removed")
    # Its own loop in its own thread: `up` is called from event loops too (tests restarting Redis).
    with ThreadPoolExecutor(1) as apart:
        apart.submit(asyncio.run, sync_quotas(settings)).result()
        apart.submit(asyncio.run, _until_services_are_authorized(settings, deadline)).result()
    return notes


async def _until_services_are_authorized(settings: Settings, deadline: float) -> None:
    """ACLs reach the broker's authorizer a moment after the admin API has accepted them: a service
    started in that moment had its idempotent producer refused (ClusterAuthorizationFailed) and
    stopped. Ready means each service's producer is accepted."""
    for principal in SERVICES:
        while True:
            producer = make_producer(settings, principal.name)
            try:
                await producer.start()
                break
            except ClusterAuthorizationFailedError:
                if time.monotonic() > deadline:
                    raise InfraError(
                        f"Kafka did not authorize {principal.name} within {READY_TIMEOUT_SECONDS}s "
                        "of its ACLs being made"
                    ) from None
                await asyncio.sleep(0.2)
            finally:
                await producer.stop()


def stop(pid_file: Path, name: str) -> str | None:
    pid = _pid_alive(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child (a test session started it) is reaped, not left a zombie
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"stopped {name}"
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return f"killed {name} (it did not stop within 30s)"


def running_pids(settings: Settings) -> dict[str, int]:
    """The process ids of the broker and Redis that this launcher started and that still run."""
    paths = Paths(settings.state_dir)
    found = {"kafka": _pid_alive(paths.kafka_pid), "redis": _pid_alive(paths.redis_pid)}
    return {name: pid for name, pid in found.items() if pid is not None}


def down(settings: Settings) -> list[str]:
    """Stops only the processes this launcher started (from their pid files)."""
    paths = Paths(settings.state_dir)
    return [note for note in (stop(paths.kafka_pid, "Kafka"), stop(paths.redis_pid, "Redis")) if note]


def reset(settings: Settings) -> list[str]:
    """Stops both and deletes their data (the cached jars stay)."""
    notes = down(settings)
    paths = Paths(settings.state_dir)
    shutil.rmtree(paths.kafka_data, ignore_errors=True)
    shutil.rmtree(paths.redis_dir, ignore_errors=True)
    return [*notes, "deleted Kafka and Redis data"]


def status(settings: Settings) -> dict[str, str]:
    paths = Paths(settings.state_dir)
    kafka_host, kafka_port = _host_port(settings.kafka_bootstrap)
    report = {
        "kafka": f"Apache Kafka {kafka_version(paths) or '(jars not fetched)'} (KRaft) at {settings.kafka_bootstrap}: "
        + ("running" if _pid_alive(paths.kafka_pid) and port_open(kafka_host, kafka_port) else "not running"),
    }
    try:
        client = operator_redis(settings, socket_timeout=1)
        used, bound = redis_memory(client)
        report["redis"] = (
            f"Redis {client.info('server')['redis_version']} at {settings.redis_url}: running, "
            f"memory {used / 2**20:,.0f} MiB of {bound / 2**20:,.0f} MiB"
        )
        if used >= REDIS_MEMORY_WARNING * bound:
            report["redis_memory"] = (
                f"WARNING: Redis uses {used / bound:.0%} of its memory bound; at 100% every "
                "write is refused and the services stop until there is room "
                "(raise GONGJI_REDIS_MAX_MEMORY_BYTES, or add memory)"
            )
    except (redis.exceptions.RedisError, CredentialsMissing):
        report["redis"] = f"Redis at {settings.redis_url}: not running"
    return report
