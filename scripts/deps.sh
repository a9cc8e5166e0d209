#!/usr/bin/env bash
# Installs and starts what the tests and the local stack need, skipping what
# is already there. Usage: scripts/deps.sh [run|test]
#   run:  libvips (the thumbnailer links it)
#   test: also Chromium (browser tests), redis-server and nats-server running,
#         and the Node validators the committer's FHIR test uses.
set -euo pipefail
mode=${1:-test}
cd "$(dirname "$0")/.."

need=()
want_pkg() { dpkg -s "$1" >/dev/null 2>&1 || need+=("$1"); }
want_pkg libvips-dev
want_pkg pkg-config
if [ "$mode" = test ]; then
  want_pkg libvips-tools
  want_pkg chromium
  want_pkg redis-server
  want_pkg nats-server
  command -v node >/dev/null 2>&1 || need+=(nodejs npm)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

[ "$mode" = test ] || exit 0

# Redis and NATS, started as the machine's own services when missing.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "deps: starting redis-server"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "deps: starting nats-server"
  mkdir -p /var/lib/nats-server 2>/dev/null || true
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server >/tmp/nats-server.log 2>&1 &
fi
for _ in $(seq 50); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
  sleep 0.2
done
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null

# The offline FHIR R4 validators (pinned in package-lock.json).
v=services/committer/testdata/fhirvalidate
if [ -f "$v/package-lock.json" ] && [ ! -d "$v/node_modules" ]; then
  echo "deps: npm ci in $v"
  npm ci --prefix "$v" --no-audit --no-fund --loglevel=error
fi
