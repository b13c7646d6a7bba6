set -u
mkdir -p /tmp/o
step() { name=$1; lim=$2; shift 2; echo "=== $name (limit $lim s)"; s=$(date +%s); timeout -s INT -k 5 $lim "$@" > /tmp/o/$name.log 2>&1; echo "=== $name rc=$? in $(( $(date +%s)-s )) s"; tail -25 /tmp/o/$name.log; }
step diag 70 python3 data/diag.py 60
FH="import faulthandler,sys,runpy; faulthandler.dump_traceback_later(40, exit=True); sys.argv=['rnnbench']+sys.argv[1:]; runpy.run_module('lm.cli', run_name='__main__')"
step train 50 python3 -c "$FH" train --cell triton_lstm --config small --epochs 1 --max-steps 40 --device cuda --data-dir data/ptb --results /tmp/o/r1 --heartbeat 3
step trainblk 50 env CUDA_LAUNCH_BLOCKING=1 python3 -c "$FH" train --cell triton_lstm --config small --epochs 1 --max-steps 40 --device cuda --data-dir data/ptb --results /tmp/o/r2 --heartbeat 3
step tests 100 python3 -m pytest -q -p no:cacheprovider -o addopts= -m gpu tests -k "not compiled" --ignore tests/test_ray_sweep.py -x
step modes 80 python3 -m pytest -q -p no:cacheprovider -o addopts= bench -k step_mode --benchmark-only --bench-device cuda --bench-shapes small --bench-cells cudnn_lstm,loop_lstm --bench-modes compile,cuda-graph --benchmark-max-time 0.1 --benchmark-json=/tmp/o/modes.json
tar czf $OUT/o.tgz -C /tmp o
