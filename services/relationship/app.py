"""The relationship service process (the only module of this service that imports FastStream)."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.relationship.handlers import SERVICE, RelationshipHandlers
from services.relationship.store import PREFIX, RelationshipStore
from shared.clock import Clock, clock_from_settings
from shared.policy import PolicyCache
from shared.redis_client import connect, replication_barrier
from shared.runtime import Route, build_service_app
from shared.settings import Settings
from shared.topics import ENROLLMENT, KINSHIP, RELATIONSHIP_COMMANDS, RELATIONSHIP_EVENTS, RELATIONSHIP_GROUP

ROUTES = (
    Route((ENROLLMENT,), RelationshipHandlers.on_enrollment),
    Route((KINSHIP,), RelationshipHandlers.on_kinship),
    Route((RELATIONSHIP_COMMANDS,), RelationshipHandlers.on_commands),
)
OUTPUTS = (RELATIONSHIP_EVENTS,)


def build_app(settings: Settings, clock: Clock | None = None) -> AsgiFastStream:
    clock = clock or clock_from_settings(settings)
    redis = connect(settings, SERVICE)
    store = RelationshipStore(redis)
    handlers = RelationshipHandlers(store, PolicyCache(redis, settings.policy_cache_seconds), clock)
    return build_service_app(
        SERVICE,
        settings,
        clock,
        group_id=RELATIONSHIP_GROUP,
        handlers=handlers,
        routes=ROUTES,
        outputs=OUTPUTS,
        on_start=store.ready,
        on_stop=redis.aclose,
        replicated=replication_barrier(redis, settings, SERVICE, PREFIX),
    )
