#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them.
# This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ONNX Runtime (CPU library from the pinned PyPI wheel)"
scripts/fetch-onnxruntime.sh
if [[ "$(uname -m)" == x86_64 ]]; then
  echo "== ONNX Runtime, OpenVINO build (for --device openvino and its tests)"
  scripts/fetch-onnxruntime.sh openvino
fi

if [[ -x scripts/setup-test-env.sh ]]; then
  echo "== test peers (Python venv, Debian packages)"
  scripts/setup-test-env.sh
fi

echo "== cargo test"
cargo test --workspace --locked

echo "== sidecar (python)"
.venv/bin/python -m pytest -q python/tests

for extra in scripts/deploy/validate.sh scripts/test-browser.sh; do
  if [[ -x "$extra" ]]; then
    echo "== $extra"
    "$extra"
  fi
done
echo "== all tests passed"
