"""Kafka client quotas, made exactly what shared/principals.py declares, in one AlterClientQuotas
request (KIP-546). Neither client library here can send it: aiokafka has the protocol classes to
describe quotas but not to alter them, confluent-kafka has no quota API, and Kafka's own
`kafka-configs` would start a JVM per principal. So the request is declared here, in aiokafka's
protocol classes, from Kafka's schema (AlterClientQuotasRequest.json, version 0)."""

from __future__ import annotations

from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import DescribeClientQuotasRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Float64, Int16, Int32, Schema, String

from shared.credentials import aiokafka_options
from shared.principals import OPERATOR, PRINCIPALS, KafkaQuota
from shared.settings import Settings

QUOTA_KEYS = ("producer_byte_rate", "consumer_byte_rate", "request_percentage")
# Connections each client address may open per second (KIP-612): a client that reconnects in a
# loop, or floods the broker with handshakes, is slowed before it costs the broker its TLS threads.
# Every client of this machine shares 127.0.0.1, so it is set for all of them together.
CONNECTION_CREATION_RATE = 100

_ENTITY = Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))


class AlterClientQuotasResponse_v0(Response):  # noqa: N801 - aiokafka's naming
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("entries", Array(("error_code", Int16), ("error_message", String("utf-8")), ("entity", _ENTITY))),
    )


class AlterClientQuotasRequest_v0(RequestStruct):  # noqa: N801
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = AlterClientQuotasResponse_v0
    SCHEMA = Schema(
        (
            "entries",
            Array(
                ("entity", _ENTITY), ("ops", Array(("key", String("utf-8")), ("value", Float64), ("remove", Boolean)))
            ),
        ),
        ("validate_only", Boolean),
    )


class AlterClientQuotasRequest(Request[AlterClientQuotasRequest_v0]):
    API_KEY = 49

    def __init__(self, entries: list[Any]) -> None:
        self._entries = entries

    def build(self, request_struct_class: type[AlterClientQuotasRequest_v0]) -> AlterClientQuotasRequest_v0:
        return request_struct_class(self._entries, False)


def _operations(quota: KafkaQuota | None) -> list[tuple[str, float, bool]]:
    """Sets each declared value; removes every value of a principal declared without a quota."""
    if quota is None:
        return [(key, 0.0, True) for key in QUOTA_KEYS]
    return [(key, float(getattr(quota, key)), False) for key in QUOTA_KEYS]


def declared_entries() -> list[Any]:
    users = [([("user", principal.name)], _operations(principal.quota)) for principal in PRINCIPALS]
    return [*users, ([("ip", None)], [("connection_creation_rate", float(CONNECTION_CREATION_RATE), False)])]


async def _client(settings: Settings) -> AIOKafkaClient:
    client = AIOKafkaClient(**aiokafka_options(settings, OPERATOR.name), request_timeout_ms=30_000)
    await client.bootstrap()
    return client


async def sync_quotas(settings: Settings) -> None:
    client = await _client(settings)
    try:
        response = await client.send(client.get_random_node(), AlterClientQuotasRequest(declared_entries()))
    finally:
        await client.close()
    for error_code, message, entity in response.entries:
        if error_code:
            raise for_code(error_code)(f"quota of {entity}: {message}")


async def described_quotas(settings: Settings, entity_type: str) -> dict[str | None, dict[str, float]]:
    """Every quota of one entity type the broker holds: {entity name (None: the default): {key: value}}."""
    client = await _client(settings)
    try:
        # match_type 2: any entity of this type, the default included.
        response = await client.send(
            client.get_random_node(), DescribeClientQuotasRequest([(entity_type, 2, None)], False)
        )
    finally:
        await client.close()
    if response.error_code:
        raise for_code(response.error_code)(response.error_message)
    return {dict(entity).get(entity_type): dict(values) for entity, values in response.entries}
