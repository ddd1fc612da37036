"""Starts and stops the real infrastructure on loopback: Apache Kafka (KRaft) from its Maven Central
jars and the OS's redis-server, each with its own port, data directory and pid file, secure by
default: TLS from a local CA, SCRAM users bootstrapped when the storage is formatted, the ACLs and
Redis users of shared/principals.py, and secrets that never appear in a process's arguments."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
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

from gongji.ops.groups import OldReleaseRunning, adopt_service_group_offsets, forget_service_groups
from gongji.ops.kafka_io import make_producer
from gongji.ops.quotas import sync_quotas
from gongji.ops.tls import CAKeyOffline, broker_keystore, ensure_certificates, redis_keystore
from gongji.ops.window import keep_for_window, keep_seen_for_window
from services.relationship.store import LIBRARY as RELATIONSHIP_LIBRARY
from services.settlement.store import LIBRARY as SETTLEMENT_LIBRARY
from services.wallet.store import LIBRARY as WALLET_LIBRARY
from shared.clock import clock_from_settings
from shared.credentials import (
    SCRAM_MECHANISM,
    CredentialsMissing,
    SecretFileCredentials,
    ca_file,
    ensure_passwords,
    librdkafka_options,
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
    KAFKA_USERS,
    OPERATOR,
    PRINCIPALS,
    REPLICA,
    SERVICES,
    KafkaRight,
    Principal,
    redis_acl_rules,
)
from shared.settings import LOCAL_KAFKA_CLUSTER, LOCAL_REDIS_CLUSTER, PROJECT_ROOT, REDIS_REPLICAS_PER_PRIMARY, Settings
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


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node the launcher runs (broker and controller in one process): its addresses and files."""

    node_id: int
    host: str
    port: int
    controller_port: int
    data: Path
    config: Path
    log: Path
    pid: Path

    @property
    def controller(self) -> str:
        return f"{self.host}:{self.controller_port}"


