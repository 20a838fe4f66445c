#!/usr/bin/env bash
# Times the SD 1.5-sized components (text encoder batch 2, one UNet step batch 2,
# VAE decode batch 1, at 256x256 and 512x512) with anyaccel's ONNX Runtime executor
# and with diffusers (PyTorch, fp32 and bf16 autocast) on the same random weights,
# in one run, and prints a table with each ratio (anyaccel time / PyTorch time).
#
#   scripts/bench/components.sh
#
# First run: builds the random-weight model and its ONNX export under .cache/bench
# (~8 GB, ~7 minutes on 2 cores), fetches ONNX Runtime, and sets up .venv if missing.
# Environment (all optional):
#   PYTHON=/path/to/python     a Python with torch, diffusers, transformers, optimum-onnx
#                              (default: .venv/bin/python, made by scripts/setup-sidecar-env.sh)
#   SIZES=256,512  REPS=5  THREADS=2  OPT=all   what to time and how
#   ROUNDS=2       alternate anyaccel and PyTorch this many times; medians over all reps
#   BF16=1         also time PyTorch under bf16 autocast (0 to skip)
#   OUT=bench-out/components   where the JSON results and the table go
#   CARGO_TARGET_DIR           honoured as usual
#   TABLE_ONLY=1               only print the table again from the JSON files in $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

SIZES=${SIZES:-256,512}
REPS=${REPS:-5}
THREADS=${THREADS:-2}
OPT=${OPT:-all}
ROUNDS=${ROUNDS:-2}
BF16=${BF16:-1}
OUT=${OUT:-bench-out/components}

if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "components.sh: no .venv; creating it with scripts/setup-sidecar-env.sh" >&2
    scripts/setup-sidecar-env.sh >&2
  fi
  PYTHON=$root/.venv/bin/python
fi
"$PYTHON" -c 'import torch, diffusers, transformers, optimum.exporters.onnx' 2>/dev/null || {
  echo "components.sh: $PYTHON lacks torch/diffusers/transformers/optimum-onnx; set PYTHON= to one that has them" >&2
  exit 1
}

if [[ "${TABLE_ONLY:-0}" != 1 ]]; then
  scripts/fetch-onnxruntime.sh >/dev/null
  "$PYTHON" scripts/bench/make_sd15_random.py >/dev/null
  model_onnx=$root/.cache/bench/sd15-random-onnx
  model_torch=$root/.cache/bench/sd15-random

  # build first, so compiling never overlaps a measurement
  cargo bench -p anyaccel-executor-onnx --bench components --no-run >&2

  mkdir -p "$OUT"
  rm -f "$OUT"/anyaccel-*.json "$OUT"/torch-*.json
  bf16_flag=()
  [[ "$BF16" == 1 ]] && bf16_flag=(--bf16)
  echo "components.sh: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run" >&2
  for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS: anyaccel (ONNX Runtime)" >&2
    ANYACCEL_BENCH_MODEL=$model_onnx ANYACCEL_BENCH_SIZES=$SIZES ANYACCEL_BENCH_REPS=$REPS \
      ANYACCEL_BENCH_THREADS=$THREADS ANYACCEL_BENCH_OPT=$OPT \
      ANYACCEL_BENCH_JSON=$root/$OUT/anyaccel-$round.json \
      cargo bench -q -p anyaccel-executor-onnx --bench components >/dev/null
    echo "== round $round/$ROUNDS: diffusers (PyTorch)" >&2
    "$PYTHON" scripts/bench/components_torch.py --model "$model_torch" --sizes "$SIZES" \
      --reps "$REPS" --threads "$THREADS" "${bf16_flag[@]}" --json "$OUT/torch-$round.json" >/dev/null
  done
  echo "components.sh: load average $(cut -d' ' -f1-3 /proc/loadavg) after the run" >&2
fi

"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/table.md"
import glob, json, statistics, sys
out = sys.argv[1]
ours, torch = {}, {}
meta_a = meta_t = None
for f in sorted(glob.glob(f"{out}/anyaccel-*.json")):
    d = json.load(open(f)); meta_a = d
    for c in d["cases"]:
        ours.setdefault(c["name"], []).extend(c["times_ms"])
for f in sorted(glob.glob(f"{out}/torch-*.json")):
    d = json.load(open(f)); meta_t = d
    for mode, cases in d["modes"].items():
        for c in cases:
            torch.setdefault(mode, {}).setdefault(c["name"], []).extend(c["times_ms"])
modes = list(torch)
s = meta_a["settings"]
print(f"anyaccel: {meta_a['engine']}, intra_threads={s['intra_threads']}, inter_threads={s['inter_threads']}, "
      f"graph optimization={s['optimization']}; PyTorch: {meta_t['engine']}, threads={meta_t['settings']['threads']}")
print("medians over every timed run of every round (one untimed warm-up per case and process), in ms; "
      "n = timed runs per engine\n")
head = "| case | n | anyaccel ms | " + " | ".join(f"PyTorch {m} ms" for m in modes) + " | " + \
       " | ".join(f"anyaccel / PyTorch {m}" for m in modes) + " |"
print(head)
print("|---|---:" + "|---:" * (1 + 2 * len(modes)) + "|")
for name, times in ours.items():
    a = statistics.median(times)
    ts = [statistics.median(torch[m][name]) for m in modes]
    print(f"| {name} | {len(times)} | {a:.1f} | " + " | ".join(f"{t:.1f}" for t in ts) + " | " +
          " | ".join(f"{a / t:.2f}" for t in ts) + " |")
PY
