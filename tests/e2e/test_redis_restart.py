"""kill -9 of Redis while it holds a large append-only file, and `gongji audit --deep` started at
once: the audit waits while Redis loads its data, then reports, valid (every write was on disk
before it was answered). Before issue 21 it ended with BusyLoadingError's traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gongji.ops import infra
from shared.credentials import redis_options
from shared.principals import OPERATOR
from shared.redis_client import in_database

pytestmark = pytest.mark.timeout(600)

# Ballast in a database of its own (the integration tests use 13 to 15): millions of keys in the
# append-only file make a restart load for seconds, as a year of claims would.
BALLAST_DATABASE = 12
BALLAST_KEYS = 6_000_000
# Written in steps: one script of millions of writes would hold Redis past its 5 s busy threshold,
# and the running services would be answered BUSY.
BALLAST_STEP = 300_000
# A step, the flush and the rewrite may each take longer than redis-py's 5 s default on busy cores.
BALLAST_SOCKET_TIMEOUT_SECONDS = 120
WRITE_BALLAST = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', 'ballast:' .. i, i) end
return 1
"""


def kill_9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.waitpid(pid, os.WNOHANG)  # this session's own child is reaped, not left a zombie
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"Redis (pid {pid}) did not die")


async def test_the_deep_audit_waits_for_a_redis_loading_its_data_then_reports(
    infrastructure, service_processes
) -> None:
    settings = infrastructure
    ballast = Redis.from_url(
        in_database(settings.redis_url, BALLAST_DATABASE),
        socket_timeout=BALLAST_SOCKET_TIMEOUT_SECONDS,
        **redis_options(settings, OPERATOR.name),
    )
    paths = infra.Paths(settings.state_dir)
    try:
        # Kept as commands in the append-only file: a rewrite meanwhile would turn most of the ballast
        # into an RDB preamble, loaded in two or three seconds, sooner than the audit's process
        # starts (it happened in CI). Replayed, 6 million SETs take ten seconds and more. The kill
        # below ends the setting with the process.
        await ballast.config_set("auto-aof-rewrite-percentage", 0)
        for first in range(1, BALLAST_KEYS + 1, BALLAST_STEP):
            await ballast.eval(WRITE_BALLAST, 0, first, first + BALLAST_STEP - 1)
        assert await ballast.dbsize() == BALLAST_KEYS
        await ballast.aclose()
        kill_9(int(paths.redis_pid.read_text()))
        assert infra.start_redis(settings)
        audit = subprocess.run(
            [sys.executable, "-m", "gongji", "audit", "--deep", "--json", "--wait", "120"],
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert "Traceback" not in audit.stderr, audit.stderr
        report = json.loads(audit.stdout)
        print(f"the audit waited {report['redis_loading_seconds']} s for Redis to load its data")
        assert report["redis_loading_seconds"] > 0, "Redis had loaded before the audit read it: more ballast"
        assert report["valid?"], (report["differences_by_invariant"], report["first"])
        assert audit.returncode == 0
    finally:
        infra.up(settings)  # the memory bound and the rest that a restart does not keep
        ballast = Redis.from_url(
            in_database(settings.redis_url, BALLAST_DATABASE),
            socket_timeout=BALLAST_SOCKET_TIMEOUT_SECONDS,
            **redis_options(settings, OPERATOR.name),
        )
        await ballast.flushdb(asynchronous=True)  # freed in the background: millions of keys take seconds
        with contextlib.suppress(ResponseError):  # "already in progress": Redis began one itself
            await ballast.bgrewriteaof()  # later restarts load only what the services hold
        await ballast.aclose()
