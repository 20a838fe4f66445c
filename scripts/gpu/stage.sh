#!/usr/bin/env bash
# Stages what the GPU check (scripts/gpu/check.sh) needs on the lent GPU machine, which
# has torch+CUDA, onnx and the CPU onnxruntime but no diffusers, optimum, onnxruntime-gpu
# or internet. Run HERE (the package registries are reachable); then send the device
# `run` calls it prints, back to back (a machine stays warm ~30 s after a call).
#
#   scripts/gpu/stage.sh                 # download (once, into .cache/gpu), build, pack, print the calls
#   ANYACCEL_BIN=path scripts/gpu/stage.sh   # pack this binary instead of cargo build --release
#   SLIM=0 scripts/gpu/stage.sh          # keep every GPU architecture in the CUDA provider
#   PART_MIB=28 scripts/gpu/stage.sh     # part size (default: what a call can carry beside the tree)
#
# What travels: a Python overlay for PYTHONPATH=/tmp/site (onnxruntime-gpu for CUDA 13
# with its CUDA provider slimmed to the GPU's architecture by slim_fatbin.py; diffusers,
# optimum and optimum-onnx with the transformers/tokenizers/huggingface_hub versions they
# and the repo pin, which the machine's newer ones do not satisfy) and the stripped
# anyaccel release binary: one tar.xz, split into parts that each fit one call, with
# SHA-256 sums of every part and of the whole (gpu-stage/SHA256SUMS).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
cache="$root/.cache/gpu"
wheels="$cache/wheels"
stage="$root/gpu-stage"
arch="${GPU_ARCH:-90}"         # H100/H200: sm_90
limit_mib=64                   # what one device call carries, the working tree included
mkdir -p "$wheels" "$stage"

req() { # the version a requirements file of the repo pins
  grep -hiE "^$1==" python/requirements-*.txt | head -n1 | cut -d= -f3
}
ort_version="${ORT_VERSION:-$(grep -oE 'gpu\) package="onnxruntime-gpu"; version="\$\{ORT_VERSION:-[0-9.]+' scripts/fetch-onnxruntime.sh | grep -oE '[0-9]+\.[0-9]+\.[0-9]+$')}"
pins=(
  "onnxruntime-gpu==$ort_version"
  "diffusers==$(req diffusers)"
  "optimum==$(req optimum)"
  "optimum-onnx==$(req optimum-onnx)"
  "transformers==$(req transformers)"
  "tokenizers==$(req tokenizers)"
  "huggingface_hub==$(req huggingface_hub)"
  "importlib_metadata==$(req importlib_metadata)"
  "lazy-importer==$(req lazy-importer)"
)
platforms=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64)

echo "== wheels (cached in $wheels)" >&2
for pin in "${pins[@]}"; do
  name="${pin%%==*}"; version="${pin##*==}"
  file_glob="$(echo "$name" | tr '-' '_')-$version-*.whl"
  if ! compgen -G "$wheels/$file_glob" >/dev/null; then
    python3 -m pip download -q --no-deps --only-binary=:all: "${platforms[@]}" -d "$wheels" "$pin" >&2
  fi
  echo "  $pin" >&2
done

