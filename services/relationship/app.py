"""The relationship service process (the only module of this service that imports FastStream)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.relationship.handlers import SERVICE, RelationshipHandlers
from services.relationship.store import RelationshipStore
from shared.clock import Clock, clock_from_setting
from shared.policy import PolicyCache
from shared.redis_client import connect
from shared.runtime import build_service_app
from shared.settings import Settings
from shared.topics import ENROLLMENT, KINSHIP, RELATIONSHIP_COMMANDS, RELATIONSHIP_EVENTS, RELATIONSHIP_GROUP


def build_app(settings: Settings, clock: Clock | None = None) -> AsgiFastStream:
    clock = clock or clock_from_setting(settings.clock_fixed_at)
    redis = connect(settings, SERVICE)
    store = RelationshipStore(redis)
    handlers = RelationshipHandlers(store, PolicyCache(redis, settings.policy_cache_seconds), clock)
    return build_service_app(
        SERVICE, settings, clock,
        group_id=RELATIONSHIP_GROUP,
        routes=[
            (ENROLLMENT, handlers.on_enrollment),
            (KINSHIP, handlers.on_kinship),
            (RELATIONSHIP_COMMANDS, handlers.on_commands),
        ],
        outputs=[RELATIONSHIP_EVENTS],
        on_start=store.ready,
        on_stop=redis.aclose,
    )
