"""Runs the service processes: one uvicorn server per service instance, each with its health/metrics
port. Instances of one service share its consumer groups: Kafka shares the partitions among them,
and a stopped or crashed one's partitions move to the others."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from faststream.asgi import AsgiFastStream

from gongji.ops.infra import child_environment, port_open
from shared.settings import PROJECT_ROOT, Settings

SERVICE_NAMES = ("relationship", "wallet", "settlement")
START_TIMEOUT_SECONDS = 45.0
STOP_TIMEOUT_SECONDS = 40.0


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


# Instance i of a service listens on base + its index + i × INSTANCE_PORT_STEP (18080, 18180, …).
INSTANCE_PORT_STEP = 100
MAX_INSTANCES = 16


def http_port(settings: Settings, name: str, instance: int = 0) -> int:
    return settings.http_port_base + SERVICE_NAMES.index(name) + INSTANCE_PORT_STEP * instance


class _StopOnSignal(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would end "killed by
    SIGTERM"; a service stopped on request has done its work and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_exit)
        yield


def run_service(name: str, settings: Settings, instance: int = 0) -> None:
    """Serves until SIGTERM/SIGINT; the app then stops its subscribers (the batch in hand is
    finished and committed), closes its producer and Redis, and the process exits 0."""
    app = app_factory(name)(settings)
    # The standard asyncio loop: on uvloop the claim path ran far slower here (aiokafka over TLS;
    # one measurement at 500 claims/s: p50 9.6 s against 1.0 s).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=http_port(settings, name, instance),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=30,
        loop="asyncio",
    )
    _StopOnSignal(config).run()


def run_instances(names: tuple[str, ...], instances: int, dashboard: bool) -> int:
    """`instances` separate processes of each service (and the dashboard), stopped together: a
    signal is passed on to each. Returns the worst exit code."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "gongji", "run", name, "--instance", str(instance)], env=child_environment()
        )
        for instance in range(instances)
        for name in names
    ]
    if dashboard:
        children.append(subprocess.Popen([sys.executable, "-m", "gongji", "dashboard"], env=child_environment()))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


class ServiceFailed(RuntimeError):
    """A service process that did not come up or did not stop in time; the message ends with its log."""


class ServiceProcess:
    """One service as a separate OS process (`python -m gongji run NAME`), as in production, logging
    to `log_dir/NAME.log`; for the tests and `gongji bench`, which measures its CPU by its pid."""

    def __init__(
        self, name: str, settings: Settings, log_dir: Path, env: dict[str, str] | None = None, instance: int = 0
    ) -> None:
        self.name = name
        self.instance = instance
        self.settings = settings
        self.env = child_environment(env)
        self.log = log_dir / (f"{name}.log" if instance == 0 else f"{name}-{instance}.log")
        self.process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return http_port(self.settings, self.name, self.instance)

    def start(self) -> None:
        self.spawn()
        self.wait_healthy()

    def spawn(self) -> None:
        """Starts the process without waiting for it: instances started together come up together."""
        port = self.port
        # Another instance on the port would answer the health check in this one's place.
        if port_open("127.0.0.1", port):
            raise ServiceFailed(f"port {port} of {self.name} is taken: is a service already running (`gongji run`)?")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gongji", "run", self.name, "--instance", str(self.instance)],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )

    def wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceFailed(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status in (200, 204):
                        return
            except OSError:
                time.sleep(0.2)
        raise ServiceFailed(f"{self.name} not healthy within {START_TIMEOUT_SECONDS}s:\n{self.tail()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise ServiceFailed(f"{self.name} did not stop within {timeout}s:\n{self.tail()}") from None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