work="$(mktemp -d "$cache/pack.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "== site overlay" >&2
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: "${platforms[@]}" \
  --target "$work/site" "$wheels"/*.whl >&2
rm -rf "$work/site/bin"
capi="$work/site/onnxruntime/capi"
rm -f "$capi/libonnxruntime_providers_tensorrt.so"   # TensorRT is not on the machine
core="$(cd "$capi" && ls libonnxruntime.so.* | head -n1)"
ln -sf "$core" "$capi/libonnxruntime.so"
if [[ "${SLIM:-1}" == 1 ]]; then
  echo "== slimming the CUDA provider to sm_$arch" >&2
  python3 scripts/gpu/slim_fatbin.py "$capi/libonnxruntime_providers_cuda.so" "$work/cuda.so" \
    --arch "$arch" --report "$stage/slim-report.json" 2>/dev/null
  mv "$work/cuda.so" "$capi/libonnxruntime_providers_cuda.so"
  chmod 755 "$capi/libonnxruntime_providers_cuda.so"
fi

echo "== anyaccel binary" >&2
if [[ -n "${ANYACCEL_BIN:-}" ]]; then
  bin="$ANYACCEL_BIN"
else
  ORT_DYLIB_PATH="$root/.cache/onnxruntime/lib/libonnxruntime.so" cargo build --release -p anyaccel --locked >&2
  bin="$root/target/release/anyaccel"
fi
cp "$bin" "$work/anyaccel"
strip "$work/anyaccel"
need_glibc="$(objdump -T "$work/anyaccel" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -n1)"
echo "  $(du -m "$work/anyaccel" | cut -f1) MiB stripped; needs $need_glibc (the machine's Ubuntu 24.04 has 2.39)" >&2
printf '%s\n' "${pins[@]}" > "$work/PINS"
git rev-parse HEAD > "$work/COMMIT"

echo "== packing (xz)" >&2
rm -f "$stage"/part-* "$stage"/stage.tar.xz "$stage"/SHA256SUMS
tar -C "$work" -cf - site anyaccel PINS COMMIT | xz -T0 -6 > "$stage/stage.tar.xz"

# what one call carries beside the working tree (tracked and untracked-not-ignored files)
tree_bytes="$(git ls-files -z -c -o --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')"
tree_mib=$(( (tree_bytes + 1048575) / 1048576 ))
part_mib="${PART_MIB:-$(( limit_mib - tree_mib - 2 ))}"
if (( part_mib < 4 )); then
  echo "stage: the working tree is ${tree_mib} MiB; too little room left to carry parts" >&2
  exit 1
fi
(cd "$stage" && split -b "${part_mib}M" -d -a 2 stage.tar.xz part-)
(cd "$stage" && sha256sum stage.tar.xz part-* > SHA256SUMS)
rm "$stage/stage.tar.xz"   # the parts are the stage; unstage.sh checks the whole's sum after cat
parts=( $(cd "$stage" && ls part-*) )

{
  echo "== staged in gpu-stage/ ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD))"
  find "$work/site/onnxruntime/capi" -name '*.so*' -type f -printf '%s %P\n' | sort -k2 \
    | awk '{printf "  onnxruntime/capi/%-52s %7.1f MiB\n", $2, $1/1048576}'
  [[ -f "$stage/slim-report.json" && "${SLIM:-1}" == 1 ]] && python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); z=sum(r["zeroed_bytes"].values()); k=sum(r["kept_bytes"].values()); a=r["arch"]; print(f"  slimmed to sm_{a}: {z/2**20:.0f} MiB of cubins zeroed, {k/2**20:.0f} MiB kept")' "$stage/slim-report.json"
  echo "  anyaccel (stripped)                                                    $(du -b "$work/anyaccel" | awk '{printf "%7.1f MiB", $1/1048576}')"
  echo "  site/ in all                                                           $(du -sb "$work/site" | awk '{printf "%7.1f MiB", $1/1048576}')"
  echo "  stage.tar.xz                                                           $(cat "$stage"/part-* | wc -c | awk '{printf "%7.1f MiB", $1/1048576}')"
  echo "  working tree that travels with every call: ${tree_mib} MiB; parts of ${part_mib} MiB: ${#parts[@]}"
  echo
  echo "Device calls, back to back (each must start within ~30 s of the last one's end):"
  n=${#parts[@]}
  for i in "${!parts[@]}"; do
    p="${parts[$i]}"
    if (( i + 1 < n )); then
      echo "  call $((i + 1))/$n: run(command='bash scripts/gpu/unstage.sh collect', carry=['gpu-stage/$p', 'gpu-stage/SHA256SUMS'], timeout_s=120)"
    else
      echo "  call $((i + 1))/$n: run(command='bash scripts/gpu/unstage.sh collect && bash scripts/gpu/unstage.sh install && export PYTHONPATH=/tmp/site GPU_CHECK_BUDGET=540 && bash scripts/gpu/check.sh', carry=['gpu-stage/$p', 'gpu-stage/SHA256SUMS'], timeout_s=600)"
    fi
  done
  echo "  (SDXL-sized, a run of its own: ... && bash scripts/gpu/check.sh --big sdxl)"
  echo "Then give_back. Results: \$OUT/gpu-check.json, gpu-check.md, gpu-check.log."
} | tee "$stage/CALLS.txt"
