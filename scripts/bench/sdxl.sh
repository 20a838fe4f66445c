#!/usr/bin/env bash
# SDXL CPU benchmark: anyaccel (ONNX Runtime, --device cpu and --device openvino) against
# diffusers (PyTorch fp32 and bf16 autocast) on the same SDXL-shaped random-weight model
# (scripts/bench/make_sdxl_random.py), in one run on one machine. The SD 1.5 benchmark is
# scripts/bench/cpu.sh; this is its SDXL counterpart.
# Cases, each engine and case group in its own process (so each peak RSS is its own):
#   components at each size in SIZES: both text encoders (batch 2), one UNet step (batch 2,
#   as CFG runs it, with the pooled embedding and micro-conditioning time_ids), the VAE
#   decode (batch 1); then a whole image (IMAGE: size x steps x timed runs; Euler, CFG 7.5).
# Prints times, ratios (anyaccel / PyTorch), GFLOP/s (FLOPs counted by torch on the meta
# device), the GEMM ceilings and each process's peak resident memory, then the goals.
#
#   scripts/bench/sdxl.sh
#
# First run: builds the model (13 GB, ~2 minutes on 2 cores) and its ONNX export (13 GB,
# ~7 minutes, peak RSS ~19.7 GiB, recorded in .cache/bench/sdxl-random-onnx/EXPORT.json)
# under .cache/bench, and fetches ONNX Runtime (plain and OpenVINO). A run takes ~40
# minutes on 2 cores (AVX-512 BF16); its processes peak at ~18 GiB.
# Environment (all optional):
#   PYTHON=/path/to/python   a Python with torch, diffusers, transformers, optimum-onnx
#                            (default: .venv/bin/python, made by scripts/setup-sidecar-env.sh)
#   LAYERS=1,2,10            UNet transformer_layers_per_block (SDXL base's; 1,2,4 or fewer
#                            where the export's ~20 GiB peak does not fit, with another NAME)
#   NAME=sdxl-random         model folders .cache/bench/NAME (diffusers) and NAME-onnx
#   VARIANTS="cpu openvino"  anyaccel devices on the plain export: cpu (ONNX Runtime's own
#                            kernels), openvino (precision auto: bf16 on AVX512_BF16/AMX CPUs),
#                            openvino-f32
#   IMAGE_VARIANTS="cpu openvino"   variants that also run the whole image
#   SIZES="512 1024"  REPS=3  REPS_1024=2  IMAGE=512x10x1  THREADS=2
#   TORCH=1        also run diffusers (0: reuse the PyTorch results already in $OUT)
#   OUT=bench-out/sdxl       where the JSON results and the table go
#   TABLE_ONLY=1             only print the table again from the JSON files in $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

LAYERS=${LAYERS:-1,2,10}
NAME=${NAME:-sdxl-random}
VARIANTS=${VARIANTS:-cpu openvino}
IMAGE_VARIANTS=${IMAGE_VARIANTS:-cpu openvino}
SIZES=${SIZES:-512 1024}
REPS=${REPS:-3}
REPS_1024=${REPS_1024:-2}
IMAGE=${IMAGE:-512x10x1}
THREADS=${THREADS:-2}
TORCH=${TORCH:-1}
OUT=${OUT:-bench-out/sdxl}
[[ "$OUT" == /* ]] || OUT=$root/$OUT

if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "sdxl.sh: no .venv; creating it with scripts/setup-sidecar-env.sh" >&2
    scripts/setup-sidecar-env.sh >&2
  fi
  PYTHON=$root/.venv/bin/python
fi
model_torch=$root/.cache/bench/$NAME
model_onnx=$root/.cache/bench/$NAME-onnx

if [[ "${TABLE_ONLY:-0}" != 1 ]]; then
  "$PYTHON" -c 'import torch, diffusers, transformers, optimum.exporters.onnx, onnxruntime' 2>/dev/null || {
    echo "sdxl.sh: $PYTHON lacks torch/diffusers/transformers/optimum-onnx/onnxruntime; set PYTHON=" >&2
    exit 1
  }
  scripts/fetch-onnxruntime.sh >/dev/null
  if [[ " $VARIANTS " == *" openvino"* ]]; then scripts/fetch-onnxruntime.sh openvino >/dev/null; fi
  "$PYTHON" scripts/bench/make_sdxl_random.py --layers "$LAYERS" --name "$NAME" >/dev/null
  # build first, so compiling never overlaps a measurement
  cargo bench -p anyaccel-pipeline --bench sd --no-run >&2
  mkdir -p "$OUT"
  rm -f "$OUT"/anyaccel-*.json "$OUT"/image-*.png
  [[ "$TORCH" == 1 ]] && rm -f "$OUT"/torch-*.json
  cp "$model_onnx/EXPORT.json" "$OUT/export.json"

  reps_for() { if [[ "$1" == 1024 ]]; then echo "$REPS_1024"; else echo "$REPS"; fi; }
  anyaccel() { # variant cases size json
    local device=cpu precision=auto
    case "$1" in
      openvino) device=openvino ;;
      openvino-f32) device=openvino precision=f32 ;;
    esac
    ANYACCEL_BENCH_DEVICE=$device ANYACCEL_BENCH_PRECISION=$precision \
      ANYACCEL_BENCH_SAVE=$OUT/image-$1.png ANYACCEL_BENCH_MODEL=$model_onnx ANYACCEL_BENCH_CASES=$2 \
      ANYACCEL_BENCH_SIZES=$3 ANYACCEL_BENCH_REPS=$(reps_for "$3") ANYACCEL_BENCH_IMAGE=$IMAGE \
      ANYACCEL_BENCH_THREADS=$THREADS ANYACCEL_BENCH_JSON=$OUT/$4 \
      cargo bench -q -p anyaccel-pipeline --bench sd >/dev/null
  }
  torch() { # cases modes size json
    "$PYTHON" scripts/bench/sd_torch.py --model "$model_torch" --cases "$1" --modes "$2" \
      --sizes "$3" --reps "$(reps_for "$3")" --image "$IMAGE" --threads "$THREADS" --json "$OUT/$4" >/dev/null
  }

  echo "sdxl.sh: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run" >&2
  if [[ "$TORCH" == 1 ]]; then
    echo "== FLOP counts (meta device) and GEMM ceilings" >&2
    torch flops,ceiling fp32 "${SIZES// /,}" torch-flops.json
  fi
  for size in $SIZES; do
    for v in $VARIANTS; do
      echo "== anyaccel $v: components at $size" >&2
      anyaccel "$v" components "$size" "anyaccel-components-$v-$size.json"
    done
    if [[ "$TORCH" == 1 ]]; then
      echo "== diffusers: components at $size (fp32 and bf16)" >&2
      torch components fp32,bf16 "$size" "torch-components-$size.json"
    fi
  done
  for v in $IMAGE_VARIANTS; do
    echo "== anyaccel $v: whole image $IMAGE" >&2
    anyaccel "$v" image "${IMAGE%%x*}" "anyaccel-image-$v.json"
  done
  if [[ "$TORCH" == 1 ]]; then
    for m in fp32 bf16; do
      echo "== diffusers: whole image $IMAGE ($m), own process for its peak memory" >&2
      torch image "$m" "${IMAGE%%x*}" "torch-image-$m.json"
    done
  fi
  echo "sdxl.sh: load average $(cut -d' ' -f1-3 /proc/loadavg) after the run" >&2
fi

"$PYTHON" scripts/bench/sdxl_table.py "$OUT" $VARIANTS | tee "$OUT/table.md"
