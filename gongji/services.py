"""Runs the service processes: one uvicorn server per service, each with its health/metrics port."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import uvicorn
from faststream.asgi import AsgiFastStream

from shared.settings import Settings

SERVICE_NAMES = ("relationship", "wallet", "settlement")


def app_factory(name: str) -> Callable[[Settings], AsgiFastStream]:
    if name == "relationship":
        from services.relationship.app import build_app
    elif name == "wallet":
        from services.wallet.app import build_app
    elif name == "settlement":
        from services.settlement.app import build_app
    else:
        raise ValueError(f"unknown service {name!r}; choose one of {', '.join(SERVICE_NAMES)}")
    return build_app


def http_port(settings: Settings, name: str) -> int:
    return settings.http_port_base + SERVICE_NAMES.index(name)


class _StopOnSignal(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would end "killed by
    SIGTERM"; a service stopped on request has done its work and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_exit)
        yield


def run_service(name: str, settings: Settings) -> None:
    """Serves until SIGTERM/SIGINT; the app then stops its subscribers (the batch in hand is
    finished and committed), closes its producer and Redis, and the process exits 0."""
    app = app_factory(name)(settings)
    # uvloop: the claim path spends much of its time in socket writes and callbacks (issue 14).
    config = uvicorn.Config(app, host="127.0.0.1", port=http_port(settings, name), log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=30, loop="uvloop")
    _StopOnSignal(config).run()


def run_all(settings: Settings) -> int:
    """Three separate processes, stopped together; returns the worst exit code."""
    children = [
        subprocess.Popen([sys.executable, "-m", "gongji", "run", name]) for name in SERVICE_NAMES
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
