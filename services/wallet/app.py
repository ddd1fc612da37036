"""The wallet service process (the only module of this service that imports FastStream)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.wallet.handlers import WalletHandlers
from services.wallet.store import PREFIX, WalletStore
from shared.clock import Clock, clock_from_settings
from shared.policy import PolicyCache
from shared.redis_client import connect, replication_barrier
from shared.runtime import Route, build_service_app
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS,
    ACCOUNT_SPENDS,
    DRAW_ANSWERS,
    DRAW_REQUESTS,
    DRAW_REQUESTS_V1,
    ENROLLMENT,
    REFUND_REQUESTS,
    RELATIONSHIP_EVENTS,
    SUPERVISION,
    WALLET_COMMANDS,
    WALLET_EVENTS,
    WALLET_GROUP,
)

SERVICE = "wallet"

ROUTES = (
    Route((ACCOUNT_CREDITS,), WalletHandlers.on_credits),
    Route((ACCOUNT_SPENDS,), WalletHandlers.on_spends),
    Route((WALLET_COMMANDS,), WalletHandlers.on_commands),
    Route((RELATIONSHIP_EVENTS,), WalletHandlers.on_relationship_events),
    Route((ENROLLMENT,), WalletHandlers.on_enrollment),
    Route((SUPERVISION,), WalletHandlers.on_supervision),
    Route((DRAW_REQUESTS_V1, DRAW_REQUESTS), WalletHandlers.on_draw_requests),  # v1 first: its group stays
    Route((REFUND_REQUESTS,), WalletHandlers.on_refund_requests),
)
OUTPUTS = (WALLET_EVENTS, DRAW_ANSWERS)


def build_app(settings: Settings, clock: Clock | None = None) -> AsgiFastStream:
    clock = clock or clock_from_settings(settings)
    redis = connect(settings, SERVICE)
    store = WalletStore(redis)
    handlers = WalletHandlers(store, clock, PolicyCache(redis, settings.policy_cache_seconds))
    return build_service_app(
        SERVICE,
        settings,
        clock,
        group_id=WALLET_GROUP,
        handlers=handlers,
        routes=ROUTES,
        outputs=OUTPUTS,
        on_start=store.ready,
        on_stop=redis.aclose,
        replicated=replication_barrier(redis, settings, SERVICE, PREFIX),
    )