@dataclass(frozen=True)
class RedisNode:
    """One redis-server the launcher runs: its address, its files, and whether it is a Redis Cluster
    node (TLS on every link, and its replication password in a 0600 configuration file)."""

    host: str
    port: int
    dir: Path
    users: Path
    in_cluster: bool = False

    @property
    def pid(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    @property
    def secret_config(self) -> Path:
        """Its `masterauth` (a cluster node's): redis-users-N.acl's neighbour redis-node-N.conf."""
        return self.users.with_name(self.users.name.replace("users", "node").replace(".acl", ".conf"))


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    """The single node, or the three of `--cluster` (each in `cluster/kafka-N`; controller port =
    client port + 100)."""
    paths = Paths(settings.state_dir)
    if not settings.cluster:
        host, port = _host_port(settings.kafka_bootstrap)
        return [
            KafkaNode(
                1, host, port, settings.kafka_controller_port,
                paths.kafka_data, paths.kafka_config, paths.kafka_log, paths.kafka_pid,
            )
        ]  # fmt: skip
    nodes = []
    for node_id, address in enumerate(LOCAL_KAFKA_CLUSTER, 1):
        host, port = _host_port(address)
        root = paths.root / "cluster" / f"kafka-{node_id}"
        nodes.append(
            KafkaNode(
                node_id, host, port, port + 100,
                root / "data", root / "server.properties", root / "broker.log", root / "broker.pid",
            )
        )  # fmt: skip
    return nodes


def redis_nodes(settings: Settings) -> list[RedisNode]:
    """The single Redis, or the nine nodes of `--cluster` (each in `cluster/redis-N`)."""
    paths = Paths(settings.state_dir)
    if not settings.cluster:
        return [RedisNode(*_redis_address(settings), paths.redis_dir, paths.redis_users)]
    return [
        RedisNode(
            *_host_port(address),
            paths.root / "cluster" / f"redis-{index}",
            paths.root / "secrets" / f"redis-users-{index}.acl",
            in_cluster=True,
        )
        for index, address in enumerate(LOCAL_REDIS_CLUSTER, 1)
    ]


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


def pid_alive(pid_file: Path) -> int | None:
    """The pid in the file if that process runs. A killed child of ours stays a zombie until it is
    reaped, and signal 0 still reaches a zombie: read its state, and reap it so it can be restarted."""
    try:
        pid = int(pid_file.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
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


OFFSETS_RETENTION_MINUTES = 10 * 366 * 24 * 60


def kafka_properties(settings: Settings, node: KafkaNode, quorum: list[KafkaNode], listen_on: str | None = None) -> str:
    """A node's configuration, one declaration for the launcher's nodes and the container's
    (gongji/ops/docker.py): `listen_on` is the address it binds (its host by default; a container
    binds every address, and clients reach it through its published port). `quorum`: every
    controller, itself included."""
    bind = listen_on or node.host
    listeners = {"CLIENT": (f"{node.host}:{node.port}", "SASL_SSL"), "CONTROLLER": (node.controller, "SSL")}
    if settings.kafka_plaintext_dev:
        listeners["DEV"] = (f"{node.host}:{settings.kafka_plaintext_dev_port}", "SASL_PLAINTEXT")
    advertised = [f"{name}://{address}" for name, (address, _) in listeners.items() if name != "CONTROLLER"]
    bound = [f"{name}://{bind}:{address.rpartition(':')[2]}" for name, (address, _) in listeners.items()]
    replicas, in_sync = settings.topic_replication_factor, settings.topic_min_insync_replicas
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.bootstrap.servers={','.join(one.controller for one in quorum)}",
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
            # and only the brokers hold one: a client (which holds the CA's certificate, not its
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
            f"log.dirs={node.data}",
            # Every topic, the internal ones too, on `replicas` nodes, `in_sync` of them holding a
            # write before it is confirmed; a replica that fell behind never becomes leader (it
            # would drop confirmed records).
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={in_sync}",
            "unclean.leader.election.enable=false",
            f"offsets.topic.replication.factor={replicas}",
            "offsets.topic.num.partitions=12",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={in_sync}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={in_sync}",
            "group.initial.rebalance.delay.ms=0",
            # A group's offsets are kept while its service is stopped, however long: Kafka drops an
            # empty group's after 7 days, and the group would then read its topics from the
            # beginning, paying again a claim older than the window Redis keeps its id for.
            f"offsets.retention.minutes={OFFSETS_RETENTION_MINUTES}",
            # A node that stops heartbeating to the controllers is fenced, and its partitions led
            # elsewhere, after 3 s instead of 9 (Kafka's default): the broker fault's gap.
            "broker.heartbeat.interval.ms=1000",
            "broker.session.timeout.ms=3000",
            # A consumer may ask for a session this short (GONGJI_CONSUMER_SESSION_TIMEOUT_MS): a
            # crashed service instance's partitions move to the others within seconds.
            "group.min.session.timeout.ms=1000",
            # Topics are created by the launcher with their partition counts; a typo must fail.
            "auto.create.topics.enable=false",
            "",
        ]
    )


def _write_java_arguments(paths: Paths, arguments: list[str], node_id: int = 0) -> str:
    """Writes arguments that hold secrets to an @argfile of the node's own (each JVM reads its own
    as it starts), one per line, each quoted (the launcher splits on white space outside quotes);
    returns the `@path` argument."""
    assert all("'" not in argument and "\\" not in argument for argument in arguments)
    paths.java_arguments.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    argfile = paths.java_arguments.with_name(f"{paths.java_arguments.name}-{node_id}")
    write_secret(argfile, "".join(f"'{argument}'\n" for argument in arguments).encode())
    return f"@{argfile}"


def _forget_java_arguments(paths: Paths) -> None:
    for argfile in paths.java_arguments.parent.glob(f"{paths.java_arguments.name}-*"):
        argfile.unlink(missing_ok=True)


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


