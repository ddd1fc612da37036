"""The Docker path is the launcher's, in containers: deploy/compose.yaml is what gongji/ops/docker.py
renders, and the broker's and Redis's settings there differ from the launcher's only in where they
listen and where their files lie (the same TLS, SASL mechanism, authorizer, users and durability).
`gongji infra up --docker` configures the containers with the launcher's own `configure` (topics,
ACLs, quotas, Redis users and Functions)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from gongji.ops import docker, infra
from shared.principals import PRINCIPALS
from shared.settings import Settings

# What may differ between the launcher's broker and the container's: addresses and file locations.
WHERE = {"listeners", "log.dirs", "ssl.keystore.location", "ssl.truststore.location"}


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_compose_file_is_the_one_the_declarations_render() -> None:
    assert docker.COMPOSE_FILE.read_text() == docker.compose_text(Settings()), "run `gongji infra up --docker` once"


def test_the_containers_broker_is_the_launchers_but_where_it_listens_and_keeps_its_files(tmp_path) -> None:
    settings = Settings()
    nodes = infra.kafka_nodes(settings)
    launcher = properties(infra.kafka_properties(settings, nodes[0], nodes))
    container = properties(docker.container_properties(settings))
    assert launcher.keys() == container.keys()
    assert {name for name in launcher if launcher[name] != container[name]} <= WHERE
    assert container["listeners"] == "CLIENT://0.0.0.0:19092,CONTROLLER://0.0.0.0:19093"
    assert container["advertised.listeners"] == launcher["advertised.listeners"] == "CLIENT://127.0.0.1:19092"
    assert container["sasl.enabled.mechanisms"] == infra.SCRAM_MECHANISM
    assert container["ssl.keystore.location"].startswith(str(docker.CONTAINER_STATE))


def test_the_containers_redis_is_the_launchers_but_where_it_listens_and_keeps_its_files() -> None:
    (redis,) = [service for name, service in docker.compose(Settings())["services"].items() if name == "redis"]
    container = dict(zip(redis["entrypoint"][1::2], redis["entrypoint"][2::2], strict=True))
    launcher_list = infra.redis_arguments("127.0.0.1", 16379, Path("/data"), Path("/users.acl"))
    launcher = dict(zip(launcher_list[::2], launcher_list[1::2], strict=True))
    assert launcher.keys() == container.keys()
    differ = {name for name in launcher if launcher[name] != container[name]}
    assert differ == {"--bind", "--dir", "--aclfile", "--protected-mode"}
    assert container["--appendfsync"] == "always" and container["--aclfile"].startswith("/gongji/secrets/")
    assert all(
        port.startswith("127.0.0.1:")
        for service in docker.compose(Settings())["services"].values()
        for port in service["ports"]
    )  # published on loopback only


def test_the_broker_is_formatted_with_every_principals_scram_credentials() -> None:
    script = (docker.COMPOSE_FILE.parent / "docker" / "kafka.sh").read_text()
    assert f"{infra.SCRAM_MECHANISM}=[name=" in script and f"iterations={infra.SCRAM_ITERATIONS}]" in script
    assert "/gongji/secrets/*.password" in script  # a file per principal: ensure_passwords makes them all
    assert re.search(r'username=\\"broker\\"', script)
    assert len(PRINCIPALS) > 30


def test_infra_up_docker_prepares_starts_and_configures_with_the_launchers_code(tmp_path, monkeypatch) -> None:
    settings = Settings(state_dir=tmp_path)
    ran: list[list[str]] = []
    monkeypatch.setattr(docker.shutil, "which", lambda name: "/usr/bin/docker")
    monkeypatch.setattr(
        docker.subprocess, "run", lambda command, check: ran.append(command) or subprocess.CompletedProcess(command, 0)
    )
    monkeypatch.setattr(docker, "configure", lambda given: ["configured"] if given is settings else [])
    notes = docker.up(settings)
    assert notes[-1] == "configured"
    assert ran == [
        [
            "/usr/bin/docker",
            "compose",
            "-f",
            str(docker.COMPOSE_FILE),
            "--env-file",
            str(docker.env_file(settings)),
            "up",
            "--detach",
            "--wait",
        ]
    ]
    assert (tmp_path / "docker" / "server.properties").read_text() == docker.container_properties(settings)
    assert (tmp_path / "secrets" / "redis-users.acl").exists() and (tmp_path / "secrets" / "ca.pem").exists()
    assert "GONGJI_UID=" in docker.env_file(settings).read_text()
