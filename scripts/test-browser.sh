#!/usr/bin/env bash
# Playground (`/`) tests in a real browser: Debian's headless Chromium driven by
# playwright-core (never downloads a browser), against the real `anyaccel serve`
# with the tiny fixture model. Works on a fresh Debian 12 machine:
#   - installs chromium (and node/npm/curl if missing) with apt, idempotently;
#   - `npm ci` in tests/browser (pinned by its package-lock.json);
#   - builds `anyaccel`, starts two servers on free ports (one open, one with an
#     API key and a one-slot queue, for the 401 and 429 cases), waits for
#     /health/ready, runs the tests with node's built-in runner, stops the servers.
# Artifacts (screenshots, server logs): target/browser-artifacts/.
#
#   scripts/test-browser.sh
#   CHROMIUM=/path/to/chromium scripts/test-browser.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then sudo="sudo"; fi

chromium="${CHROMIUM:-/usr/bin/chromium}"
need=()
[[ -x "$chromium" ]] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "== apt-get install ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 18)); then
  echo "node $(node --version) is too old; the browser tests need node 18 or newer" >&2
  exit 1
fi

echo "== npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "== ONNX Runtime"
scripts/fetch-onnxruntime.sh >/dev/null

# The binary `cargo test --workspace` built (the integration tests run it):
# after the README's test command this is a no-op, where `cargo build -p
# anyaccel` would build the dependencies again with its own feature set (~4 min).
echo "== anyaccel binary (cargo test --workspace --no-run)"
cargo test --workspace --locked --no-run
bin="${CARGO_TARGET_DIR:-$root/target}/debug/anyaccel"

artifacts="$root/target/browser-artifacts"
mkdir -p "$artifacts"
model="${ANYACCEL_MODEL:-fixtures/models/tiny-sd15}"
key="browser-test-$$-$RANDOM"

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

pids=()
stop_servers() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_servers EXIT

# start NAME PORT EXTRA_ARGS... : starts a server and waits until it is ready.
start() {
  local name="$1" port="$2"
  shift 2
  "$bin" serve --model "$model" --sizes 64x64,128x128 --device cpu \
    --host 127.0.0.1 --port "$port" "$@" >"$artifacts/server-$name.log" 2>&1 &
  pids+=("$!")
  local pid="$!"
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/health/ready" 2>/dev/null; then
      echo "server '$name' ready on port $port"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server '$name' exited; its log:" >&2
      tail -n 50 "$artifacts/server-$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "server '$name' not ready after 120 s; its log:" >&2
  tail -n 50 "$artifacts/server-$name.log" >&2
  return 1
}

echo "== start servers"
open_port="$(free_port)"
start open "$open_port" --pool browser-test
keyed_port="$(free_port)"
ANYACCEL_API_KEYS="$key" start keyed "$keyed_port" --pool browser-test-keyed --max-queue 1

echo "== browser tests (chromium: $("$chromium" --version 2>/dev/null | head -n 1))"
status=0
ANYACCEL_URL="http://127.0.0.1:$open_port/" \
ANYACCEL_KEYED_URL="http://127.0.0.1:$keyed_port/" \
ANYACCEL_TEST_KEY="$key" \
CHROMIUM="$chromium" \
ARTIFACTS_DIR="$artifacts" \
  node --test tests/browser/playground.test.mjs || status=$?

if ((status != 0)); then
  echo "browser tests failed; screenshots and server logs are in $artifacts" >&2
  exit "$status"
fi
echo "== browser tests passed (screenshots: $artifacts)"
