#!/usr/bin/env bash
# Builds anyaccel and generates an image with the bundled tiny model (or the
# model in $ANYACCEL_MODEL). Extra arguments go to `anyaccel generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-onnxruntime.sh >/dev/null
cargo build --release --locked -p anyaccel
model="${ANYACCEL_MODEL:-fixtures/models/tiny-sd15}"
exec target/release/anyaccel generate --model "$model" --prompt "${PROMPT:-a lighthouse at dusk}" --out "${OUT:-out}" "$@"
