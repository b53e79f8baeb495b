"""Run a recipe: check, lock and claim the output folder, load the data, run each cell, combine.

This is the glue behind ``lazydrift run``; the pieces live in their own modules:

* :mod:`lazydrift.preflight`: checks before any work (layers, ``--out``, memory);
* :mod:`lazydrift.rundir`: whose folder it is (recipe.json), the lock, run.json;
* :mod:`lazydrift.tasks`: the data as inputs, targets, sampler and probes;
* :mod:`lazydrift.cell`: one cell's training loop and files (checkpoints: :mod:`lazydrift.checkpoint`);
* :mod:`lazydrift.report`: the cells combined into the top-level files, once, at the end.

Every exit path leaves the run record (run.json, or shard-i-of-N.json for a shard) with a final
status: ``completed``, ``diverged``, ``failed`` (with the message) or ``interrupted``.
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import preflight, report, rundir
from .cell import recorded_layers, run_cell
from .export import write_csv
from .recipes import Cell, Recipe, RecipeError, fingerprint_digest
from .shard import shard_cells, shard_record_name
from .tasks import make_task


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(package: str) -> str:  # without importing it (torchvision alone takes a second)
        try:
            return version(package)
        except PackageNotFoundError:
            return ""

    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=here).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    timeout=5, cwd=here).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "versions": {"lazydrift": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, **{p: installed(p) for p in ("torchvision", "pandas", "gensim")}},
        "git_commit": commit, "git_dirty": dirty, "host": platform.node(), "platform": platform.platform(),
    }


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch_threads": torch.get_num_threads(),
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_recipe(recipe: Recipe, out_dir: str | Path, device: str | None = None, progress: bool = True,
               resume: bool = False, overwrite: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """Run the recipe's cells and write every output; returns the run record's content.

    ``shard=(i, N)`` runs only cells i, i + N, ... and records itself in ``shard-i-of-N.json``
    instead of run.json; ``lazydrift merge`` combines the shards (:mod:`lazydrift.shard`).
    Raises a :class:`~lazydrift.errors.UserError` before any work when the run cannot start.
    """
    out = Path(out_dir)
    dev = resolve_device(device or recipe.device)
    cells = recipe.cells() if shard is None else shard_cells(recipe.cells(), *shard)
    layers = recorded_layers(recipe)
    preflight.check(recipe, dev, out, layers)
    with rundir.lock(out, cells=None if shard is None else cells):
        rundir.claim(out, recipe, cells, resume=resume, overwrite=overwrite, whole=shard is None)
        record = rundir.RunRecord(out / (rundir.RUN_FILE if shard is None else shard_record_name(*shard)), {
            "recipe": recipe.to_dict(), "recipe_path": recipe.path,
            "fingerprint": fingerprint_digest(recipe.fingerprint()), "seed": recipe.seed, "resumed": resume,
            "overwrite": overwrite, "layers": layers, **environment(), **device_info(dev),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"shard": {"index": shard[0], "count": shard[1], "cells": [c.name for c in cells]}} if shard else {})})
        started = time.time()
        try:
            status, error, infos, data = run_cells(recipe, cells, dev, out, layers, resume, progress)
            if shard is None and infos:  # shards leave combining to `lazydrift merge`
                report.aggregate(out, recipe, data)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (lazydrift.cli)
            record.update(status="interrupted", error=str(e) or "interrupted by Ctrl-C (SIGINT)",
                          wall_seconds=round(time.time() - started, 3))
            raise
        except BaseException as e:
            record.update(status="failed", error=f"{type(e).__name__}: {e}", wall_seconds=round(time.time() - started, 3))
            raise
        record.update(status=status, error=error, data=data, cells=infos, wall_seconds=round(time.time() - started, 3))
    return record.content


def run_cells(recipe: Recipe, cells: list[Cell], device: torch.device, out: Path, layers: list[str],
              resume: bool, progress: bool) -> tuple[str, str, list[dict], dict]:
    """Load the data, then run each cell (skipping finished ones when resuming) until one diverges.

    Returns (status, error, the cells' cell.json contents, the data description).
    """
    torch.backends.cuda.matmul.allow_tf32 = recipe.train.tf32
    torch.backends.cudnn.allow_tf32 = recipe.train.tf32
    task = make_task(recipe)
    write_csv(task.probe_table, out / "probes.csv")
    infos = []
    for cell in cells:
        info = rundir.cell_state(out, cell) if resume else None  # a cell.json is written once the cell is final
        if info is None:
            info = run_cell(recipe, task, cell, device, out / rundir.CELLS / cell.name, layers,
                            resume=resume, progress=progress)
        infos.append(info)
        if info["status"] != "completed":
            return info["status"], info["error"], infos, task.info
    return "completed", "", infos, task.info
