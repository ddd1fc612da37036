"""A service's own HTTP port, for operating it: `/health` (is it consuming?), `/status` (its pid, and
its consumers' partitions and lag, for `gongji status`) and `/metrics` (Prometheus), and nothing
else. No AsyncAPI page: FastStream's page comes with a "try it out" route that publishes any
payload to any topic with the service's own Kafka credentials, and loads its scripts from public
CDNs; the contract is `docs/asyncapi.json`, written by `gongji docs`.

The port listens on loopback only, and answers only requests addressed to a loopback name (or one
that the operator allows): a web page that rebinds its own host name to 127.0.0.1 still sends its
own name in `Host`, and is refused.

A service that may no longer consume — Kafka refused its group, its topics or its producer — ends
its process with EXIT_FATAL, so that its supervisor restarts it and its operator sees it; it never
loops on the refusal while its health says all is well.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ProducerFenced,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from faststream.asgi import AsgiResponse
from faststream.asgi.types import ASGIApp, Receive, Scope, Send
from prometheus_client import make_asgi_app

if TYPE_CHECKING:
    from shared.acknowledgements import Acknowledgements

logger = logging.getLogger("gongji")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
# The process's exit status when Kafka refuses it for good (an authorization or fencing error).
EXIT_FATAL = 3
_FATAL = (
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    SaslAuthenticationFailed,
    ProducerFenced,
)


def is_fatal(error: BaseException) -> bool:
    """Kafka will not let this process do its work until an operator acts: retrying is a loop."""
    return isinstance(error, _FATAL)


def end_process(error: BaseException, what: str) -> None:
    """Ends the process at once, as a kill -9 would (every effect is idempotent, nothing committed
    is lost); its supervisor starts it again, and it comes back when the operator has acted."""
    logger.critical("%s: %s (%s); the process ends with status %d", what, type(error).__name__, error, EXIT_FATAL)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def host_name(header: str) -> str:
    """`name`, `name:port`, `[v6]` or `[v6]:port` → the name (a v6 address keeps its brackets)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.split(":", 1)[0]


def host_allowed(scope: Scope, allowed: frozenset[str]) -> bool:
    """The request's `Host` names a host we answer to (any port: the socket is ours already)."""
    header = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
    return host_name(header) in allowed


def only_for_hosts(app: ASGIApp, allowed: frozenset[str]) -> ASGIApp:
    refused = AsgiResponse(b"unknown host\n", 400, {"Content-Type": "text/plain; charset=utf-8"})

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        await (app if host_allowed(scope, allowed) else refused)(scope, receive, send)

    return guarded


def consumption_problems(
    pipelines: Sequence[Acknowledgements], stale_after: float, now: float | None = None
) -> list[str]:
    """What keeps each consumer from consuming: not (yet) a member of its group, or no progress
    (a caught-up poll or a confirmed batch) for longer than `stale_after` seconds."""
    now = time.monotonic() if now is None else now
    problems = []
    for pipeline in pipelines:
        if not pipeline.member:
            problems.append(f"{pipeline.subscriber}: not a member of its consumer group")
        elif now - pipeline.progressed_at > stale_after:
            problems.append(f"{pipeline.subscriber}: no progress for {now - pipeline.progressed_at:.0f} s")
    return problems


def health_route(pipelines: Sequence[Acknowledgements], stale_after: float) -> ASGIApp:
    """204 while every consumer consumes, else 503 with what is wrong."""

    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        problems = consumption_problems(pipelines, stale_after)
        body = "".join(f"{problem}\n" for problem in problems).encode()
        await AsgiResponse(body, 503 if problems else 204, {"Content-Type": "text/plain; charset=utf-8"})(
            scope, receive, send
        )

    return health


def status_route(service: str, pipelines: Sequence[Acknowledgements], stale_after: float) -> ASGIApp:
    """What `gongji status` shows of an instance: its process, whether it is healthy, and each
    consumer's partitions and lag (JSON)."""

    async def status(scope: Scope, receive: Receive, send: Send) -> None:
        consumers = [
            {
                "subscriber": pipeline.subscriber,
                "member": pipeline.member,
                "partitions": len(pipeline.consumer.assignment()) if pipeline.consumer is not None else 0,
                "lag": pipeline.lag,
            }
            for pipeline in pipelines
        ]
        body = {
            "name": service,
            "pid": os.getpid(),
            "problems": consumption_problems(pipelines, stale_after),
            "consumers": consumers,
        }
        await AsgiResponse(json.dumps(body).encode(), 200, {"Content-Type": "application/json"})(scope, receive, send)

    return status


def operations_routes(
    service: str, pipelines: Sequence[Acknowledgements], stale_after: float, extra_hosts: Sequence[str] = ()
) -> list[tuple[str, Any]]:
    allowed = LOOPBACK_HOSTS | {host.lower() for host in extra_hosts}
    return [
        ("/health", only_for_hosts(health_route(pipelines, stale_after), allowed)),
        ("/status", only_for_hosts(status_route(service, pipelines, stale_after), allowed)),
        ("/metrics", only_for_hosts(make_asgi_app(), allowed)),
    ]
