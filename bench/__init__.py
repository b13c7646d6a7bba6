"""The benchmark suite: micro-benchmarks, training sweeps and the comparison report.

- ``bench/bench_cells.py``: pytest-benchmark micro-benchmarks of every cell that runs
  on the current device (forward, forward + backward, whole LM training step) at the
  PTB shapes; ``bench/conftest.py`` records the machine and the measured matmul rate.
- ``bench/sweep.py``: ``rnnbench sweep``, one full training per cell, each in its own process.
- ``bench/report.py``: ``rnnbench report``, ``results/REPORT.md``, ``results/report.csv`` and plots.
- ``bench/machine.py``: the device's measured matmul rate; ``bench/flops.py``: the work per token.
"""
