#!/usr/bin/env bash
# Installs the peers the tests talk to, idempotently:
#   - .venv: the sidecar's Python environment, plus real clients (openai SDK, ...)
#   - Debian packages: prometheus (scraped by the metrics tests), redis-server
#     (the fleet-wide job queue's tests start their own on loopback)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -x scripts/setup-sidecar-env.sh ]]; then
  scripts/setup-sidecar-env.sh
elif [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi

stamp=.venv/.anyaccel-test-env
want="$(sha256sum scripts/requirements-test.txt | cut -d' ' -f1)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  echo "$want" > "$stamp"
fi

need=()
for pkg in prometheus redis-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package's own service is not wanted; tests start their own on loopback.
  $sudo systemctl disable --now prometheus redis-server >/dev/null 2>&1 || true
fi
echo "test env ready"
