#!/usr/bin/env bash
# Issue 16's GPU verification as one run (python/gpu_check/check.py does the work):
# builds random-weight SD 1.5-sized (and, with --big sd15,sdxl, SDXL-sized) models,
# compiles them with `anyaccel compile --target onnx-fp16`, checks the tiny fixtures'
# CUDA images against diffusers fp16, times anyaccel (serve + bench) against diffusers
# fp16 (SDPA) and diffusers + torch.compile, and writes gpu-check.json and gpu-check.md.
#
#   scripts/gpu/check.sh [--out DIR] [--big sd15|sdxl|sd15,sdxl] [--budget SECONDS]
#   scripts/gpu/check.sh --dry-run [--out DIR]      # CPU, tiny fixtures, CPU EP (CI runs it)
#
# On the GPU machine (after scripts/gpu/stage.sh's calls have unpacked the stage):
#   python3 with torch+CUDA; PYTHONPATH=/tmp/site (diffusers, optimum, onnxruntime-gpu);
#   ANYACCEL_BIN (default /tmp/stage/anyaccel, else target/release/anyaccel);
#   ANYACCEL_ORT_LIB (default /tmp/site/onnxruntime/capi/libonnxruntime.so.<version>).
# Dry run: .venv/bin/python, ANYACCEL_BIN or target/debug/anyaccel, the CPU ONNX Runtime.
# Exit status: 0 when every step and check passed; 1 naming the failed steps (the JSON
# and Markdown hold whatever was measured); 2 for bad arguments.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

dry=0
out=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done

if [[ $dry == 1 ]]; then
  py="${GPU_CHECK_PYTHON:-$root/.venv/bin/python}"
  bin="${ANYACCEL_BIN:-$root/target/debug/anyaccel}"
  out="${out:-$root/bench-out/gpu-check-dry}"
  extra=(--dry-run --budget "${GPU_CHECK_BUDGET:-240}")
else
  py="${GPU_CHECK_PYTHON:-python3}"
  if [[ -z "${ANYACCEL_BIN:-}" ]]; then
    for b in /tmp/stage/anyaccel "$root/target/release/anyaccel"; do
      [[ -x "$b" ]] && { bin="$b"; break; }
    done
  else
    bin="$ANYACCEL_BIN"
  fi
  if [[ -z "${ANYACCEL_ORT_LIB:-}" ]]; then
    ANYACCEL_ORT_LIB="$(ls /tmp/site/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)"
  fi
  out="${out:-${OUT:-$root/bench-out/gpu-check}}"
  extra=(--budget "${GPU_CHECK_BUDGET:-480}")
  [[ -n "${ANYACCEL_ORT_LIB:-}" ]] && extra+=(--ort-lib "$ANYACCEL_ORT_LIB")
fi
if [[ -z "${bin:-}" || ! -x "$bin" ]]; then
  echo "gpu-check: FAILED step setup: no anyaccel binary (${bin:-none}); set ANYACCEL_BIN" >&2
  exit 1
fi
if ! command -v "$py" >/dev/null 2>&1 && [[ ! -x "$py" ]]; then
  echo "gpu-check: FAILED step setup: no Python at $py; set GPU_CHECK_PYTHON" >&2
  exit 1
fi
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$py" -m gpu_check.check --out "$out" --bin "$bin" --python "$py" "${extra[@]}" "${args[@]}"
