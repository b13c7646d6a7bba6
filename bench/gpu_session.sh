#!/usr/bin/env bash
# A lent GPU session's device work as ONE call (a machine's start costs minutes of the session's 15, and it is given
# back 30 s after a call, so two calls usually pay two starts): the check (bench/gpu_check.sh, at most its 355 s),
# then the timings (or the full schedules: --then full) with what is left of --total, then OUT packed into TARBALL
# without the sweeps' checkpoints.
#
#   bash bench/gpu_session.sh [--dry-run] [--total SECONDS] [--then perf|full] [--steps NAMES]
#                             [--check-steps NAMES] PTB_DIR OUT TARBALL
#
# --total: wall-clock seconds for both parts (default 560: a device call may run 600); --then: what follows the check,
# the timings (perf, the default) or the full schedules (full: medium's 39 epochs for cudnn_lstm, then small's 13 for
# triton_lstm, each cut in order at what is left; see bench/gpu_check.py); --steps: that part's steps, in order
# (perf's default bench-compiled-graphs,tune-small,tune,bench-tuned: the compiled cells under their own CUDA graphs
# first, a fixed ~40-75 s that may settle issue 11's GPU target; small's float32 search (at most 60 s: small's target
# is the nearest, 1.23x of 1.3x, and its tiles were never searched); the medium and large searches, where the untimed
# designs -- exchanges, outer products, narrow programs -- aim at the largest gaps to cuDNN, cut to leave the benchmark
# of all the winners its time; full's train-full,train-full-small); --check-steps: the check's own steps (default all;
# e.g. "tests" alone before the full schedules, which need the time: the check's training steps are what they test
# at length). On the device machine:
#   export RNNBENCH_DECLARED_COMMIT=<commit>; bash bench/gpu_session.sh data/ptb /tmp/gpu $OUT/gpu.tgz
# with the call's timeout_s at 600. Exit status: the check's, else the second part's.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
check="${RNNBENCH_GPU_CHECK:-$root/bench/gpu_check.sh}"  # (the tests put a stand-in here)
dry=() total=560 then=perf perf_steps="" check_steps=()
usage="usage: bash bench/gpu_session.sh [--dry-run] [--total SECONDS] [--then perf|full] [--steps NAMES]"\
" [--check-steps NAMES] PTB_DIR OUT TARBALL"
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) dry=(--dry-run); shift ;;
    --total|--steps|--then|--check-steps)
      if [[ $# -lt 2 ]]; then echo "rnnbench: error: $1 takes a value" >&2; exit 2; fi
      case "$1" in --total) total="$2" ;; --steps) perf_steps="$2" ;; --then) then="$2" ;;
                   --check-steps) check_steps=(--steps "$2") ;; esac
      shift 2 ;;
    *) echo "rnnbench: error: unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
if [[ $# -ne 3 ]]; then echo "$usage" >&2; exit 2; fi
case "$then" in
  perf) part_flag=--perf part_name=timings
        perf_steps="${perf_steps:-bench-compiled-graphs,tune-small,tune,bench-tuned}" ;;
  full) part_flag=--full part_name="full schedules"; perf_steps="${perf_steps:-train-full,train-full-small}" ;;
  *) echo "rnnbench: error: --then takes perf or full, got '$then'" >&2; exit 2 ;;
esac
if ! [[ "$total" =~ ^[0-9]+$ ]] || (( 10#$total < 120 || 10#$total > 600 )); then
  echo "rnnbench: error: --total takes 120 to 600 seconds, got $total" >&2; exit 2
fi
total=$(( 10#$total ))
ptb="$1" out="$2" tarball="$3"
if [[ -z "$tarball" || -d "$tarball" || ! -d "$(dirname "$tarball")" ]]; then
  echo "rnnbench: error: TARBALL '$tarball' must be a file's path in an existing folder" >&2; exit 2
fi
if [[ -z "$out" || -e "$out" && ! -d "$out" ]]; then
  echo "rnnbench: error: OUT '$out' must be a folder's path" >&2; exit 2
fi
# both parts' step names, before the check spends its minutes
if ! PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -c '
import sys
from pathlib import Path
from bench import gpu_check as g
try:
    for names, part in ((sys.argv[1], sys.argv[2]), (sys.argv[3], "check")):
        if names != "-":
            g.select(g.steps(Path("."), Path("."), "gpu", False, part, 300, with_cells=False),
                     [n for n in names.split(",") if n])
except ValueError as exc:
    sys.exit(f"rnnbench: error: {exc}")' "$perf_steps" "$then" "${check_steps[1]:--}"; then
  exit 2
fi
mkdir -p "$out" || exit 2
log="$out/session.log"
t0=$SECONDS
check_budget=$(( total - 60 < 355 ? total - 60 : 355 ))  # the timings get at least a minute
bash "$check" "${dry[@]}" "${check_steps[@]}" --budget "$check_budget" "$ptb" "$out" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
left=$(( total - (SECONDS - t0) - 15 ))  # (15 s for packing)
if (( rc == 2 )); then  # refused before any work (no CUDA, a bad PTB folder): so would the timings be
  echo "[gpu-session] the check refused to run (exit 2): no $part_name" | tee -a "$log"
  perf_rc=2
elif (( left >= 30 )); then
  bash "$check" "${dry[@]}" "$part_flag" --steps "$perf_steps" --budget "$left" "$ptb" "$out" 2>&1 \
    | tee -a "$log"
  perf_rc=${PIPESTATUS[0]}
else
  echo "[gpu-session] no time left for the $part_name ($left s)" | tee -a "$log"
  perf_rc=1
fi
rm -rf "$out/checkpoints"
tar czf "$tarball" -C "$(dirname "$out")" "$(basename "$out")" || exit 2
packed="$tarball"
# The device tool brings back files of at most 16 MiB (8 of them): a larger tarball goes in parts, TARBALL.00, .01, ...
# (cat TARBALL.* > TARBALL puts it together), rather than not at all.
max_bytes="${RNNBENCH_PACK_MAX_BYTES:-15728640}"
if (( $(stat -c %s "$tarball") > max_bytes )); then
  split -b "$max_bytes" -d "$tarball" "$tarball." && rm -f "$tarball" || exit 2
  packed="$(ls "$tarball".* | tr '\n' ' ')(put together: cat $tarball.* > $tarball)"
fi
echo "[gpu-session] check exit $rc, $part_name exit $perf_rc, $(( SECONDS - t0 )) s; packed into $packed" | tee -a "$log"
exit $(( rc != 0 ? rc : perf_rc ))
