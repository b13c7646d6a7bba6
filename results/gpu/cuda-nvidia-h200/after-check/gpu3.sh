set -u
mkdir -p /tmp/o
step() { name=$1; lim=$2; shift 2; echo "=== $name (limit $lim s)"; s=$(date +%s); timeout -s INT -k 5 $lim "$@" > /tmp/o/$name.log 2>&1; echo "=== $name rc=$? in $(( $(date +%s)-s )) s"; tail -c 3500 /tmp/o/$name.log; }
FH="import faulthandler,sys,runpy; faulthandler.dump_traceback_later(55, exit=True); sys.argv=['rnnbench']+sys.argv[1:]; runpy.run_module('lm.cli', run_name='__main__')"
step trainfull 65 python3 -c "$FH" train --cell triton_lstm --config small --epochs 1 --device cuda --data-dir data/ptb --results /tmp/o/r3 --heartbeat 2 --quiet
PYTHONPATH=. step diag 60 python3 data/diag.py 50
rm -rf /tmp/o/*/checkpoints; tar czf $OUT/o.tgz -C /tmp o
