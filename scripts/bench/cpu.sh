#!/usr/bin/env bash
# CPU benchmark: anyaccel (ONNX Runtime) against diffusers (PyTorch fp32 and bf16
# autocast) on the same SD 1.5-sized random-weight model, in one run on one machine.
# Cases: text encoder (batch 2), one UNet step (batch 2, as CFG runs it) at 256 and 512,
# the VAE decode at 256 and 512, and a whole 20-step 512x512 image. Prints each time,
# the ratios (anyaccel / PyTorch), GFLOP/s achieved (FLOPs counted by torch), the GEMM
# ceilings of this CPU, and each process's peak resident memory.
#
#   scripts/bench/cpu.sh
#
# First run: builds the random-weight model, its ONNX export and the compile variants
# under .cache/bench (~15 GB, ~10 minutes on 2 cores), fetches ONNX Runtime, and sets up
# .venv if missing. A full run takes ~20 minutes on 2 cores.
# Environment (all optional):
#   PYTHON=/path/to/python   a Python with torch, diffusers, transformers, optimum-onnx
#                            (default: .venv/bin/python, made by scripts/setup-sidecar-env.sh)
#   VARIANTS="onnx-cpu openvino onnx-int8 onnx"   anyaccel variants to time: a folder
#                            .cache/bench/sd15-random-<variant> on ONNX Runtime's CPU kernels,
#                            or openvino / openvino-f32: the plain export (sd15-random-onnx)
#                            with --device openvino at precision auto / f32 (x86_64 only;
#                            fetches the onnxruntime-openvino library). The first is the headline.
#   IMAGE_VARIANTS="onnx-cpu openvino onnx-int8"  variants that also run the whole image
#   SIZES=256,512  REPS=3  IMAGE=512x20x1 (size x steps x timed runs)  THREADS=2
#   ARENA=1  PATTERN=0  OPT=all   anyaccel's executor settings (crates/pipeline/benches/sd.rs)
#   TORCH=1        also run diffusers (0: reuse the PyTorch results already in $OUT)
#   OUT=bench-out/cpu        where the JSON results and the table go
#   TABLE_ONLY=1             only print the table again from the JSON files in $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

VARIANTS=${VARIANTS:-onnx-cpu openvino onnx-int8 onnx}
IMAGE_VARIANTS=${IMAGE_VARIANTS:-onnx-cpu openvino onnx-int8}
SIZES=${SIZES:-256,512}
REPS=${REPS:-3}
IMAGE=${IMAGE:-512x20x1}
THREADS=${THREADS:-2}
ARENA=${ARENA:-1}
PATTERN=${PATTERN:-0}
OPT=${OPT:-all}
TORCH=${TORCH:-1}
OUT=${OUT:-bench-out/cpu}

if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "cpu.sh: no .venv; creating it with scripts/setup-sidecar-env.sh" >&2
    scripts/setup-sidecar-env.sh >&2
  fi
  PYTHON=$root/.venv/bin/python
fi

if [[ "${TABLE_ONLY:-0}" != 1 ]]; then
  "$PYTHON" -c 'import torch, diffusers, transformers, optimum.exporters.onnx, onnxruntime' 2>/dev/null || {
    echo "cpu.sh: $PYTHON lacks torch/diffusers/transformers/optimum-onnx/onnxruntime; set PYTHON=" >&2
    exit 1
  }
  scripts/fetch-onnxruntime.sh >/dev/null
  if [[ " $VARIANTS " == *" openvino"* ]]; then scripts/fetch-onnxruntime.sh openvino >/dev/null; fi
  "$PYTHON" scripts/bench/make_sd15_random.py >/dev/null
  model_torch=$root/.cache/bench/sd15-random
  # build first, so compiling never overlaps a measurement
  cargo bench -p anyaccel-pipeline --bench sd --no-run >&2
  mkdir -p "$OUT"
  rm -f "$OUT"/anyaccel-*.json
  [[ "$TORCH" == 1 ]] && rm -f "$OUT"/torch-*.json

  anyaccel() { # variant cases json
    local folder=$1 device=cpu precision=auto
    case "$1" in
      openvino) folder=onnx device=openvino ;;
      openvino-f32) folder=onnx device=openvino precision=f32 ;;
    esac
    ANYACCEL_BENCH_DEVICE=$device ANYACCEL_BENCH_PRECISION=$precision \
    ANYACCEL_BENCH_SAVE=$root/$OUT/image-$1.png ANYACCEL_BENCH_MODEL=$root/.cache/bench/sd15-random-$folder ANYACCEL_BENCH_CASES=$2 \
      ANYACCEL_BENCH_SIZES=$SIZES ANYACCEL_BENCH_REPS=$REPS ANYACCEL_BENCH_IMAGE=$IMAGE \
      ANYACCEL_BENCH_THREADS=$THREADS ANYACCEL_BENCH_ARENA=$ARENA ANYACCEL_BENCH_PATTERN=$PATTERN \
      ANYACCEL_BENCH_OPT=$OPT \
      ANYACCEL_BENCH_JSON=$root/$OUT/$3 \
      cargo bench -q -p anyaccel-pipeline --bench sd >/dev/null
  }
  torch() { # cases modes json
    "$PYTHON" scripts/bench/sd_torch.py --model "$model_torch" --cases "$1" --modes "$2" \
      --sizes "$SIZES" --reps "$REPS" --image "$IMAGE" --threads "$THREADS" --json "$OUT/$3" >/dev/null
  }

  echo "cpu.sh: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run" >&2
  if [[ "$TORCH" == 1 ]]; then
    echo "== FLOP counts and GEMM ceilings" >&2
    torch flops,ceiling fp32 torch-flops.json
  fi
  for v in $VARIANTS; do
    echo "== anyaccel $v: components" >&2
    anyaccel "$v" components "anyaccel-components-$v.json"
  done
  if [[ "$TORCH" == 1 ]]; then
    echo "== diffusers: components (fp32 and bf16)" >&2
    torch components fp32,bf16 torch-components.json
  fi
  for v in $IMAGE_VARIANTS; do
    echo "== anyaccel $v: whole image" >&2
    anyaccel "$v" image "anyaccel-image-$v.json"
  done
  if [[ "$TORCH" == 1 ]]; then
    for m in fp32 bf16; do
      echo "== diffusers: whole image ($m), own process for its peak memory" >&2
      torch image "$m" "torch-image-$m.json"
    done
  fi
  echo "cpu.sh: load average $(cut -d' ' -f1-3 /proc/loadavg) after the run" >&2
fi

"$PYTHON" scripts/bench/cpu_table.py "$OUT" $VARIANTS | tee "$OUT/table.md"
