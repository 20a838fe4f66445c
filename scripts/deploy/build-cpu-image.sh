#!/usr/bin/env bash
# Builds the CPU image (deploy/containers/Containerfile.cpu) for this
# machine's architecture with podman, without pulling anything: the base is
# a Debian bookworm root filesystem made here with debootstrap and imported
# as localhost/anyaccel-base:bookworm, the server binary is built with
# cargo, and ONNX Runtime's shared libraries come from their PyPI wheels
# (plus the OpenVINO build on amd64).
#
#   scripts/deploy/build-cpu-image.sh               # -> localhost/anyaccel:cpu-<arch>
#   IMAGE=localhost/anyaccel:dev scripts/deploy/build-cpu-image.sh
#   REBUILD_BASE=1 scripts/deploy/build-cpu-image.sh # redo the debootstrap
#
# Needs root (debootstrap); installs podman and debootstrap with apt-get
# when they are missing. The base image is made once and reused.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
BASE_IMAGE="${BASE_IMAGE:-localhost/anyaccel-base:bookworm}"
IMAGE="${IMAGE:-localhost/anyaccel:cpu-$arch}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PROFILE="${CARGO_PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

log() { echo "build-cpu-image: $*" >&2; }

need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [[ ${#need[@]} -gt 0 ]]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 1. Base image: minimal bookworm with exactly the runtime packages the
#    Containerfile wants, so its install step has nothing to fetch.
if [[ -n "${REBUILD_BASE:-}" ]] || ! podman image exists "$BASE_IMAGE"; then
  rootfs="$(mktemp -d /var/tmp/anyaccel-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap bookworm ($arch) into $rootfs"
  debootstrap --variant=minbase --arch="$arch" \
    --include=ca-certificates,libgomp1,tini \
    bookworm "$rootfs" "$MIRROR" >/dev/null
  # Slim it: no package lists, caches, docs or man pages in the image.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  log "importing $BASE_IMAGE"
  tar -C "$rootfs" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/sh"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# shellcheck source=scripts/deploy/podman-env.sh
. "$root/scripts/deploy/podman-env.sh"
podman_setup "$BASE_IMAGE"

# 2. Build context: the server binary and ONNX Runtime for this arch.
ctx="$(mktemp -d /var/tmp/anyaccel-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
log "building the server ($PROFILE)"
(cd "$root" && cargo build --quiet --profile "$PROFILE" -p anyaccel --bin anyaccel)
profile_dir="$PROFILE"; [[ "$PROFILE" == dev ]] && profile_dir=debug
mkdir -p "$ctx/dist/$arch/onnxruntime"
cp "$CARGO_TARGET_DIR/$profile_dir/anyaccel" "$ctx/dist/$arch/anyaccel"
chmod 0755 "$ctx/dist/$arch/anyaccel"
# The release profile keeps line tables for backtraces; the image does not
# need them (about half the binary).
if command -v strip >/dev/null; then strip --strip-debug "$ctx/dist/$arch/anyaccel"; fi
ort="$("$root/scripts/fetch-onnxruntime.sh" cpu)"
cp -a "$(dirname "$ort")"/libonnxruntime*.so* "$ctx/dist/$arch/onnxruntime/"
rm -f "$ctx/dist/$arch/onnxruntime/.version"
# amd64 also carries the OpenVINO build (pools serving onnx-openvino artifacts);
# arm64 gets an empty folder, as there is no such build for it.
mkdir -p "$ctx/dist/$arch/onnxruntime-openvino"
if [[ "$arch" == amd64 ]]; then
  ov="$("$root/scripts/fetch-onnxruntime.sh" openvino)"
  cp -a "$(dirname "$ov")"/*.so* "$ctx/dist/$arch/onnxruntime-openvino/"
fi

# 3. The image. --pull=never and no network: everything comes from above.
log "podman build $IMAGE"
"${PODMAN[@]}" build --pull=never --network=none "${PODMAN_RUN_OPTS[@]}" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg TARGETARCH="$arch" \
  -f "$root/deploy/containers/Containerfile.cpu" \
  -t "$IMAGE" "$ctx" >&2
log "built $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$IMAGE"
