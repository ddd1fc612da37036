#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine: redis-server, Java, Maven and
# Chromium where missing (apt), and the Python environment in .venv. The Kafka jars come from Maven
# Central on the first `gongji infra up`. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
# The dashboard's browser test and its picture: Debian's Chromium, headless, and Chinese fonts.
command -v chromium >/dev/null || need+=(chromium)
dpkg-query -W fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
# `gongji faults` cuts a Kafka node off the network with `ip route`.
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
[ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
# Every dependency, tests' included, at the version and with the hashes of requirements.lock (made
# by pip-compile from pyproject.toml; tests/unit/test_supply_chain.py keeps the two in step): a
# package that differs from the one locked is refused. Then the project itself, with nothing more.
.venv/bin/pip install -q --require-hashes -r requirements.lock
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
