#!/usr/bin/env bash
# The system's main job on a fresh machine: install, bring the infrastructure up, start the three
# services and the dashboard, build a synthetic population and stream claims through it, then print
# the report (and a picture of the dashboard under load, reports/dashboard.png).
# Options after the script name go to `gongji load` (e.g. --rate 2000 --duration 60).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
.venv/bin/gongji infra up
logs=$(.venv/bin/python -c 'from shared.settings import Settings; print(Settings().state_dir / "logs")')
mkdir -p "$logs"
.venv/bin/gongji run all > "$logs/services.log" 2>&1 &
services=$!
trap 'kill -TERM $services 2>/dev/null; wait $services 2>/dev/null || true' EXIT
# The services' HTTP ports follow the settings (GONGJI_HTTP_PORT_BASE).
ports=$(.venv/bin/python -c 'from gongji.ops.launcher import SERVICE_NAMES, http_port; from shared.settings import Settings
print(*(http_port(Settings(), name) for name in SERVICE_NAMES))')
for port in $ports; do
  for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$port/health" -o /dev/null && break; sleep 0.5; done
  curl -fs "http://127.0.0.1:$port/health" -o /dev/null \
    || { echo "the service on port $port did not start: see .gongji/logs/services.log" >&2; exit 1; }
done
echo "services up: health and Prometheus metrics on $(for port in $ports; do printf 'http://127.0.0.1:%s ' "$port"; done)(/health, /metrics)"
dashboard=$(.venv/bin/python -c 'from shared.settings import Settings; print(Settings().dashboard_port)')
for _ in $(seq 1 60); do curl -fs "http://127.0.0.1:$dashboard/" -o /dev/null && break; sleep 0.5; done
echo "live dashboard: http://127.0.0.1:$dashboard/ (open it now: the load follows)"
.venv/bin/gongji load --picture reports/dashboard.png "$@"
.venv/bin/gongji audit --deep --wait 60