def format_kafka_storage(
    java: str, paths: Paths, node: KafkaNode, cluster_id: str, settings: Settings, initial_controllers: str | None
) -> None:
    """Formats a node's KRaft storage once, with every principal's SCRAM credentials in it
    (KIP-900): the brokers authenticate from their very first start, with no window without users.
    One node is its own quorum (`--standalone`); the cluster's are formatted with the same
    `initial_controllers` (id@host:port:directory-id of each). `--cluster-id=` keeps an id that
    starts with '-' (one in 64 random ids) from being read as an option."""
    users = [argument for principal in KAFKA_USERS for argument in ("--add-scram", _scram(settings, principal))]
    quorum = ["--standalone"] if initial_controllers is None else [f"--initial-controllers={initial_controllers}"]
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
                        *quorum,
                        f"--cluster-id={cluster_id}",
                        "-c",
                        str(node.config),
                        *users,
                    ],
                ),
            ],
            capture_output=True,
            text=True,
            env=child_environment(),
        )
    finally:
        _forget_java_arguments(paths)
    if formatted.returncode != 0:
        # The tool's own sentence: its usage text comes before it, a Java stack trace after it.
        said = [
            line
            for line in (formatted.stderr or formatted.stdout).splitlines()
            if line.strip() and not line.lstrip().startswith("at ")
        ]
        raise InfraError(f"formatting Kafka's storage in {node.data} failed: {said[-1] if said else '?'}")


def _kafka_uuid() -> str:
    """A Kafka Uuid as its tools write it: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _format_new_nodes(java: str, settings: Settings, paths: Paths, nodes: list[KafkaNode]) -> None:
    """Formats the nodes whose storage is new. A quorum is formatted whole or not at all: a node
    formatted apart would not know the others' directory ids."""
    new = [node for node in nodes if not (node.data / "meta.properties").exists()]
    # The voters' addresses are written into the storage when it is formatted: nodes now declared
    # at other addresses would look for a quorum that is not there.
    quorum, formed = nodes[0].data.parent.parent / "kafka-quorum", ",".join(node.controller for node in nodes)
    if not new:
        if len(nodes) > 1 and (not quorum.exists() or quorum.read_text() != formed):
            raise InfraError(
                f"the Kafka nodes in {quorum.parent} were formatted for other addresses than {formed} "
                "(by an older Gongji): `gongji infra reset` starts them afresh"
            )
        return
    if len(new) != len(nodes):
        raise InfraError(
            f"Kafka nodes {[node.node_id for node in new]} have no storage while the others do: "
            "`gongji infra reset` and start again"
        )
    cluster_id = _kafka_uuid()
    initial = None
    if len(nodes) > 1:
        initial = ",".join(f"{node.node_id}@{node.controller}:{_kafka_uuid()}" for node in nodes)
    for node in nodes:
        format_kafka_storage(java, paths, node, cluster_id, settings, initial)
    if len(nodes) > 1:
        quorum.write_text(formed)


def start_kafka(settings: Settings, paths: Paths) -> list[int]:
    """Starts every node of the settings' Kafka (one, or the cluster's three) that is not running;
    returns the ids of those started now."""
    nodes = kafka_nodes(settings)
    waiting = [node for node in nodes if not pid_alive(node.pid)]
    if not waiting:
        return []
    for node in waiting:
        if port_open(node.host, node.port):
            raise InfraError(f"port {node.port} is taken by another process: stop it or set GONGJI_KAFKA_BOOTSTRAP.")
    java = _java()
    fetch_kafka_jars(paths)
    for node in nodes:
        node.config.parent.mkdir(parents=True, exist_ok=True)
        node.config.write_text(kafka_properties(settings, node, nodes))
    _format_new_nodes(java, settings, paths, nodes)
    broker_login = (
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER.name}" password="{password(settings, BROKER.name)}";'
    )
    for node in waiting:
        arguments = _write_java_arguments(
            paths, ["kafka.Kafka", str(node.config), "--override", broker_login], node.node_id
        )
        process = subprocess.Popen(
            [
                java,
                *JVM_OPTIONS,
                "-Xms256m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                "-cp",
                f"{paths.kafka_libs}/*",
                arguments,
            ],
            stdout=node.log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_environment(),
            umask=0o077,  # its data is personal data: only its owner reads the files it writes
        )
        node.pid.write_text(str(process.pid))
    return [node.node_id for node in waiting]


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


