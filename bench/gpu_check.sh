#!/usr/bin/env bash
# The prepared GPU check (see bench/gpu_check.py):
#   bash bench/gpu_check.sh [--dry-run] [--perf] [--budget SECONDS] PTB_DIR OUT
# Runs from a plain checkout: nothing is installed, the checkout goes on PYTHONPATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
flags=()
while [[ "${1:-}" == "--dry-run" || "${1:-}" == "--perf" || "${1:-}" == "--budget" ]]; do
  if [[ "$1" == "--budget" ]]; then
    if [[ $# -lt 2 ]]; then echo "rnnbench: error: --budget takes a number of seconds" >&2; exit 2; fi
    flags+=("$1" "$2"); shift 2
  else
    flags+=("$1"); shift
  fi
done
if [[ $# -ne 2 ]]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run] [--perf] [--budget SECONDS] PTB_DIR OUT" >&2
  exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "${PYTHON:-python3}" -m bench.gpu_check run "$1" "$2" "${flags[@]}"
