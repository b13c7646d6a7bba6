"""The ``rnnbench train`` and ``rnnbench cells`` commands, and what every command's parser shares (:class:`Parser`,
:func:`add_run_args`, seeds).  The ``rnnbench`` command itself, with ``sweep`` and ``report``, is :mod:`bench.cli`:
``bench`` builds on ``lm``, never the other way round."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lm.errors import UsageError


def _config_args(p: argparse.ArgumentParser) -> None:
    from lm.config import Config

    g = p.add_argument_group("config overrides (any preset field)")
    for f in dataclasses.fields(Config):
        if f.name == "name":
            continue
        g.add_argument(f"--{f.name.replace('_', '-')}", type=f.type if f.type in (int, float) else
                       {"int": int, "float": float}.get(str(f.type), str), default=None, metavar=f.name.upper())


def _overrides(args: argparse.Namespace) -> dict:
    from lm.config import Config

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name != "name"}


SEED_MAX = 2**63 - 1  # what torch.manual_seed takes


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]: distinct non-negative integers (an argparse ``type``)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") \
            from None
    if not seeds or any(not 0 <= s <= SEED_MAX for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes distinct non-negative integers such as 0,1,2, got {text!r}")
    return seeds


def number_arg(cast, ok, expected: str):
    """An argparse ``type``: ``cast(text)`` where ``ok`` holds of it, else the one-line error "expected <expected>"."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_seed = number_arg(int, lambda v: 0 <= v <= SEED_MAX, "an integer from 0 to 2**63 - 1")  # --seed, as each of --seeds
positive_int = number_arg(int, lambda v: v > 0, "a positive integer")


def path_arg(text: str) -> str:
    """A path option: not empty (an empty one would mean the current folder, or a default, silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def seeds_of(args: argparse.Namespace) -> list[int]:
    """The seeds a train or sweep command asked for: ``--seeds``, else ``[--seed]``."""
    return list(args.seeds) if getattr(args, "seeds", None) else [args.seed]


def _without_seeds(argv: list[str]) -> list[str]:
    """``argv`` without its ``--seeds LIST`` / ``--seeds=LIST``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--seeds":
            skip = True
        elif not a.startswith("--seeds="):
            out.append(a)
    return out


def _train_seeds(args: argparse.Namespace, seeds: list[int]) -> int:
    """``rnnbench train --seeds 0,1,2``: one ``rnnbench train --seed S`` process per seed, one after another
    (each with its own peak memory); stops at an interrupted one.  Exit status: 0 when every seed ended ok."""
    import signal
    import subprocess
    import threading

    if args.checkpoint is not None:
        raise UsageError("--checkpoint names one file; with --seeds each seed checkpoints to its own default path")
    if args.resume:  # every seed's checkpoint before the first seed trains
        from lm.checkpoint import default_path
        from lm.train import numerics_suffix, resolve_device

        device = resolve_device(args.device)
        for seed in seeds:
            path = default_path(args.results, args.config, args.cell, device, seed, args.step,
                                numerics_suffix(args.dtype, args.fp32_matmul))
            if not path.is_file():
                raise UsageError(f"--resume: no checkpoint of seed {seed} at {path}")
    argv, worst = _without_seeds(args.argv), 0
    for i, seed in enumerate(seeds, 1):
        print(f"rnnbench train: seed {seed} ({i} of {len(seeds)})", flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *argv, "--seed", str(seed)], start_new_session=True)
        stopped = []

        def hand_on(signum, frame, proc=proc, stopped=stopped):  # once per signal, as a sweep does
            stopped.append(signum)
            if proc.poll() is None:
                proc.send_signal(signum)

        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, hand_on) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            rc = proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        if rc == 2:  # bad input: the same for every seed
            return 2
        worst = worst or rc
        if stopped or rc in (130, 143):
            print(f"rnnbench train: stopped at seed {seed}; the remaining seeds were not run", file=sys.stderr)
            return rc or 130
    return 1 if worst else 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from lm import config, data, records
    from lm.train import check_cell, check_numerics, resolve_device, train

    seeds = seeds_of(args)
    if len(seeds) > 1:
        return _train_seeds(args, seeds)
    args.seed = seeds[0]
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # recorded as env.torch_threads
    cfg = config.preset(args.config, **_overrides(args))
    device = resolve_device(args.device)
    check_cell(args.cell, device, args.allow_interpreter)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    check_numerics(device, dtype, args.fp32_matmul)  # before the corpus loads
    if args.results is not None:
        from lm.records import ensure_writable

        ensure_writable(args.results)
    corpus = data.load(args.data_dir, check_md5=not args.no_verify)
    rec = train(cfg, args.cell, corpus, device, seed=args.seed, results_dir=args.results, max_steps=args.max_steps,
                progress=not args.quiet, command=["rnnbench", *args.argv], dtype=dtype,
                checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
                deterministic=args.deterministic, heartbeat=args.heartbeat, step_mode=args.step,
                max_eval_words=args.max_eval_words, fp32_matmul=args.fp32_matmul)
    ppl = "n/a" if rec["test_ppl"] is None else f"{rec['test_ppl']:.2f}"
    wps = "n/a" if not rec["words_per_sec"] else f"{rec['words_per_sec']:.0f}"
    where = f"; record {rec['record_path']}" if "record_path" in rec else ""
    mode = "" if rec.get("step_mode", "eager") == "eager" else f" --step {rec['step_mode']}"
    mode += "" if records.numerics(rec) == "fp32" else f" ({records.numerics(rec)})"
    print(f"{rec['cell']}{mode} [{rec['backend']}] {cfg.name} on {rec['env']['device_name']}: status {rec['status']}, "
          f"test ppl {ppl}, {wps} words/sec{where}")
    if rec["status"] != "ok":
        print(f"rnnbench: {rec['status']}: {rec['error']}", file=sys.stderr)
    last = (rec.get("epochs") or [{}])[-1]
    if last.get("train_spikes"):
        print(f"rnnbench: note: {last['train_spikes']} training window(s) of the last epoch scored worse than twice "
              f"a uniform guess (the worst at perplexity {last['train_max_window_ppl']:.3g}): unstable training, and "
              "an evaluation right after such a window scores like one", file=sys.stderr)
    return {"ok": 0, "interrupted": rec.get("exit_code", 130)}.get(rec["status"], 1)


