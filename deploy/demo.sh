#!/usr/bin/env bash
# The system's main job on a fresh machine: install, bring the infrastructure up, start the three
# services, build a synthetic population and stream claims through it, then print the report.
# Options after the script name go to `gongji load` (e.g. --rate 2000 --duration 60).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
.venv/bin/gongji infra up
mkdir -p .gongji/logs
.venv/bin/gongji run all > .gongji/logs/services.log 2>&1 &
services=$!
trap 'kill -TERM $services 2>/dev/null; wait $services 2>/dev/null || true' EXIT
for port in 18080 18081 18082; do
  for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$port/health" -o /dev/null && break; sleep 0.5; done
done
echo "services up: health and Prometheus metrics on http://127.0.0.1:1808{0,1,2}/health and /metrics"
.venv/bin/gongji load "$@"
.venv/bin/gongji audit --deep --wait 60
