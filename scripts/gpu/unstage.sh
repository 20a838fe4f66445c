#!/usr/bin/env bash
# The device side of scripts/gpu/stage.sh (runs on the GPU machine, in the repo copy).
#
#   bash scripts/gpu/unstage.sh collect   # keep the part(s) this call carried in /tmp/stage/parts
#   bash scripts/gpu/unstage.sh install   # all parts there: join, check SHA-256, unpack to
#                                         # /tmp/site (PYTHONPATH) and /tmp/stage/anyaccel
# Files under /tmp last while the machine stays warm between calls (~30 s after each).
set -euo pipefail
cd "$(dirname "$0")/../.."
parts=/tmp/stage/parts
sums=gpu-stage/SHA256SUMS
mkdir -p "$parts"
[[ -f "$sums" ]] || { echo "unstage: $sums did not travel (carry it with every call)" >&2; exit 1; }
cp "$sums" /tmp/stage/SHA256SUMS
expected=( $(awk '$2 ~ /^part-/ {print $2}' "$sums") )

case "${1:-}" in
  collect)
    for f in gpu-stage/part-*; do
      [[ -f "$f" ]] || continue
      name="$(basename "$f")"
      want="$(awk -v n="$name" '$2 == n {print $1}' "$sums")"
      got="$(sha256sum "$f" | cut -d' ' -f1)"
      if [[ "$want" != "$got" ]]; then
        echo "unstage: $name: sha256 $got, expected $want" >&2; exit 1
      fi
      [[ -f "$parts/$name" ]] || cp "$f" "$parts/$name"
    done
    have=0; missing=()
    for p in "${expected[@]}"; do
      if [[ -f "$parts/$p" ]]; then have=$((have + 1)); else missing+=("$p"); fi
    done
    echo "unstage: $have of ${#expected[@]} parts on this machine${missing:+; still to come: ${missing[*]}}"
    ;;
  install)
    missing=()
    for p in "${expected[@]}"; do [[ -f "$parts/$p" ]] || missing+=("$p"); done
    if (( ${#missing[@]} )); then
      echo "unstage: FAILED: missing ${missing[*]} (the machine was given back between calls?"\
           "then send every call again, back to back)" >&2
      exit 1
    fi
    want="$(awk '$2 == "stage.tar.xz" {print $1}' "$sums")"
    got="$( (cd "$parts" && cat "${expected[@]}") | tee /tmp/stage/stage.tar.xz | sha256sum | cut -d' ' -f1)"
    if [[ "$want" != "$got" ]]; then
      echo "unstage: FAILED: stage.tar.xz sha256 $got, expected $want" >&2; exit 1
    fi
    rm -rf /tmp/site /tmp/stage/x
    mkdir -p /tmp/stage/x
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
      /tmp/stage/stage.tar.xz /tmp/stage/x
    mv /tmp/stage/x/site /tmp/site
    mv /tmp/stage/x/anyaccel /tmp/stage/anyaccel
    chmod +x /tmp/stage/anyaccel
    rm -f /tmp/stage/stage.tar.xz
    echo "unstage: installed /tmp/site and /tmp/stage/anyaccel (commit $(cat /tmp/stage/x/COMMIT)); pins:"
    sed 's/^/  /' /tmp/stage/x/PINS
    ;;
  *) echo "usage: $0 collect|install" >&2; exit 2 ;;
esac
