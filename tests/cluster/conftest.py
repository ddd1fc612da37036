"""The clusters (three Kafka nodes, a Redis Cluster), started by the launcher on their own ports
beside the single nodes the other tiers use, and stopped once this tier is done."""

from __future__ import annotations

import pytest

from gongji.ops import infra
from shared.settings import Settings

PORT_BASE = 19080  # the services' operations ports, apart from the other tiers' (18080…)


@pytest.fixture(scope="session")
def cluster():
    settings = Settings(cluster=True, http_port_base=PORT_BASE)
    try:
        infra.up(settings)
    except infra.InfraError as error:
        pytest.fail(f"the clusters did not come up: {error}")
    yield settings
    infra.stop_nodes(settings)