def start_redis(settings: Settings) -> int:
    """Starts every node of the settings' Redis (one, or the cluster's nine) that is not running;
    returns how many were started now."""
    waiting = [node for node in redis_nodes(settings) if not pid_alive(node.pid)]
    for node in waiting:
        if port_open(node.host, node.port):
            raise InfraError(f"port {node.port} is taken by another process: stop it or set GONGJI_REDIS_URL.")
    if not waiting:
        return 0
    server = _redis_server()
    for node in waiting:
        node.dir.mkdir(parents=True, exist_ok=True)
        write_redis_users(settings, node.users, node.in_cluster)
        secret_config = []
        if node.in_cluster:
            # A replica logs in to its primary as `replica`; its password is read from a 0600
            # file, never from the process's arguments.
            write_secret(node.secret_config, f'masterauth "{password(settings, REPLICA.name)}"\n'.encode())
            secret_config = [str(node.secret_config)]
        process = subprocess.Popen(
            [
                server,
                *secret_config,
                *redis_arguments(node.host, node.port, node.dir, node.users),
                *(cluster_node_arguments(settings, node.port) if node.in_cluster else []),
                "--logfile",
                str(node.log),
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
        node.pid.write_text(str(process.pid))
    return len(waiting)


def write_redis_users(settings: Settings, users_file: Path, in_cluster: bool = False) -> None:
    """Redis's users, once: no anonymous access from the first moment (the default user is off)."""
    if not users_file.exists():
        users = [_redis_user_line(settings, principal) for principal in _redis_principals(in_cluster).values()]
        write_secret(users_file, "\n".join([" ".join(["user", "default", *REDIS_DEFAULT_USER]), *users, ""]).encode())


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


# How long a Redis Cluster primary may be silent before its replica takes over: the longest a
# primary's slots go unanswered after it dies is about this plus an election (a second or two).
REDIS_CLUSTER_NODE_TIMEOUT_MS = 3000


def cluster_node_arguments(settings: Settings, port: int) -> list[str]:
    """What makes a redis-server a node of the cluster: its nodes would sit on different hosts, so
    clients, replication and the cluster bus all speak TLS 1.3 (the bus and replication mutual TLS,
    with the nodes' certificate from the local CA; clients present none and log in as their ACL
    user), the plain port is closed, and a replica logs in to its primary as `replica`."""
    return [
        # After redis_arguments: these take the place of its plain port.
        "--tls-port", str(port), "--port", "0",
        "--tls-cert-file", str(redis_keystore(settings)), "--tls-key-file", str(redis_keystore(settings)),
        "--tls-ca-cert-file", str(ca_file(settings)),
        "--tls-auth-clients", "optional", "--tls-replication", "yes", "--tls-cluster", "yes",
        "--tls-protocols", "TLSv1.3",
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(REDIS_CLUSTER_NODE_TIMEOUT_MS),
        "--masteruser", REPLICA.name,
    ]  # fmt: skip


def redis_memory_config(settings: Settings) -> dict[str, str]:
    """A bound on Redis's memory, and writes refused (OOM) at the bound rather than keys evicted:
    an evicted key would be a lost balance or a forgotten claim id. The services retry a refused
    write until there is room (nothing is lost), their `/health` turns 503, and `gongji infra
    status` warns from REDIS_MEMORY_WARNING of the bound on."""
    return {"maxmemory": str(settings.redis_max_memory_bytes), "maxmemory-policy": "noeviction"}


REDIS_MEMORY_WARNING = 0.8


def redis_memory(client: redis.Redis | redis.RedisCluster) -> tuple[int, int]:
    """(bytes used, the bound) of the node nearest its bound: on a cluster, a full node refuses the
    writes of its slots whatever the others hold."""
    if isinstance(client, redis.RedisCluster):
        infos = list(client.info("memory", target_nodes=redis.RedisCluster.ALL_NODES).values())
    else:
        infos = [client.info("memory")]
    fullest = max(infos, key=lambda info: int(info["used_memory"]) / max(1, int(info["maxmemory"])))
    return int(fullest["used_memory"]), int(fullest["maxmemory"])


def _server_version(client: redis.Redis | redis.RedisCluster) -> str:
    if isinstance(client, redis.RedisCluster):
        return client.info("server", target_nodes=redis.RedisCluster.RANDOM)["redis_version"]
    return client.info("server")["redis_version"]


def operator_redis(settings: Settings, **options) -> redis.Redis | redis.RedisCluster:
    """The operator's client of the settings' Redis: a Redis Cluster client on a cluster."""
    kind = redis.RedisCluster if settings.cluster else redis.Redis
    return kind.from_url(settings.redis_url, **redis_options(settings, OPERATOR.name), **options)


def node_redis(settings: Settings, node: RedisNode, **options) -> redis.Redis:
    """The operator's client of one node (users, memory and the cluster's shape are per node)."""
    tls = {"ssl": True, "ssl_ca_certs": str(ca_file(settings))} if node.in_cluster else {}
    return redis.Redis(
        node.host, node.port, credential_provider=SecretFileCredentials(settings, OPERATOR.name), **tls, **options
    )


def _wait_for_redis_node(settings: Settings, node: RedisNode, deadline: float) -> redis.Redis:
    client = node_redis(settings, node, socket_timeout=5)
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
    raise InfraError(f"Redis at {node.host}:{node.port} did not answer within {READY_TIMEOUT_SECONDS}s; see {node.log}")


def _redis_principals(in_cluster: bool) -> dict[str, Principal]:
    """The users of a node: a single Redis has no replica, and so no `replica` user."""
    return {one.name: one for one in PRINCIPALS if one.redis is not None and (in_cluster or one.name != REPLICA.name)}


def sync_redis_users(settings: Settings, client: redis.Redis, in_cluster: bool = False) -> None:
    """Makes Redis's users exactly the declared ones (rules and current passwords), and saves them
    to the ACL file: a right taken out of the declaration is taken out of Redis too."""
    declared = _redis_principals(in_cluster)
    for principal in declared.values():
        assert principal.redis is not None
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


def form_redis_cluster(settings: Settings, nodes: list[RedisNode], deadline: float) -> bool:
    """Joins the nodes into a cluster of three primaries with two replicas each (`redis-cli
    --cluster create`), unless they are one already; waits until every node says it is ok.
    Returns True if it was formed now."""
    with node_redis(settings, nodes[0]) as first:
        info = first.cluster("INFO")
    formed = int(info.get("cluster_slots_assigned", 0)) > 0
    if formed and int(info["cluster_known_nodes"]) < len(nodes):
        raise InfraError(
            f"the Redis Cluster in {nodes[0].dir.parent} has {info['cluster_known_nodes']} nodes, not "
            f"{len(nodes)}: it was formed by an older Gongji. `gongji infra reset` starts it afresh."
        )
    if not formed:
        created = subprocess.run(
            [
                _require("redis-cli", "install it with `apt-get install redis-tools`."),
                "--tls",
                "--cacert",
                str(ca_file(settings)),
                "--user",
                OPERATOR.name,
                "--cluster",
                "create",
                *(f"{node.host}:{node.port}" for node in nodes),
                "--cluster-replicas",
                str(REDIS_REPLICAS_PER_PRIMARY),
                "--cluster-yes",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            # Its password from the environment, never from its arguments.
            env=child_environment({"REDISCLI_AUTH": password(settings, OPERATOR.name)}),
        )
        if created.returncode != 0:
            raise InfraError(f"redis-cli could not form the Redis Cluster:\n{created.stdout}{created.stderr}")
    for node in nodes:
        with node_redis(settings, node) as client:
            while (info := client.cluster("INFO")).get("cluster_state") != "ok" or int(
                info["cluster_known_nodes"]
            ) < len(nodes):
                if time.monotonic() > deadline:
                    raise InfraError(f"the Redis Cluster was not ok within {READY_TIMEOUT_SECONDS}s: {info}")
                time.sleep(0.2)
    return not formed


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
    return AdminClient({**librdkafka_options(settings, OPERATOR.name), "logger": _librdkafka_log()})


def _wait_for_kafka(settings: Settings, admin: AdminClient, deadline: float) -> None:
    """Until every broker the settings name has registered: a topic is created with all its replicas."""
    expected = len(settings.kafka_bootstrap.split(","))
    registered = 0
    while True:
        try:
            registered = len(admin.list_topics(timeout=5).brokers)
            if registered >= expected:
                return
        except KafkaException as error:
            if error.args[0].code() == KafkaError._AUTHENTICATION:
                raise InfraError(
                    "Kafka refuses the operator's credentials: its data may predate security or "
                    "the secrets were replaced — `gongji infra reset`"
                ) from None
        if time.monotonic() > deadline:
            logs = ", ".join(str(node.log) for node in kafka_nodes(settings))
            raise InfraError(
                f"Kafka did not answer with {expected} broker(s) within {READY_TIMEOUT_SECONDS}s "
                f"({registered} registered); see {logs}"
            ) from None
        time.sleep(0.2)


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


def sync_scram_users(settings: Settings, admin: AdminClient) -> None:
    """Every Kafka user's SCRAM credential is set to its current password: a principal declared
    after the storage was formatted, or a password rotated while these brokers were down (the
    single node and the clusters share the secrets), is right again. Kafka keeps only a salted
    hash, so each is set, not compared."""
    set_scram_passwords(admin, {principal.name: password(settings, principal.name) for principal in KAFKA_USERS})


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
    """A new password for a principal: set on the running brokers (SCRAM, through the admin API) and
    on every Redis node (ACL SETUSER; a replica's `masterauth` too), then kept. The new one waits in
    a file of its own until all have it, so that a rotation cut short can be run again and finish
    with the same password."""
    pending = secrets_dir(settings) / f"{name}.password.next"
    if not pending.exists():
        write_secret(pending, new_password().encode())
    value = pending.read_text().strip()
    notes = []
    if BY_NAME[name] in KAFKA_USERS:
        set_scram_passwords(kafka_admin(settings), {name: value})
        notes.append(f"Kafka: {name}'s SCRAM password changed")
    nodes = [node for node in redis_nodes(settings) if name in _redis_principals(node.in_cluster)]
    for node in nodes:
        with node_redis(settings, node) as client:
            client.execute_command("ACL", "SETUSER", name, "resetpass", _hashed(value))
            client.execute_command("ACL", "SAVE")
            if name == REPLICA.name:
                client.config_set("masterauth", value)
                write_secret(node.secret_config, f'masterauth "{value}"\n'.encode())
    if nodes:
        notes.append(f"Redis: {name}'s password changed on {len(nodes)} node(s)")
    set_password(settings, name, value)
    pending.unlink()
    return notes


def up(settings: Settings) -> list[str]:
    """Idempotent: makes the secrets and certificates that are missing, starts what is not running,
    waits until all answer, then makes the topics, users, ACLs and Functions what the code declares."""
    paths = Paths(settings.state_dir)
    notes = []
    if made := ensure_passwords(settings):
        notes.append(f"generated credentials for {len(made)} principals")
    servers = ("broker", "redis") if settings.cluster else ("broker",)
    try:
        hosts = {_host_port(address)[0] for address in settings.kafka_bootstrap.split(",")}
        notes += [f"made {what}" for what in ensure_certificates(settings, hosts, servers)]
    except CAKeyOffline as error:
        raise InfraError(str(error)) from None
    if started := start_redis(settings):
        notes.append(f"started redis-server ×{started}" if settings.cluster else "started redis-server")
    try:
        if started := start_kafka(settings, paths):
            shape = f"nodes {', '.join(map(str, started))} of 3" if settings.cluster else "KRaft"
            notes.append(f"started Apache Kafka {kafka_version(paths)} ({shape}, SASL_SSL)")
        return notes + configure(settings)
    finally:
        _forget_java_arguments(paths)  # read by the launcher at start


def configure(settings: Settings) -> list[str]:
    """Once all answer (the launcher's, or the containers'): each Redis node's memory bound and
    users, the cluster formed, the Functions, and Kafka's topics, SCRAM users, ACLs and quotas, as
    the code declares them."""
    notes = []
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    nodes = redis_nodes(settings)
    for node in nodes:
        with _wait_for_redis_node(settings, node, deadline) as each:
            for name, value in redis_memory_config(
                settings
            ).items():  # on any Redis, one an earlier release started too
                each.config_set(name, value)
            sync_redis_users(settings, each, node.in_cluster)  # users are a node's own, never replicated
    if settings.cluster and form_redis_cluster(settings, nodes, deadline):
        notes.append("formed the Redis Cluster: 3 primaries, two replicas each")
    with operator_redis(settings) as client:
        load_functions(client)  # on every primary; replicas receive them from theirs
        now = clock_from_settings(settings).now()
        if kept := keep_for_window(client, ClaimWindow.from_settings(settings), now):
            notes.append(f"the claim window grew: {kept} keys of claims' days kept for it")
        if kept := keep_seen_for_window(client, InputWindow.from_settings(settings)):
            notes.append(
                f"the input window: {kept} keys of seen ids kept for it (grown, or first kept by a generation)"
            )
    admin = kafka_admin(settings)
    _wait_for_kafka(settings, admin, deadline)
    create_topics(settings, admin)
    try:
        adopted, old_groups = adopt_service_group_offsets(admin)
        notes += [f"consumer group {note}" for note in adopted]
        sync_scram_users(settings, admin)
        created, deleted = sync_acls(admin)
        forget_service_groups(admin, old_groups)
    except OldReleaseRunning as error:
        raise InfraError(str(error)) from None
    if created or deleted:
        notes.append(f"ACLs: {created} created, {deleted} removed")
    # Its own loop in its own thread: `up` is called from event loops too (tests restarting Redis).
    with ThreadPoolExecutor(1) as apart:
        apart.submit(asyncio.run, sync_quotas(settings)).result()
        apart.submit(asyncio.run, _until_services_are_authorized(settings, deadline)).result()
    return notes


@contextlib.contextmanager
def _authorization_refusals_unlogged() -> Iterator[None]:
    """aiokafka logs each refusal of a producer's id as an error: while the ACLs are on their way
    they are expected, and printed they only alarm whoever runs `gongji infra up`."""
    sender_log = logging.getLogger("aiokafka.producer.sender")

    def not_a_refusal(record: logging.LogRecord) -> bool:
        return "ClusterAuthorizationFailed" not in record.getMessage()

    sender_log.addFilter(not_a_refusal)
    try:
        yield
    finally:
        sender_log.removeFilter(not_a_refusal)


async def _until_services_are_authorized(settings: Settings, deadline: float) -> None:
    """ACLs reach the broker's authorizer a moment after the admin API has accepted them: a service
    started in that moment had its idempotent producer refused (ClusterAuthorizationFailed) and
    stopped. Ready means each service's producer is accepted."""
    with _authorization_refusals_unlogged():
        for principal in SERVICES:
            await _until_authorized(settings, principal.name, deadline)


async def _until_authorized(settings: Settings, principal: str, deadline: float) -> None:
    while True:
        producer = make_producer(settings, principal)
        try:
            await producer.start()
            return
        except ClusterAuthorizationFailedError:
            if time.monotonic() > deadline:
                raise InfraError(
                    f"Kafka did not authorize {principal} within {READY_TIMEOUT_SECONDS}s of its ACLs being made"
                ) from None
            await asyncio.sleep(0.2)
        finally:
            await producer.stop()


def stop(pid_file: Path, name: str) -> str | None:
    pid = pid_alive(pid_file)
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


def _both(settings: Settings) -> tuple[Settings, Settings]:
    """The settings of the single nodes and of the cluster's: `down` and `reset` act on both."""
    return settings.model_copy(update={"cluster": False}), settings.model_copy(update={"cluster": True})


def running_pids(settings: Settings) -> dict[str, int]:
    """The process ids of the Kafka and Redis nodes that this launcher started and that still run
    (`kafka`, `redis` for the single ones; `kafka-N`, `redis-N` for a cluster's)."""
    kafka, redis_ = kafka_nodes(settings), redis_nodes(settings)
    found = {
        **{("kafka" if len(kafka) == 1 else f"kafka-{node.node_id}"): pid_alive(node.pid) for node in kafka},
        **{("redis" if len(redis_) == 1 else f"redis-{i}"): pid_alive(node.pid) for i, node in enumerate(redis_, 1)},
    }
    return {name: pid for name, pid in found.items() if pid is not None}


def stop_nodes(settings: Settings) -> list[str]:
    """Stops the settings' nodes (the single ones, or the cluster's) that this launcher started."""
    stopped = [
        stop(node.pid, f"Kafka node {node.node_id}" if settings.cluster else "Kafka") for node in kafka_nodes(settings)
    ]
    stopped += [
        stop(node.pid, f"Redis {node.host}:{node.port}" if node.in_cluster else "Redis")
        for node in redis_nodes(settings)
    ]
    return [note for note in stopped if note]


def down(settings: Settings) -> list[str]:
    """Stops only the processes this launcher started (from their pid files): the single Kafka and
    Redis, and the clusters' nodes."""
    return [note for each in _both(settings) for note in stop_nodes(each)]


def reset(settings: Settings) -> list[str]:
    """Stops all and deletes their data, the clusters' too (the cached jars stay)."""
    notes = down(settings)
    for each in _both(settings):
        for node in kafka_nodes(each):
            shutil.rmtree(node.data, ignore_errors=True)
        for redis_node in redis_nodes(each):
            shutil.rmtree(redis_node.dir, ignore_errors=True)
    return [*notes, "deleted Kafka and Redis data"]


def status(settings: Settings) -> dict[str, str]:
    paths = Paths(settings.state_dir)
    nodes = kafka_nodes(settings)
    running = sum(1 for node in nodes if pid_alive(node.pid) and port_open(node.host, node.port))
    report = {
        "kafka": f"Apache Kafka {kafka_version(paths) or '(jars not fetched)'} (KRaft) at {settings.kafka_bootstrap}: "
        + (
            "running"
            if running == len(nodes)
            else f"{running} of {len(nodes)} nodes running"
            if running
            else "not running"
        ),
    }
    try:
        client = operator_redis(settings, socket_timeout=1)
        used, bound = redis_memory(client)
        report["redis"] = (
            f"Redis {_server_version(client)} at {settings.redis_url}: running, "
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


def restart_stopped(settings: Settings) -> list[str]:
    """Starts again the settings' nodes that are not running (killed, crashed), as `up` would, and
    waits until each answers; the users, topics and Functions are theirs already."""
    paths = Paths(settings.state_dir)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    notes = []
    try:
        if started := start_redis(settings):
            notes.append(f"started {started} Redis node(s)")
        if started_kafka := start_kafka(settings, paths):
            notes.append(f"started Kafka node(s) {', '.join(map(str, started_kafka))}")
        for node in redis_nodes(settings):
            _wait_for_redis_node(settings, node, deadline).close()
        _wait_for_kafka(settings, kafka_admin(settings), deadline)
    finally:
        _forget_java_arguments(paths)
    return notes


def kafka_leaders(settings: Settings, topic_suffix: str = "") -> Counter[int]:
    """How many partitions each broker leads, of the topics whose name ends with `topic_suffix`."""
    metadata = kafka_admin(settings).list_topics(timeout=10)
    return Counter(
        partition.leader
        for name, topic in metadata.topics.items()
        if name.endswith(topic_suffix) and not name.startswith("__")
        for partition in topic.partitions.values()
    )


@dataclass(frozen=True)
class ClusterNodeState:
    """One Redis Cluster node as the cluster sees it (CLUSTER NODES)."""

    node_id: str
    address: str  # host:port
    role: str  # primary | replica
    primary_id: str | None  # a replica's primary
    slots: int
    failing: bool

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


def redis_cluster_state(settings: Settings) -> list[ClusterNodeState]:
    """The cluster's nodes, as the first node that answers sees them."""
    for node in redis_nodes(settings):
        try:
            with node_redis(settings, node, socket_timeout=2) as client:
                text = client.execute_command("CLUSTER", "NODES")
        except redis.exceptions.RedisError:
            continue
        return [
            cluster_node_from_line(line)
            for line in (text.decode() if isinstance(text, bytes) else text).splitlines()
            if line
        ]
    raise InfraError("no Redis Cluster node answers")


def cluster_node_from_line(line: str) -> ClusterNodeState:
    node_id, address, flags, primary, *_, state = line.split()[:8]
    slots = 0
    for one in line.split()[8:]:
        if not one.startswith("["):  # `[slot->-node]`: a slot on its way, counted where it is
            start, _, end = one.partition("-")
            slots += int(end or start) - int(start) + 1
    flag_set = set(flags.split(","))
    return ClusterNodeState(
        node_id,
        address.split("@")[0],
        "primary" if "master" in flag_set else "replica",
        None if primary == "-" else primary,
        slots,
        bool(flag_set & {"fail", "fail?"}) or state != "connected",
    )
