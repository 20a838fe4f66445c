#!/usr/bin/env bash
# Creates or updates the repo-local Python environment `.venv` that the remote
# (sidecar) executor tests and `anyaccel compile --target onnx-*` use: CPU torch,
# diffusers, transformers, grpcio, optimum's ONNX exporter, pytest.
#
# Idempotent: a stamp records the hash of the requirement files (and the Python
# version); when it matches and the imports work, nothing is installed. Everything
# comes from PyPI with `pip install --no-deps` from complete locks, which keeps out
# the CUDA packages that PyPI's torch would otherwise pull but CPU torch never loads
# (triton, cusolver, ...; see python/requirements-cpu.txt). About 4.8 GB on disk (most of
# it the CUDA libraries torch's .so files link); a first install took ~2 minutes here.
#
#   scripts/setup-sidecar-env.sh            # create/update .venv
#   PYTHON=python3.11 scripts/setup-sidecar-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
REQS=(python/requirements-cpu.txt python/requirements-export-onnx.txt python/requirements-dev.txt)
STAMP=$VENV/.anyaccel-sidecar-env

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup-sidecar-env: $PYTHON not found; install Python 3.10-3.13 or set PYTHON=" >&2
  exit 1
fi
"$PYTHON" - <<'PY'
import sys
if not (3, 10) <= sys.version_info[:2] <= (3, 13):
    sys.exit(f"setup-sidecar-env: Python {sys.version.split()[0]} is not supported (3.10-3.13)")
PY

want="$( { "$PYTHON" --version; cat "${REQS[@]}"; } | sha256sum | cut -d' ' -f1)"
smoke='import torch, diffusers, transformers, grpc, google.protobuf, optimum.exporters.onnx, onnxruntime, pytest'

if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]] && "$VENV/bin/python" -c "$smoke" 2>/dev/null; then
  echo "setup-sidecar-env: $VENV is up to date"
  exit 0
fi

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup-sidecar-env: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
export PIP_DISABLE_PIP_VERSION_CHECK=1
for r in "${REQS[@]}"; do
  echo "setup-sidecar-env: pip install --no-deps -r $r"
  "$VENV/bin/python" -m pip install --no-deps --quiet -r "$r"
done

echo "setup-sidecar-env: checking imports"
"$VENV/bin/python" -c "$smoke
print('torch', torch.__version__, '| diffusers', diffusers.__version__, '| grpcio', grpc.__version__)
assert torch.zeros(2).add(1).sum().item() == 2.0"
echo "$want" > "$STAMP"
echo "setup-sidecar-env: $VENV ready"
