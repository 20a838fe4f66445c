#!/usr/bin/env bash
# Smoke test of the CPU image: runs it the way the Deployment does (uid
# 10001, read-only root filesystem, no capabilities, writable /tmp and
# /models only) with a tiny model folder mounted read-only, and polls
# /health/ready until it answers 200. Then checks /health/live and /info,
# and with SMOKE_GENERATE=1 asks for one small image. SMOKE_DEVICE=openvino
# (amd64) runs it as a pool serving an onnx-openvino artifact does: through
# the image's OpenVINO build of ONNX Runtime.
#
#   scripts/deploy/smoke-cpu-image.sh                       # builds the image if missing
#   IMAGE=localhost/anyaccel:dev MODEL_DIR=/path/to/model scripts/deploy/smoke-cpu-image.sh
#
# Only loopback is used: the port is published on 127.0.0.1 (or, with
# SMOKE_NETWORK=host, the server listens on the host's loopback-reachable
# port) and every request goes to 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
IMAGE="${IMAGE:-localhost/anyaccel:cpu-$arch}"
MODEL_DIR="${MODEL_DIR:-$root/fixtures/models/tiny-sd15}"
PORT="${PORT:-18080}"
TIMEOUT_SECS="${TIMEOUT_SECS:-180}"
NETWORK="${SMOKE_NETWORK:-publish}"

log() { echo "smoke-cpu-image: $*" >&2; }

[[ -f "$MODEL_DIR/model_index.json" ]] || { log "no model_index.json in $MODEL_DIR"; exit 1; }
if ! podman image exists "$IMAGE"; then
  IMAGE="$(IMAGE="$IMAGE" "$root/scripts/deploy/build-cpu-image.sh")"
fi

# shellcheck source=scripts/deploy/podman-env.sh
. "$root/scripts/deploy/podman-env.sh"
podman_setup "$IMAGE"

name="anyaccel-smoke-$$"
net_args=(-p "127.0.0.1:$PORT:8080")
port_env=8080
if [[ "$NETWORK" == host ]]; then
  net_args=(--network host)
  port_env="$PORT"
fi

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    log "container log (last 40 lines):"
    "${PODMAN[@]}" logs --tail 40 "$name" >&2 2>&1 || true
  fi
  "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

device_env=(-e ANYACCEL_DEVICE=cpu)
if [[ "${SMOKE_DEVICE:-cpu}" == openvino ]]; then
  # what crates/deploy/src/render/pod.rs sets for onnx-openvino artifacts
  device_env=(-e ANYACCEL_DEVICE=openvino -e ORT_DYLIB_PATH=/opt/onnxruntime-openvino/lib/libonnxruntime.so)
fi

log "starting $IMAGE with $MODEL_DIR (device ${SMOKE_DEVICE:-cpu})"
"${PODMAN[@]}" run -d --name "$name" "${PODMAN_RUN_OPTS[@]}" \
  --read-only --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /tmp:rw,size=512m,mode=1777 \
  --tmpfs /models:rw,size=1g,mode=0777 \
  -v "$MODEL_DIR:/model:ro" \
  -e ANYACCEL_MODEL=/model \
  -e ANYACCEL_PORT="$port_env" \
  "${device_env[@]}" \
  -e ANYACCEL_POOL=smoke \
  -e ANYACCEL_ACCELERATOR="cpu-$arch" \
  -e ANYACCEL_DRAIN_TIMEOUT_SECS=5 \
  "${net_args[@]}" \
  "$IMAGE" serve >/dev/null

base="http://127.0.0.1:$PORT"
deadline=$((SECONDS + TIMEOUT_SECS))
code=000
while (( SECONDS < deadline )); do
  if [[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name")" != true ]]; then
    log "the server exited before becoming ready"
    exit 1
  fi
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/health/ready" || true)"
  [[ "$code" == 200 ]] && break
  sleep 1
done
if [[ "$code" != 200 ]]; then
  log "/health/ready still answers $code after ${TIMEOUT_SECS}s"
  exit 1
fi
log "/health/ready: 200 after $((SECONDS))s"

for path in /health/live /info; do
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base$path")"
  [[ "$code" == 200 ]] || { log "$path answered $code"; exit 1; }
  log "$path: 200"
done
if [[ "${SMOKE_DEVICE:-cpu}" == openvino ]]; then
  device="$(curl -s --max-time 5 "$base/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["device"])')"
  [[ "$device" == *OpenVINO* ]] || { log "/info device is \"$device\", not OpenVINO"; exit 1; }
  log "/info device: $device"
fi

if [[ -n "${SMOKE_GENERATE:-}" ]]; then
  body="$(mktemp)"
  code="$(curl -s -o "$body" -w '%{http_code}' --max-time 120 \
    -H 'content-type: application/json' \
    -d '{"prompt":"a red cube","n":1,"size":"64x64","response_format":"b64_json"}' \
    "$base/v1/images/generations")"
  [[ "$code" == 200 ]] || { log "/v1/images/generations answered $code: $(head -c 300 "$body")"; exit 1; }
  grep -q '"b64_json"' "$body" || { log "no image in the response"; exit 1; }
  rm -f "$body"
  log "/v1/images/generations: 200 with an image"
fi

# Drain: SIGTERM must stop the server within the grace the Deployment gives.
"${PODMAN[@]}" stop --time 30 "$name" >/dev/null
log "stopped cleanly"
echo "smoke-cpu-image: 1 passed, 0 failed"
