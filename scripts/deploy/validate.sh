#!/usr/bin/env bash
# Independent check of the built-in Kubernetes objects `anyaccel deploy
# render` emits: renders every config in deploy/examples/ and validates each
# Namespace, Deployment, Service, PodDisruptionBudget, DaemonSet, Ingress,
# Job, ServiceAccount and RBAC object with kubernetes-validate (PyPI) in
# strict mode (unknown fields rejected), against the oldest and the newest
# Kubernetes minor the renderer targets. KEDA and Karpenter objects are
# skipped here: crates/deploy/tests/crd_schema.rs validates them against the
# pinned CRDs in deploy/crds/, CEL rules included.
#
#   scripts/deploy/validate.sh            # uses/creates .venv in the repo
#   scripts/deploy/validate.sh DIR...     # folders already rendered with --out
#   K8S_VERSIONS="1.34.0" scripts/deploy/validate.sh
#
# Idempotent: the venv and the validator are installed once; later runs
# only render and validate (a few seconds).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
KV_VERSION="${KV_VERSION:-1.37.0}"
# 1.33: the k8s-openapi API level the renderer is built against (its
# oldest); 1.37: the newest schema kubernetes-validate ships.
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.37.0}"

venv="$root/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
installed="$("$venv/bin/python" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
print(m.version("kubernetes-validate"))
PY
)"
if [[ "$installed" != "$KV_VERSION" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KV_VERSION"
fi
kv="$venv/bin/kubernetes-validate"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
if [[ $# -eq 0 ]]; then
  (cd "$root" && cargo build --quiet -p anyaccel-deploy --example render)
fi
render="$CARGO_TARGET_DIR/debug/examples/render"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
rendered=("$@")
if [[ ${#rendered[@]} -eq 0 ]]; then
for cfg in "$root"/deploy/examples/*.toml; do
  [[ "$cfg" == *.plan.toml ]] && continue
  name="$(basename "$cfg" .toml)"
  out="$work/$name"
  # NAME.plan.toml next to NAME.toml: that example is rendered with its plan.
  plan=()
  if [[ -f "${cfg%.toml}.plan.toml" ]]; then
    plan=(--plan "${cfg%.toml}.plan.toml")
  fi
  "$render" --config "$cfg" "${plan[@]}" --out "$out" 2>/dev/null
  rendered+=("$out")
done
fi
for out in "${rendered[@]}"; do
  name="$(basename "$out")"
  builtin=()
  for f in "$out"/[0-9]*.yaml; do
    api="$(sed -n 's/^apiVersion: //p' "$f" | head -n1)"
    case "$api" in
      keda.sh/*|karpenter.sh/*|karpenter.k8s.aws/*) continue ;;
    esac
    builtin+=("$f")
  done
  if [[ ${#builtin[@]} -eq 0 ]]; then
    echo "validate: $name rendered no built-in objects" >&2
    exit 1
  fi
  for v in $K8S_VERSIONS; do
    if "$kv" --strict --quiet -k "$v" "${builtin[@]}"; then
      passed=$((passed + ${#builtin[@]}))
      echo "ok   $name: ${#builtin[@]} built-in objects valid for Kubernetes $v (strict)"
    else
      failed=$((failed + 1))
      echo "FAIL $name: kubernetes-validate --strict -k $v" >&2
    fi
  done
done

echo "kubernetes-validate: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
