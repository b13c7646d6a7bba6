"""``rnnbench sweep`` and ``rnnbench report``, added to the ``rnnbench`` command by :func:`lm.cli.build_parser`."""

from __future__ import annotations

import argparse


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
    from lm.cli import add_run_args

    s = sub.add_parser("sweep", help="train every chosen cell, each in its own process, and summarise",
                       description="One full training per cell, each in its own process (`rnnbench train`), "
                                   "writing the usual run records; cells that cannot train here get an "
                                   "`unavailable` record, crashed ones a `failed` record.")
    s.add_argument("--cells", default="all", help="all (default), or comma-separated cells (see `rnnbench cells`)")
    add_run_args(s)
    s.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    s.add_argument("--quiet", action="store_true", help="no progress bars from the training processes")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="write REPORT.md, report.csv and plots from the results folder",
                       description="Tables and plots from <results>/runs/*.json (training runs), "
                                   "<results>/bench/**/*.json (micro-benchmarks) and <results>/machine/*.json "
                                   "(measured matmul rates).")
    r.add_argument("--results", default="results", help="results folder (default results)")
    r.set_defaults(func=cmd_report)
