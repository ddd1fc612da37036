"""Starts and stops the real infrastructure on loopback: Apache Kafka (KRaft) from its Maven Central
jars and the OS's redis-server, each with its own port, data directory and pid file."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import PROJECT_ROOT, Settings
from shared.topics import ALL_TOPICS

POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
READY_TIMEOUT_SECONDS = 120


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
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_pid(self) -> Path:
        return self.root / "redis" / "redis.pid"

    @property
    def redis_log(self) -> Path:
        return self.root / "redis" / "redis.log"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _port_open(host: str, port: int) -> bool:
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


def fetch_kafka_jars(paths: Paths) -> None:
    if kafka_version(paths):
        return
    mvn = _require("mvn", "install Maven (e.g. `apt-get install maven`) so the Kafka jars can be fetched.")
    paths.kafka_libs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={paths.kafka_libs}"],
        capture_output=True, text=True,
    )
    if result.returncode != 0 or not kafka_version(paths):
        shutil.rmtree(paths.kafka_libs, ignore_errors=True)
        raise InfraError(f"Maven could not fetch Apache Kafka from Maven Central:\n{result.stdout}{result.stderr}")


def _write_kafka_config(settings: Settings, paths: Paths) -> None:
    host, port = _host_port(settings.kafka_bootstrap)
    controller = f"{host}:{settings.kafka_controller_port}"
    paths.kafka_config.parent.mkdir(parents=True, exist_ok=True)
    paths.kafka_config.write_text(
        "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={controller}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{controller}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={paths.kafka_data}",
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
        ])
    )


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return _require("java", "install a Java 17 runtime (e.g. `apt-get install openjdk-17-jre-headless`).")


def format_kafka_storage(java: str, paths: Paths, cluster_id: str) -> None:
    """Formats the KRaft storage once. `--cluster-id=` keeps an id that starts with '-' (one in
    64 random ids) from being read as an option."""
    formatted = subprocess.run(
        [java, "-cp", f"{paths.kafka_libs}/*", "kafka.tools.StorageTool", "format", "--standalone",
         f"--cluster-id={cluster_id}", "-c", str(paths.kafka_config)],
        capture_output=True, text=True,
    )
    if formatted.returncode != 0:
        # The tool's own sentence: its usage text comes before it, a Java stack trace after it.
        said = [line for line in (formatted.stderr or formatted.stdout).splitlines()
                if line.strip() and not line.lstrip().startswith("at ")]
        raise InfraError(f"formatting Kafka's storage in {paths.kafka_data} failed: {said[-1] if said else '?'}")


def start_kafka(settings: Settings, paths: Paths) -> bool:
    """Start the broker unless ours is running; return True if it was started now."""
    host, port = _host_port(settings.kafka_bootstrap)
    if _pid_alive(paths.kafka_pid):
        return False
    if _port_open(host, port):
        raise InfraError(f"port {port} is taken by another process: stop it or set GONGJI_KAFKA_BOOTSTRAP.")
    java = _java()
    fetch_kafka_jars(paths)
    _write_kafka_config(settings, paths)
    classpath = f"{paths.kafka_libs}/*"
    if not (paths.kafka_data / "meta.properties").exists():
        format_kafka_storage(java, paths, base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
    log = paths.kafka_log.open("ab")
    process = subprocess.Popen(
        [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
         "-cp", classpath, "kafka.Kafka", str(paths.kafka_config)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    paths.kafka_pid.write_text(str(process.pid))
    return True


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return _require("redis-server", "install it with `apt-get install redis-server`.")


def start_redis(settings: Settings, paths: Paths) -> bool:
    client = redis.Redis.from_url(settings.redis_url)
    host, port = client.connection_pool.connection_kwargs["host"], client.connection_pool.connection_kwargs["port"]
    if _pid_alive(paths.redis_pid):
        return False
    if _port_open(host, port):
        raise InfraError(f"port {port} is taken by another process: stop it or set GONGJI_REDIS_URL.")
    server = _redis_server()
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [server, "--bind", host, "--port", str(port), "--dir", str(paths.redis_dir),
         "--appendonly", "yes", "--appendfsync", "always",
         "--save", "", "--protected-mode", "no", "--logfile", str(paths.redis_log),
         "--daemonize", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    paths.redis_pid.write_text(str(process.pid))
    return True


def _wait_for_redis(settings: Settings, deadline: float) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=1)
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.exceptions.RedisError:
            time.sleep(0.2)
    raise InfraError(f"Redis did not answer within {READY_TIMEOUT_SECONDS}s; see {Paths(settings.state_dir).redis_log}")


async def _create_topics(settings: Settings, deadline: float) -> None:
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            break
        except Exception:  # noqa: BLE001 - the broker is still starting; retry until the deadline
            await admin.close()
            if time.monotonic() > deadline:
                raise InfraError(
                    f"Kafka did not answer within {READY_TIMEOUT_SECONDS}s; see "
                    f"{Paths(settings.state_dir).kafka_log}"
                ) from None
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [
            # The topics are the books the deep audit rebuilds: nothing expires from them.
            NewTopic(topic.name, settings.topic_partitions, settings.topic_replication_factor,
                     topic_configs={"retention.ms": "-1"})
            for topic in ALL_TOPICS
            if topic.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def create_topics_now(settings: Settings | None = None) -> None:
    """Creates the topics on a broker started by someone else (the compose file's Kafka)."""
    asyncio.run(_create_topics(settings or Settings(), time.monotonic() + READY_TIMEOUT_SECONDS))


def up(settings: Settings) -> list[str]:
    """Idempotent: starts what is not running, waits until both answer, creates the topics."""
    # While the broker starts, every refused connection would be logged; the deadline reports failure.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    paths = Paths(settings.state_dir)
    notes = []
    if start_redis(settings, paths):
        notes.append("started redis-server")
    if start_kafka(settings, paths):
        notes.append(f"started Apache Kafka {kafka_version(paths)} (KRaft)")
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    _wait_for_redis(settings, deadline)
    asyncio.run(_create_topics(settings, deadline))
    return notes


def _stop(pid_file: Path, name: str) -> str | None:
    pid = _pid_alive(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"stopped {name}"
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return f"killed {name} (it did not stop within 30s)"


def down(settings: Settings) -> list[str]:
    """Stops only the processes this launcher started (from their pid files)."""
    paths = Paths(settings.state_dir)
    return [note for note in (_stop(paths.kafka_pid, "Kafka"), _stop(paths.redis_pid, "Redis")) if note]


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
        + ("running" if _pid_alive(paths.kafka_pid) and _port_open(kafka_host, kafka_port) else "not running"),
    }
    try:
        info = redis.Redis.from_url(settings.redis_url, socket_timeout=1).info("server")
        report["redis"] = f"Redis {info['redis_version']} at {settings.redis_url}: running"
    except redis.exceptions.RedisError:
        report["redis"] = f"Redis at {settings.redis_url}: not running"
    return report

