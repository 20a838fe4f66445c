#!/usr/bin/env bash
# Puts ONNX Runtime's shared library in .cache/onnxruntime/lib, taken from the
# official PyPI wheel (the only channel that reaches this machine's package
# registries). `anyaccel` finds it there, or wherever ORT_DYLIB_PATH points.
#
#   scripts/fetch-onnxruntime.sh          # CPU build
#   scripts/fetch-onnxruntime.sh gpu      # CUDA build (onnxruntime-gpu), for NVIDIA hosts
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.31.1}"
flavour="${1:-cpu}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/onnxruntime"
stamp="$dest/lib/.version"

case "$flavour" in
  cpu) package="onnxruntime" ;;
  gpu) package="onnxruntime-gpu" ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac

if [[ -f "$stamp" && "$(cat "$stamp")" == "$package==$ORT_VERSION" ]]; then
  echo "$dest/lib/libonnxruntime.so"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$work" "$package==$ORT_VERSION" >&2
wheel="$(ls "$work"/*.whl)"
python3 - "$wheel" "$work/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("onnxruntime/capi/") and ".so" in n and "pybind" not in n:
            z.extract(n, sys.argv[2])
PY
rm -rf "$dest/lib"
mkdir -p "$dest/lib"
cp "$work"/x/onnxruntime/capi/*.so* "$dest/lib/"
core="$(cd "$dest/lib" && ls libonnxruntime.so.* | head -n1)"
ln -sf "$core" "$dest/lib/libonnxruntime.so"
echo "$package==$ORT_VERSION" > "$stamp"
echo "$dest/lib/libonnxruntime.so"
