"""The settlement service process (the only module of this service that imports FastStream)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.settlement.handlers import SettlementHandlers
from services.settlement.store import PREFIX, ClaimLimits, SettlementStore
from shared.clock import Clock, clock_from_settings
from shared.redis_client import connect, replication_barrier
from shared.runtime import Periodic, Route, build_service_app
from shared.settings import Settings
from shared.topics import (
    CLAIMS,
    DEAD_LETTERS,
    DRAW_ANSWERS,
    DRAW_ANSWERS_V1,
    DRAW_REQUESTS,
    ENROLLMENT,
    PROVINCE_CLAIMS,
    PROVINCES,
    RECONCILIATION,
    REFUND_REQUESTS,
    SETTLEMENT_GROUP,
    SETTLEMENTS,
    STATISTICS,
    province_reconciliation,
    province_settlements,
)

SERVICE = "settlement"

ROUTES = (
    Route((ENROLLMENT,), SettlementHandlers.on_enrollment),
    # The claim path, read by one consumer: the national and every province's claims topic and the
    # draw answers. Separate consumers would each hold their own connections, heartbeats, group
    # membership and fetch loop (a claim-path fetch loop polls often).
    Route((CLAIMS, *PROVINCE_CLAIMS, DRAW_ANSWERS, DRAW_ANSWERS_V1), SettlementHandlers.on_claim_path),
    # The exact statistics and reconciliation: every result and dead letter as published.
    Route((SETTLEMENTS, DEAD_LETTERS), SettlementHandlers.on_published, own_outputs=True),
)
OUTPUTS = (
    SETTLEMENTS,
    DRAW_REQUESTS,
    REFUND_REQUESTS,
    STATISTICS,
    RECONCILIATION,
    *map(province_settlements, PROVINCES),
    *map(province_reconciliation, PROVINCES),
)


def build_app(settings: Settings, clock: Clock | None = None) -> AsgiFastStream:
    clock = clock or clock_from_settings(settings)
    redis = connect(settings, SERVICE)
    store = SettlementStore(redis, settings.settlement_shards)
    handlers = SettlementHandlers(store, clock, ClaimLimits.from_settings(settings), settings=settings)
    return build_service_app(
        SERVICE,
        settings,
        clock,
        group_id=SETTLEMENT_GROUP,
        handlers=handlers,
        routes=ROUTES,
        outputs=OUTPUTS,
        on_start=store.ready,
        on_stop=redis.aclose,
        replicated=replication_barrier(redis, settings, SERVICE, PREFIX),
        answer_sender=handlers.answer_unreadable_claim,
        periodic=Periodic(settings.statistics_interval_seconds, handlers.publication_due, handlers.published),
    )
