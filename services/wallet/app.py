"""The wallet service process (the only module of this service that imports FastStream)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.wallet.handlers import WalletHandlers
from services.wallet.store import WalletStore
from shared.clock import Clock, clock_from_setting
from shared.policy import PolicyCache
from shared.redis_client import connect
from shared.runtime import build_service_app
from shared.settings import Settings
from shared.topics import (
    ACCOUNT_CREDITS, ACCOUNT_SPENDS, DRAW_ANSWERS, DRAW_REQUESTS, ENROLLMENT, REFUND_REQUESTS,
    RELATIONSHIP_EVENTS, SUPERVISION, WALLET_COMMANDS, WALLET_EVENTS, WALLET_GROUP,
)

SERVICE = "wallet"


def build_app(settings: Settings, clock: Clock | None = None) -> AsgiFastStream:
    clock = clock or clock_from_setting(settings.clock_fixed_at)
    redis = connect(settings, SERVICE)
    store = WalletStore(redis)
    handlers = WalletHandlers(store, clock, PolicyCache(redis, settings.policy_cache_seconds))
    return build_service_app(
        SERVICE, settings, clock,
        group_id=WALLET_GROUP,
        routes=[
            (ACCOUNT_CREDITS, handlers.on_credits),
            (ACCOUNT_SPENDS, handlers.on_spends),
            (WALLET_COMMANDS, handlers.on_commands),
            (RELATIONSHIP_EVENTS, handlers.on_relationship_events),
            (ENROLLMENT, handlers.on_enrollment),
            (SUPERVISION, handlers.on_supervision),
            (DRAW_REQUESTS, handlers.on_draw_requests),
            (REFUND_REQUESTS, handlers.on_refund_requests),
        ],
        outputs=[WALLET_EVENTS, DRAW_ANSWERS],
        on_start=store.ready,
        on_stop=redis.aclose,
    )
