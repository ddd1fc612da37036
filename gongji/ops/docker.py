"""The Docker path, for machines with a Docker engine: Kafka and Redis in containers (the official
images), secured and configured by the launcher's own declarations (gongji/ops/infra.py): the same
broker properties (TLS 1.3, SCRAM-SHA-512, the authorizer, no ACL no access), the same SCRAM users
formatted into the storage, the same Redis users and settings, then the same `configure` (topics,
ACLs, quotas, Redis's Functions and memory bound). The services, the tests and the tools run on the
host against them, as they do against the launcher's.

deploy/compose.yaml is rendered here (`compose_text`, kept in step by a unit test) and holds no
secret: the state directory (secrets, CA, data) is mounted into each container, whose process runs
as the user who owns it. `gongji infra up --docker` prepares the state, runs `docker compose up`
and configures; the tests' fixture does the same through testcontainers (GONGJI_INFRA=docker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from gongji.ops.infra import (
    POM,
    InfraError,
    Paths,
    _host_port,
    _redis_address,
    configure,
    kafka_nodes,
    kafka_properties,
    redis_arguments,
    write_redis_users,
)
from gongji.ops.tls import CAKeyOffline, ensure_certificates
from shared.credentials import ensure_passwords
from shared.settings import PROJECT_ROOT, Settings

COMPOSE_FILE = PROJECT_ROOT / "deploy" / "compose.yaml"
CONTAINER_STATE = Path("/gongji")  # where the state directory is mounted in each container
KAFKA_IMAGE = "apache/kafka:" + re.search(r"<kafka.version>([^<]+)<", POM.read_text()).group(1)  # type: ignore[union-attr]
REDIS_IMAGE = "redis:7.0"


def docker_dir(state_dir: Path) -> Path:
    """The containers' own data and the broker's properties, apart from the launcher's."""
    return state_dir / "docker"


def env_file(settings: Settings) -> Path:
    return docker_dir(settings.state_dir) / "compose.env"


def compose(settings: Settings) -> dict:
    kafka_port = _host_port(settings.kafka_bootstrap)[1]
    redis_port = _redis_address(settings)[1]
    unset = "run it through gongji infra up --docker"
    runs_as = f"${{GONGJI_UID:?{unset}}}:${{GONGJI_GID:?{unset}}}"
    state = f"${{GONGJI_STATE_DIR:?{unset}}}:{CONTAINER_STATE}"
    return {
        "services": {
            "kafka": {
                "image": KAFKA_IMAGE,
                "user": runs_as,
                "entrypoint": ["/bin/bash", "/deploy/kafka.sh"],
                "ports": [f"127.0.0.1:{kafka_port}:{kafka_port}"],
                "volumes": [state, "./docker:/deploy:ro"],
                "healthcheck": {
                    "test": ["CMD", "bash", "-c", f"</dev/tcp/127.0.0.1/{kafka_port}"],
                    "interval": "2s",
                    "retries": 60,
                },
            },
            "redis": {
                "image": REDIS_IMAGE,
                "user": runs_as,
                "entrypoint": [
                    "redis-server",
                    *redis_arguments(
                        "0.0.0.0",
                        redis_port,
                        docker_dir(CONTAINER_STATE) / "redis",
                        Paths(CONTAINER_STATE).redis_users,
                        protected_mode=False,
                    ),
                ],
                "ports": [f"127.0.0.1:{redis_port}:{redis_port}"],
                "volumes": [state],
            },
        },
    }


def compose_text(settings: Settings) -> str:
    """deploy/compose.yaml: JSON is YAML too, and needs no YAML library to write."""
    return (
        "# Kafka and Redis in containers, secured as `gongji infra up` secures its own. Rendered by\n"
        "# gongji/ops/docker.py (a unit test keeps it in step): do not edit. Start it with\n"
        "# `gongji infra up --docker`, which prepares the mounted state directory first.\n"
        + json.dumps(compose(settings), indent=2)
        + "\n"
    )


def container_properties(settings: Settings) -> str:
    """The broker's properties in its container: the launcher's, bound to every address."""
    inside = settings.model_copy(update={"state_dir": CONTAINER_STATE})
    (node,) = kafka_nodes(inside)
    node = replace(node, data=docker_dir(CONTAINER_STATE) / "kafka" / "data")
    return kafka_properties(inside, node, [node], listen_on="0.0.0.0")


def prepare(settings: Settings) -> list[str]:
    """The state the containers mount: secrets and certificates (made if missing), Redis's users,
    the broker's properties, and the variables compose reads (who runs the containers, and where
    the state directory is)."""
    notes = []
    if made := ensure_passwords(settings):
        notes.append(f"generated credentials for {len(made)} principals")
    try:
        notes += [f"made {what}" for what in ensure_certificates(settings, {_host_port(settings.kafka_bootstrap)[0]})]
    except CAKeyOffline as error:
        raise InfraError(str(error)) from None
    write_redis_users(settings, Paths(settings.state_dir).redis_users)
    here = docker_dir(settings.state_dir)
    for part in ("kafka/data", "redis"):
        (here / part).mkdir(mode=0o700, parents=True, exist_ok=True)
    (here / "server.properties").write_text(container_properties(settings))
    env_file(settings).write_text(
        f"GONGJI_UID={os.getuid()}\nGONGJI_GID={os.getgid()}\nGONGJI_STATE_DIR={settings.state_dir.resolve()}\n"
    )
    return notes


def _docker_compose(settings: Settings, *arguments: str) -> None:
    docker = shutil.which("docker")
    if docker is None:
        raise InfraError("no `docker` command here: install Docker, or use `gongji infra up` (no Docker needed)")
    command = [docker, "compose", "-f", str(COMPOSE_FILE), "--env-file", str(env_file(settings)), *arguments]
    if subprocess.run(command, check=False).returncode != 0:
        raise InfraError(f"`{' '.join(command[1:])}` failed")


def up(settings: Settings) -> list[str]:
    notes = prepare(settings)
    _docker_compose(settings, "up", "--detach", "--wait")
    return [*notes, f"started {KAFKA_IMAGE} and {REDIS_IMAGE}", *configure(settings)]


def down(settings: Settings) -> list[str]:
    _docker_compose(settings, "down")
    return ["stopped the containers (their data stays in the state directory)"]
