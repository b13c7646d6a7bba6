#!/usr/bin/env bash
# The prepared GPU check (see bench/gpu_check.py):
#   bash bench/gpu_check.sh [--dry-run] [--perf | --full [--full-cells CELLS]] [--budget SECONDS] [--steps NAMES]
#                           PTB_DIR OUT
# Runs from a plain checkout: nothing is installed, the checkout goes on PYTHONPATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
flags=()
while [[ "${1:-}" == "--dry-run" || "${1:-}" == "--perf" || "${1:-}" == "--full" || "${1:-}" == "--budget"
        || "${1:-}" == "--full-cells" || "${1:-}" == "--steps" ]]; do
  if [[ "$1" == "--budget" || "$1" == "--full-cells" || "$1" == "--steps" ]]; then
    if [[ $# -lt 2 ]]; then echo "rnnbench: error: $1 takes a value" >&2; exit 2; fi
    flags+=("$1" "$2"); shift 2
  else
    flags+=("$1"); shift
  fi
done
if [[ $# -ne 2 ]]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run] [--perf | --full [--full-cells CELLS]] [--budget SECONDS]" \
       "[--steps NAMES] PTB_DIR OUT" >&2
  exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "${PYTHON:-python3}" -m bench.gpu_check run "$1" "$2" "${flags[@]}"