def cmd_cells(args: argparse.Namespace) -> int:
    import cells
    from lm.train import resolve_device

    device = resolve_device(args.device)
    from tabulate import tabulate

    infos = cells.available(device)
    rows = [(c.name, c.kind, c.device, "yes" if c.runnable else "no", c.detail) for c in infos]
    print(tabulate(rows, headers=["cell", "kind", "device", "runs here", "backend / reason"]))
    notes = [f"  {c.name}: {c.note}" for c in infos if c.note]
    if notes:
        print("\nParameters not shaped like nn.LSTM / nn.GRU (their state_dicts move to no cell of another kind):")
        print("\n".join(notes))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (and exit status 2), like every other bad input."""

    def error(self, message: str):
        where = "" if self.prog == "rnnbench" else f"{self.prog}: "  # (a command's parser: "rnnbench train: ...")
        self.exit(2, f"rnnbench: error: {where}{message} (see {self.prog} --help)\n")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options every training command shares (train, sweep)."""
    from lm.config import PRESETS

    p.add_argument("--config", default="small", help=f"preset: {', '.join(PRESETS)} (default small)")
    p.add_argument("--max-steps", type=int, default=None, help="truncate every epoch to this many windows")
    p.add_argument("--max-eval-words", type=int, default=None, metavar="N",
                   help="validate and test on the first N words of each stream only (smoke runs; the record "
                        "and the report say so; default: the whole streams, as the tutorial)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--fp32-matmul", default="ieee", choices=["ieee", "tf32"],
                   help="float32 matmuls on CUDA, for every cell alike (cuBLAS, cuDNN's RNNs, the Triton cells): "
                        "ieee, exact (default); tf32, on the tensor cores. Torch's own defaults differ between "
                        "cuDNN (TF32) and cuBLAS (exact); the record and the report say which ran")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_seed, default=0)
    seeds.add_argument("--seeds", type=parse_seeds, default=None, metavar="LIST",
                       help="several seeds, e.g. 0,1,2: one run each (the report gives mean ± sd over them)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads of the training process (default: torch's choice; recorded)")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="folder with ptb.{train,valid,test}.txt (else $PTB_DIR, else the cache folder, downloading)")
    p.add_argument("--no-verify", action="store_true", help="skip the PTB MD5 checks (custom corpus)")
    p.add_argument("--results", type=path_arg, default="results", help="results folder (default results)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``cells`` subcommands to the ``rnnbench`` subparsers ``sub``."""
    t = sub.add_parser("train", help="train the PTB language model with one cell and write a run record")
    t.add_argument("--cell", required=True, help="a registered cell (see `rnnbench cells`)")
    add_run_args(t)
    t.add_argument("--allow-interpreter", action="store_true",
                   help="train a Triton cell in Triton's CPU interpreter (very slow)")
    t.add_argument("--quiet", action="store_true", help="no progress bars (the heartbeat stays)")
    t.add_argument("--heartbeat", type=float, default=10.0, metavar="SEC",
                   help="seconds between one-line heartbeats on stderr: phase, epoch, step, words/sec (0: none; "
                        "default 10)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this run")
    t.add_argument("--checkpoint", type=path_arg, default=None, metavar="PATH",
                   help="checkpoint file (default <results>/checkpoints/<config>-<cell>[-<step mode>][-tf32|-bf16]-"
                        "<device>-seed<S>.pt)")
    t.add_argument("--checkpoint-every", type=float, default=10.0, metavar="MIN",
                   help="minutes between mid-epoch checkpoints; 0: only at epoch ends (default 10)")
    t.add_argument("--step", default="eager", choices=["eager", "compile", "cuda-graph"],
                   help="how the training step runs: eager; compile (torch.compile of forward and loss); "
                        "cuda-graph (the whole step captured once and replayed; CUDA only)")
    t.add_argument("--deterministic", action="store_true",
                   help="PyTorch's deterministic algorithms (ops without one raise)")
    _config_args(t)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cells", help="list the registered cells and whether they can run here")
    c.add_argument("--device", default=None)
    c.set_defaults(func=cmd_cells)
