#!/usr/bin/env bash
# Builds anyaccel and serves the bundled tiny model (or $ANYACCEL_MODEL) on
# http://localhost:8080. Extra arguments go to `anyaccel serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-onnxruntime.sh >/dev/null
cargo build --release --locked -p anyaccel
model="${ANYACCEL_MODEL:-fixtures/models/tiny-sd15}"
if [[ "$model" == fixtures/* && -z "${ANYACCEL_SIZES:-}" ]]; then
  export ANYACCEL_SIZES="64x64,128x128"
fi
exec target/release/anyaccel serve --model "$model" "$@"
