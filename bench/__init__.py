"""The benchmark suite: micro-benchmarks, training sweeps and the comparison report.

- ``bench/bench_cells.py``: pytest-benchmark micro-benchmarks of every cell that runs
  on the current device (forward, forward + backward, whole LM training step) at the
  PTB shapes; ``bench/conftest.py`` records the machine and the measured matmul rate.
- ``bench/sweep.py``: ``rnnbench sweep``, one full training per (preset, cell, seed), each in its own
  process; ``bench/runs.py`` runs one of them (``bench/child.py``: the process, its output and time
  limit) under either engine, ``bench/ray_engine.py`` runs them side by side as Ray tasks.
- ``bench/report/``: ``rnnbench report``, ``results/REPORT.md``, ``results/report.csv`` and plots, from what
  ``data.py`` reads and checks (run records, benchmark JSON, matmul rates); a module per kind of section
  (``micro.py``, ``training.py``, ``plots.py``) and what they share (``common.py``).
- ``bench/machine.py``: the device's measured matmul rate; ``bench/flops.py``: the work per token.
"""
