"""The ``rnnbench`` command: ``train`` and ``cells`` (:mod:`lm.cli`), ``sweep`` and ``report`` (here).

``python -m bench.cli`` is the same command (the sweeps start their training runs so)."""

from __future__ import annotations

import argparse
import os
import sys

from lm import cli as lm_cli
from lm.errors import UsageError


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.sweep import sweep

    return sweep(args)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report

    path = write_report(args.results)
    print(f"wrote {path}, {path.parent / 'report.csv'} and the plots in {path.parent / 'plots'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` and ``report`` subcommands to the ``rnnbench`` subparsers ``sub``."""
    s = sub.add_parser("sweep", help="train every chosen cell, preset and seed, each in its own process",
                       description="One full training per (preset, cell, seed), each in its own process "
                                   "(`rnnbench train`), writing the usual run records; cells that cannot train here "
                                   "get an `unavailable` record, crashed ones a `failed` record, ones past "
                                   "--cell-timeout a `timeout` record. --config takes several presets, "
                                   "comma-separated.")
    s.add_argument("--cells", default="all", help="all (default), or comma-separated cells (see `rnnbench cells`)")
    lm_cli.add_run_args(s)
    s.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    s.add_argument("--quiet", action="store_true", help="no progress bars from the training processes")
    s.add_argument("--steps", default="eager", metavar="MODES",
                   help="step modes, comma-separated: eager (default), compile, cuda-graph (see train --step)")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: runs here, one after another (or --jobs at once; default); ray: runs side by side "
                        "as Ray tasks")
    s.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with the local engine: up to N runs at once, each in its own process (default 1); CPU runs "
                        "then take --threads 1 unless told otherwise, and with --device cuda on a machine of several "
                        "GPUs each run starts on the GPU with the fewest runs. Runs side by side share the machine: "
                        "their words/sec are not the machine's best (the report marks them `beside N`)")
    s.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --engine ray: the cluster to join (default $RAY_ADDRESS, else a new one on this "
                        "machine)")
    s.add_argument("--no-measure", action="store_true",
                   help="do not measure the device's matmul rate first (the report then uses the newest "
                        "measurement under <results>/machine, e.g. from an earlier sweep)")
    s.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="end a run past this many seconds and record it as `timeout` (default: no limit)")
    s.add_argument("--kill-grace", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between SIGTERM (checkpoint and stop) and SIGKILL when ending a run (default 30)")
    s.add_argument("--heartbeat", type=float, default=10.0, metavar="SEC",
                   help="seconds between the runs' heartbeat lines (default 10)")
    s.add_argument("--checkpoint-every", type=float, default=None, metavar="MIN",
                   help="minutes between mid-epoch checkpoints of each run (default: train's, 10)")
    s.add_argument("--checkpoint-dir", type=lm_cli.path_arg, default=None, metavar="DIR",
                   help="where runs checkpoint, in a sweep-<id> folder (default <results>/checkpoints); on a "
                        "multi-node Ray cluster a folder every node mounts at the same path")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="write REPORT.md, report.csv and plots from the results folder",
                       description="Tables and plots from <results>/runs/*.json (training runs), "
                                   "<results>/bench/**/*.json (micro-benchmarks) and <results>/machine/*.json "
                                   "(measured matmul rates).")
    r.add_argument("--results", type=lm_cli.path_arg, default="results", help="results folder (default results)")
    r.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    p = lm_cli.Parser(prog="rnnbench", description="Benchmark LSTM/GRU cell implementations on PTB.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lm_cli.add_commands(sub)
    add_commands(sub)
    p.set_defaults(commands=sub.choices)  # each command's parser: it reports the arguments it does not know
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, which lists what it takes ("see rnnbench train --help")
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # (a closed pipe raises here, not at exit)
        return code
    except UsageError as exc:
        print(f"rnnbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnnbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`rnnbench cells | head`): no traceback (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
