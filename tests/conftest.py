"""Session fixtures: the real infrastructure (started by the project's own launcher), a Kafka tap,
and the three service processes."""

from __future__ import annotations

import os

import pytest
from redis.asyncio import Redis

from gongji.ops import docker, infra
from gongji.ops.launcher import SERVICE_NAMES, ServiceProcess
from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.settings import PROJECT_ROOT, Settings
from tests.support import Kafka


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def infrastructure(settings: Settings):
    if os.environ.get("GONGJI_INFRA") == "docker":
        # Opt-in on machines with a Docker engine: the official images, from deploy/compose.yaml,
        # prepared and configured by the launcher's own declarations (gongji/ops/docker.py).
        from testcontainers.compose import DockerCompose

        docker.prepare(settings)
        with DockerCompose(
            PROJECT_ROOT / "deploy",
            compose_file_name=docker.COMPOSE_FILE.name,
            env_file=str(docker.env_file(settings)),
            services=["kafka", "redis"],
            wait=True,
        ):
            infra.configure(settings)
            yield settings
        return
    try:
        infra.up(settings)
    except infra.InfraError as error:
        pytest.fail(f"the infrastructure did not come up: {error}")
    yield settings


@pytest.fixture(scope="session")
async def redis(infrastructure: Settings):
    client = Redis.from_url(infrastructure.redis_url, **redis_options(infrastructure, OPERATOR.name))
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def kafka(infrastructure: Settings):
    tap = Kafka(infrastructure)
    await tap.start()
    yield tap
    await tap.stop()


@pytest.fixture(scope="session")
def service_processes(infrastructure: Settings):
    # Tests change the policy and expect the services to see it at once.
    processes = {
        name: ServiceProcess(
            name, infrastructure, infrastructure.state_dir / "test-logs", {"GONGJI_POLICY_CACHE_SECONDS": "0"}
        )
        for name in SERVICE_NAMES
    }
    for process in processes.values():
        process.start()
    yield processes
    for process in processes.values():
        if process.running():
            process.stop()
