#!/usr/bin/env bash
# The prepared GPU check (see bench/gpu_check.py): bash bench/gpu_check.sh [--dry-run] [--perf] PTB_DIR OUT
# Runs from a plain checkout: nothing is installed, the checkout goes on PYTHONPATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
flags=()
while [[ "${1:-}" == "--dry-run" || "${1:-}" == "--perf" ]]; do flags+=("$1"); shift; done
if [[ $# -ne 2 ]]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run] [--perf] PTB_DIR OUT" >&2
  exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "${PYTHON:-python3}" -m bench.gpu_check run "$1" "$2" "${flags[@]}"
