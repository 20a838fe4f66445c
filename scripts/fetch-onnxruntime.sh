#!/usr/bin/env bash
# Puts ONNX Runtime's shared library in .cache/onnxruntime/lib, taken from the
# official PyPI wheel (the only channel that reaches this machine's package
# registries). `anyaccel` finds it there, or wherever ORT_DYLIB_PATH points.
#
#   scripts/fetch-onnxruntime.sh          # CPU build
#   scripts/fetch-onnxruntime.sh gpu      # CUDA build (onnxruntime-gpu), for NVIDIA hosts
#   scripts/fetch-onnxruntime.sh openvino # OpenVINO build (onnxruntime-openvino, x86_64 only)
#                                         # into .cache/onnxruntime-openvino/lib, for --device openvino
#
# The OpenVINO build is its own ONNX Runtime release line (its wheel bundles the
# OpenVINO runtime), so it has its own pin and folder and never replaces the CPU one.
set -euo pipefail

flavour="${1:-cpu}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/onnxruntime"

case "$flavour" in
  cpu) package="onnxruntime"; version="${ORT_VERSION:-1.31.1}" ;;
  gpu) package="onnxruntime-gpu"; version="${ORT_VERSION:-1.31.1}" ;;
  openvino)
    package="onnxruntime-openvino"; version="${ORT_OPENVINO_VERSION:-1.24.1}"
    dest="$root/.cache/onnxruntime-openvino"
    if [[ "$(uname -m)" != x86_64 ]]; then
      echo "fetch-onnxruntime: onnxruntime-openvino is published for x86_64 Linux only" >&2
      exit 1
    fi
    ;;
  *) echo "usage: $0 [cpu|gpu|openvino]" >&2; exit 2 ;;
esac
stamp="$dest/lib/.version"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$package==$version" ]]; then
  echo "$dest/lib/libonnxruntime.so"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$work" "$package==$version" >&2
wheel="$(ls "$work"/*.whl)"
# Wheels cannot hold symlinks, so a library's versioned names (libopenvino.so,
# .so.2541, .so.2025.4.1) arrive as identical copies; keep one, link the rest.
python3 - "$wheel" "$work/x" <<'PY'
import hashlib, os, sys, zipfile
first = {}
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in sorted(z.namelist(), key=len, reverse=True):
        if n.startswith("onnxruntime/capi/") and ".so" in n and "pybind" not in n:
            digest = hashlib.sha256(z.read(n)).hexdigest()
            if digest in first:
                os.makedirs(os.path.join(sys.argv[2], os.path.dirname(n)), exist_ok=True)
                os.symlink(os.path.basename(first[digest]), os.path.join(sys.argv[2], n))
            else:
                first[digest] = n
                z.extract(n, sys.argv[2])
PY
rm -rf "$dest/lib"
mkdir -p "$dest/lib"
cp -P "$work"/x/onnxruntime/capi/*.so* "$dest/lib/"
core="$(cd "$dest/lib" && ls libonnxruntime.so.* | head -n1)"
ln -sf "$core" "$dest/lib/libonnxruntime.so"
echo "$package==$version" > "$stamp"
echo "$dest/lib/libonnxruntime.so"
