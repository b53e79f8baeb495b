"""Command line: ``lazydrift run RECIPE.toml [--out DIR] [--device cpu|cuda|auto] [--seed N]``.

Exit status: 0 done; 2 bad input (a recipe mistake, an unusable or foreign output folder, a
run already writing there, too little memory, missing or corrupt data), printed as one line
naming the file, key or argument and the fix, without a traceback; 3 training diverged;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM, e.g. a Slurm time limit).  An unexpected
error keeps its traceback (status 1).  In every case the run record (run.json) says how the
run ended.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import UserError

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run record says ``interrupted``."""


def _error(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"lazydrift: error: {' '.join(msg.split())}", file=sys.stderr)  # always one line
    return code


def cmd_run(args) -> int:
    from .experiment import run_recipe
    from .recipes import load_recipe
    from .shard import bind_local_device, resolve_shard

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.download:
        overrides.append("data.download=true")
    recipe = load_recipe(args.recipe, overrides)
    if args.out is not None and not args.out.strip():  # Path("") would be the current folder
        raise UserError("--out is empty: give a folder, or leave --out out for results/<recipe name>")
    out = Path(args.out) if args.out is not None else default_out(recipe)
    shard = resolve_shard(args.shard)  # --shard i/N, torchrun's RANK/WORLD_SIZE or a Slurm array
    if shard is not None:
        bind_local_device()
    run = run_recipe(recipe, out, device=args.device, progress=not args.quiet, resume=args.resume,
                     overwrite=args.overwrite, shard=shard)
    if shard is not None:
        print(f"lazydrift: shard {shard[0]}/{shard[1]} wrote {len(run['cells'])} cells to {out}/cells/ "
              f"(status: {run['status']}, {run['wall_seconds']:.1f} s); combine with `lazydrift merge {out}`")
        return _error(run.get("error", "diverged"), EXIT_DIVERGED) if run["status"] == "diverged" else 0
    table = out / "table1.md"
    if table.exists() and not args.quiet:
        print(table.read_text())
    print(f"lazydrift: wrote {out}/ (status: {run['status']}, {run['wall_seconds']:.1f} s)")
    if run["status"] == "diverged":
        return _error(run.get("error", "diverged"), EXIT_DIVERGED)
    return 0


def default_out(recipe) -> Path:
    """``results/<name>``, for a name that is one folder name (not ``../x``, ``a/b`` or ``/abs``)."""
    name = recipe.name
    if name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise UserError(f"{recipe.path}: name {name!r} is not a folder name, and results/<name>/ is where the run "
                        "would go; use a name without '/' (or '.', '..') or pass --out")
    return Path("results") / name


def cmd_plot(args) -> int:
    from .plots import plot_results

    skipped: list[str] = []
    try:
        written = plot_results(args.results, skipped)
    except OSError as e:  # a read-only folder, a full disk
        return _error(f"{args.results}: cannot write the figures there ({e.strerror or e}); "
                      "copy the folder somewhere writable and plot the copy")
    for path in written:
        print(f"lazydrift: wrote {path}")
    for reason in skipped:
        print(f"lazydrift: skipped {reason}")
    return 0


def cmd_merge(args) -> int:
    from .shard import merge

    run = merge(args.out, args.more)
    print(f"lazydrift: merged {len(run['cells'])} cells into {args.out}/ (status: {run['status']})")
    if run["missing_cells"]:
        print(f"lazydrift: missing cells: {', '.join(run['missing_cells'])}", file=sys.stderr)
    return 0


FORWARDED = ("table2", "figures")


def cmd_forward(args) -> int:
    """Subcommands whose options live in their own module (``python -m lazydrift.table2 --help``)."""
    import importlib

    module = importlib.import_module(f"lazydrift.{args.command}")
    return module.main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazydrift", description="Measure how the hidden features of wide "
                                     "networks move during training (the lazy / NTK regime).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe (TOML) and write results/<name>/")
    run.add_argument("recipe", help="path to a recipe .toml file")
    run.add_argument("--out", help="output folder (default results/<recipe name>)")
    run.add_argument("--device", choices=["cpu", "cuda", "auto"], help="overrides the recipe's device")
    run.add_argument("--seed", type=int, help="overrides the recipe's seed")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override a recipe key, e.g. --set train.steps=10 (repeatable)")
    run.add_argument("--download", action="store_true", help="allow downloading missing data")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out: keep finished cells, resume the rest from checkpoints")
    again.add_argument("--overwrite", action="store_true",
                       help="remove every result in --out (of any recipe) and start afresh")
    run.add_argument("--quiet", action="store_true", help="no progress bars or table")
    run.add_argument("--shard", metavar="I/N", help="run only cells I, I+N, ... (0-based I) and leave combining to "
                     "`lazydrift merge`; default from torchrun (RANK/WORLD_SIZE) or a Slurm array")
    run.set_defaults(func=cmd_run)
    plot = sub.add_parser("plot", help="write PNG figures for a results folder")
    plot.add_argument("results", help="a folder written by `lazydrift run`")
    plot.set_defaults(func=cmd_plot)
    merge = sub.add_parser("merge", help="combine the cells of sharded runs into OUT's top-level files")
    merge.add_argument("out", help="output folder (its cells/ are included)")
    merge.add_argument("more", nargs="*", help="more folders whose cells/ to include")
    merge.set_defaults(func=cmd_merge)
    for name, text in (("table2", "Table 2: NTK regression on MNIST at depth 30 (see --help)"),
                       ("figures", "Figures 2 to 8 of the paper (see --help)")):
        forward = sub.add_parser(name, help=text, add_help=False)
        forward.add_argument("rest", nargs=argparse.REMAINDER)
        forward.set_defaults(func=cmd_forward)
    return parser


def _continue(args) -> str:
    """How to pick up after an interrupt: only a run has anything to resume."""
    return "; continue with --resume" if args.command == "run" else ""


def _terminate(signum, frame):
    raise Terminated("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    from .text8 import DataNotFoundError  # and its subclass CorruptDataError: the message says how to fix it

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:  # everything after the subcommand belongs to its own parser
        return cmd_forward(argparse.Namespace(command=argv[0], rest=argv[1:]))
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args)
    except (UserError, DataNotFoundError) as e:
        return _error(str(e))
    except Terminated:
        return _error(f"terminated (SIGTERM){_continue(args)}", EXIT_TERMINATED)
    except KeyboardInterrupt:
        return _error(f"interrupted{_continue(args)}", EXIT_INTERRUPTED)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
