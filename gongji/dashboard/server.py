"""`gongji dashboard`: the live page at http://127.0.0.1:18090/ and its server-sent events at
`/events`. It reads with the `dashboard` principal's rights only (the statistics and the
reconciliations: aggregates, no personal data) and asks each service's operations port for its
health and lag. Every asset is served from here: the page runs offline."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from gongji.dashboard.view import ServiceState, View
from gongji.ops.launcher import SERVICE_NAMES, http_port
from shared.clock import Clock, clock_from_settings, shanghai_minute
from shared.credentials import aiokafka_options
from shared.operations import LOOPBACK_HOSTS, only_for_hosts
from shared.settings import Settings
from shared.topics import CLAIMS, PROVINCE_CLAIMS, RECONCILIATION, STATISTICS, pattern_of

logger = logging.getLogger("gongji.dashboard")
ASSETS = Path(__file__).parent
PRINCIPAL = "dashboard"
CLAIM_PATTERNS = frozenset({CLAIMS.name, PROVINCE_CLAIMS[0].pattern})
# Scripts and styles from this server only; the heat map's cells set their shade inline.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


async def follow(settings: Settings, view: View, days: int = 2) -> None:
    """Reads the statistics and the reconciliations from `days` ago on, and every one published after."""
    consumer = AIOKafkaConsumer(**aiokafka_options(settings, PRINCIPAL), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic.name, number)
            for topic in (STATISTICS, RECONCILIATION)
            for number in range(topic.partitions(settings))
        ]
        consumer.assign(partitions)
        since_ms = int((time.time() - days * 86400) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        for partition in partitions:
            if (at := found.get(partition)) is not None:
                consumer.seek(partition, at.offset)
            else:
                await consumer.seek_to_end(partition)
        models = {STATISTICS.name: STATISTICS.model, RECONCILIATION.name: RECONCILIATION.model}
        ends = await consumer.end_offsets(partitions)
        while True:
            if not view.caught_up:
                view.caught_up = all([await consumer.position(one) >= end for one, end in ends.items()])
            for batch in (await consumer.getmany(timeout_ms=500, max_records=5_000)).values():
                for record in batch:
                    try:
                        view.take(models[record.topic].model_validate_json(record.value or b""))  # type: ignore[arg-type]
                    except ValidationError:
                        logger.warning("%s@%d is no %s: skipped", record.topic, record.offset, record.topic)
    finally:
        await consumer.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as answer:  # noqa: S310 - loopback, our own ports
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def service_state(name: str, base: str) -> tuple[ServiceState, float | None]:
    """A service's health and lag from its operations port, and (settlement) the claims it took in."""
    try:
        status, body = _get(f"{base}/health")
        _, metrics = _get(f"{base}/metrics")
    except OSError as error:
        return ServiceState(name, False, f"未运行 not running ({type(error).__name__})", None), None
    lag, offered = 0, 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "gongji_consumer_lag":
                lag += int(sample.value)
            elif (
                sample.name == "gongji_messages_total"
                and sample.labels.get("service") == "settlement"
                and pattern_of(sample.labels.get("topic", "")) in CLAIM_PATTERNS
            ):
                offered += sample.value
    detail = body.strip().splitlines()[0] if body.strip() else ""
    return ServiceState(name, status == 204, detail, lag), offered if name == "settlement" else None


async def probe(settings: Settings, view: View, clock: Clock) -> None:
    """Each service's health and lag, and the totals for the rates, every second."""
    while True:
        states = await asyncio.gather(
            *(
                asyncio.to_thread(service_state, name, f"http://127.0.0.1:{http_port(settings, name)}")
                for name in SERVICE_NAMES
            )
        )
        view.services = [state for state, _ in states]
        view.offered = next((offered for _, offered in states if offered is not None), None)
        view.sample(clock.now())
        await asyncio.sleep(1)


def build_app(view: View, clock: Clock, interval: float = 1.0) -> Starlette:
    async def page(_: Request) -> Response:
        return FileResponse(ASSETS / "page.html", headers=HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("dashboard.js", "dashboard.css"):
            return Response("not found\n", 404, headers=HEADERS)
        return FileResponse(ASSETS / name, headers=HEADERS)

    async def events(_: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"  # the browser reconnects a second after a break
            while True:
                now = clock.now()
                view.forget_before(shanghai_minute(now - timedelta(days=2))[:10])
                yield f"data: {json.dumps(view.parts(now), ensure_ascii=False)}\n\n"
                await asyncio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

    return Starlette(
        routes=[Route("/", page), Route("/assets/{name}", asset), Route("/events", events)],
    )


async def serve(settings: Settings, port: int) -> None:
    """The page, its events, and the readers behind them, until stopped."""
    view, clock = View(), clock_from_settings(settings)
    app = only_for_hosts(
        build_app(view, clock), LOOPBACK_HOSTS | {host.lower() for host in settings.http_allowed_hosts}
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    readers = [asyncio.create_task(follow(settings, view)), asyncio.create_task(probe(settings, view, clock))]
    try:
        await server.serve()
    finally:
        for reader in readers:
            reader.cancel()
