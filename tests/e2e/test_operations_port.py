"""Each service's HTTP port, as a local process or a web page would try it: no publish door, no
answer to a foreign `Host`, and a health that says whether the service consumes. Revoking a
service's consumer group under it ends the process (status EXIT_FATAL) instead of a quiet loop."""

from __future__ import annotations

import asyncio
import http.client
import time

import pytest
from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from gongji.ops import infra
from gongji.ops.launcher import SERVICE_NAMES, ServiceFailed, ServiceProcess, http_port
from shared.operations import EXIT_FATAL
from shared.topics import RELATIONSHIP_GROUP, route_group_prefix
from tests.e2e.world import World

pytestmark = pytest.mark.timeout(300)


def request(
    port: int, method: str, path: str, host: str | None = None, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_the_asyncapi_page_and_its_try_it_out_route_are_gone(settings, service_processes, name: str) -> None:
    port = http_port(settings, name)
    forged = b'{"channelName": "gongji.settlements.v1", "message": {"message": {}}, "options": {}}'
    for method, path, body in (
        ("POST", "/docs/asyncapi/try", forged),
        ("GET", "/docs/asyncapi", b""),
        ("GET", "/docs/asyncapi.json", b""),
        ("GET", "/asyncapi", b""),
    ):
        status, _ = request(port, method, path, body=body, headers={"Content-Type": "text/plain"})
        assert status in (404, 405), f"{name} {method} {path} answered {status}"


@pytest.mark.parametrize("name", SERVICE_NAMES)
async def test_the_port_answers_loopback_names_only(settings, service_processes, name: str) -> None:
    port = http_port(settings, name)
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", "", "[::2]:1"):
        for path in ("/health", "/metrics"):
            status, _ = request(port, "GET", path, host=host, headers={"Origin": "http://attacker.example"})
            assert status == 400, f"{name} {path} with Host {host!r} answered {status}"
    for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert request(port, "GET", "/health", host=host)[0] == 204, host
        status, body = request(port, "GET", "/metrics", host=host)
        assert status == 200 and b"gongji_messages_total" in body


def _relationship_group_acl() -> AclBindingFilter:
    return AclBindingFilter(
        ResourceType.GROUP,
        route_group_prefix(RELATIONSHIP_GROUP),
        ResourcePatternType.PREFIXED,
        "User:relationship",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )


async def test_a_service_whose_group_is_revoked_ends_its_process_and_comes_back_when_restored(
    settings, world: World, service_processes
) -> None:
    relationship = service_processes["relationship"]
    admin = infra.kafka_admin(settings)
    try:
        infra._settle(admin.delete_acls([_relationship_group_acl()], request_timeout=30))
        for _ in range(300):
            if not relationship.running():
                break
            await asyncio.sleep(0.1)
        assert relationship.process.returncode == EXIT_FATAL, relationship.tail()
        assert "GroupAuthorizationFailedError" in relationship.tail()
    finally:
        infra.sync_acls(admin)
        await asyncio.to_thread(_start_once_authorized, relationship)
    # Back with its rights, it consumes again.
    provider, recipient = await world.person("employee"), await world.person("resident", "510100")
    await world.kinship(provider, recipient, "parent")
    assert (await world.request(provider, recipient, "510100"))["type"] == "requested"
    assert request(http_port(settings, "relationship"), "GET", "/health")[0] == 204


def _start_once_authorized(service: ServiceProcess) -> None:
    """A restored ACL reaches the broker's authorizer a moment after the admin API accepts it; a
    service started in that moment is refused again and ends (as it should)."""
    for attempt in range(10):
        try:
            return service.start()
        except ServiceFailed:
            if attempt == 9:
                raise
            time.sleep(1)
