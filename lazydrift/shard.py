"""Splitting a recipe's cells across processes and machines, and merging the pieces.

A recipe is a list of independent cells (parameterization, seed, width).  Shard ``i`` of ``N``
(0-based) runs cells ``i, i + N, i + 2N, ...`` of :meth:`lazydrift.recipes.Recipe.cells`
(round robin, so every shard gets a mix of small and large widths), writes them to
``OUT/cells/<cell>/`` and records what it did in ``OUT/shard-i-of-N.json``; it writes no combined
top-level file, so shards can share one folder (on a shared filesystem) without races.
``lazydrift merge OUT [MORE_DIRS ...]`` then combines every cell found under those folders into
OUT's top-level files, exactly as an unsharded run would have written them.

Where the shard comes from, first match wins:

1. ``lazydrift run RECIPE --shard i/N``;
2. torchrun / torch.distributed launchers: ``RANK`` and ``WORLD_SIZE`` (one process per GPU;
   ``LOCAL_RANK`` picks the GPU), when ``WORLD_SIZE`` > 1;
3. Slurm job arrays: ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``.  The shard index is
   ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` (``MIN`` taken as 0 when unset), so the array
   must be contiguous with step 1: ``--array=0-(N-1)`` (0-based ids, the usual choice) or
   ``--array=1-N`` both work; anything else is refused with a one-line error.

torchrun inside a Slurm array composes: task ``a`` of ``A`` running ranks ``r`` of ``W`` is
shard ``a * W + r`` of ``A * W``.  No process group is created: shards never communicate.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence, TypeVar

from . import report, rundir
from .export import write_json
from .recipes import (CELL_KEYS, Cell, Recipe, RecipeError, fingerprint_differences, fingerprint_digest,
                      stored_recipe_from_dict)

T = TypeVar("T")


class ShardError(RecipeError):
    """A shard specification cannot be used; the message says which and why."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ShardError(f"--shard {text!r}: expected i/N with 0-based i, e.g. --shard 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ShardError(f"--shard {text!r}: N must be >= 1")
    if not 0 <= i < n:
        raise ShardError(f"--shard {text!r}: i must satisfy 0 <= i < N (shards are numbered from 0)")
    return i, n


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ShardError(f"environment variable {name}={env[name]!r} is not an integer") from None


def torchrun_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
    if "WORLD_SIZE" not in env:
        return None
    world = _int_env(env, "WORLD_SIZE")
    if world <= 1:
        return None
    if "RANK" not in env:
        raise ShardError(f"WORLD_SIZE={world} is set but RANK is not; launch with torchrun or set RANK")
    rank = _int_env(env, "RANK")
    if not 0 <= rank < world:
        raise ShardError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    return rank, world


def slurm_array_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    if "SLURM_ARRAY_TASK_COUNT" not in env:
        raise ShardError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard i/N instead")
    task, count = _int_env(env, "SLURM_ARRAY_TASK_ID"), _int_env(env, "SLURM_ARRAY_TASK_COUNT")
    low = _int_env(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
    index = task - low
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"Slurm array task {task} (min {low}, count {count}) is not one of 0..count-1 after "
                         f"subtracting the minimum: submit a contiguous array, e.g. --array=0-{count - 1}, "
                         "or pass --shard i/N")
    return index, count


def resolve_shard(arg: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The shard this process runs: from ``--shard`` if given, else the environment, else None."""
    if arg is not None:
        return parse_shard(arg)
    env = os.environ if env is None else env
    ranks, array = torchrun_shard(env), slurm_array_shard(env)
    if ranks and array:
        return array[0] * ranks[1] + ranks[0], array[1] * ranks[1]
    return ranks or array


def shard_cells(cells: Sequence[T], index: int, count: int) -> list[T]:
    """Round robin: cell k belongs to shard k mod ``count``."""
    if not 0 <= index < count:
        raise ShardError(f"shard {index}/{count}: need 0 <= i < N")
    return list(cells[index::count])


def shard_record_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}.json"


def bind_local_device(env: Mapping[str, str] | None = None) -> None:
    """Under torchrun on a multi-GPU machine, make ``cuda`` mean this process's GPU (LOCAL_RANK)."""
    import torch

    env = os.environ if env is None else env
    if "LOCAL_RANK" in env and torch.cuda.is_available():
        local = _int_env(env, "LOCAL_RANK")
        torch.cuda.set_device(local % torch.cuda.device_count())


def merge(out, sources=()) -> dict:
    """Combine the cells under ``out`` and ``sources`` into ``out``'s top-level files; returns run.json.

    ``out`` may be a new folder when ``sources`` are given.  Every folder must belong to the same recipe (their recipe.json and every cell's fingerprint);
    anything else is refused with one line naming the keys that differ.  Cells of the recipe
    that are missing are listed in run.json's ``missing_cells`` (status ``incomplete``); a cell
    found in two folders is an error.  ``out`` is locked like a run: no run or merge may write
    there meanwhile.
    """
    out = Path(out)
    dirs: list[Path] = []
    for d in [out, *map(Path, sources)]:
        if d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    for d in dirs:
        if d is out and sources and not out.exists():
            continue  # a new folder for the merged sweep (created under the lock)
        if not d.is_dir():
            raise ShardError(f"{d}: no such folder")
    with rundir.lock(out):
        recipe = merged_recipe(dirs)
        digest = fingerprint_digest(recipe.fingerprint())
        cells = rundir.read_cells(*dirs)
        if not cells:
            raise ShardError(f"no finished cells under {', '.join(str(d / 'cells') for d in dirs)}: run the shards first")
        seen: dict[str, Path] = {}
        for info, folder in cells:
            if info.get("fingerprint") != digest:
                raise ShardError(f"{folder / 'cell.json'} was written for another recipe than {dirs[0] / rundir.RECIPE_FILE}; "
                                 "merge only folders of one recipe")
            if folder.name in seen:
                raise ShardError(f"cell {folder.name} is in both {seen[folder.name].parent} and {folder.parent}; "
                                 "remove one copy before merging")
            seen[folder.name] = folder
        records = [rundir.read_json(p) for d in dirs for p in sorted(d.glob("shard-*-of-*.json"))]
        if not records:
            records = [rundir.read_json(d / rundir.RUN_FILE) for d in dirs if (d / rundir.RUN_FILE).is_file()]
        info = next((r["data"] for r in records if r.get("data")), {})
        rundir.write_recipe(out, recipe)
        rundir.clear(out, cells=False)
        if not (out / "probes.csv").is_file():
            for d in dirs[1:]:
                if (d / "probes.csv").is_file():
                    shutil.copyfile(d / "probes.csv", out / "probes.csv")
                    break
        report.aggregate(out, recipe, info, sources=dirs)
        infos = [i for i, _ in cells]
        missing = [c.name for c in recipe.cells() if c.name not in seen]
        failed = [Cell(**{k: i[k] for k in CELL_KEYS}).name for i in infos if i.get("status") != "completed"]
        run = {"merged": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sources": [str(d) for d in dirs],
               "recipe": recipe.to_dict(), "fingerprint": digest, "layers": rundir.layer_order(infos), "data": info,
               "shards": [r.get("shard") for r in records if r.get("shard")],
               "status": "completed" if not missing and not failed else "incomplete",
               "missing_cells": missing, "failed_cells": failed, "cells": infos}
        write_json(run, out / rundir.RUN_FILE)
    return run


def merged_recipe(dirs: list[Path]) -> Recipe:
    """The one recipe every folder belongs to (their recipe.json), or a one-line refusal."""
    found = []
    for d in dirs:
        if (d / rundir.RECIPE_FILE).is_file():
            found.append((d, rundir.stored_recipe(d)[0], rundir.read_json(d / rundir.RECIPE_FILE)["recipe"]))
        elif rundir.has_results(d):
            raise ShardError(f"{d} holds results without a {rundir.RECIPE_FILE} (written by an older lazydrift); "
                             "rerun its shards or leave it out")
    if not found:
        raise ShardError(f"no {rundir.RECIPE_FILE} under {', '.join(map(str, dirs))}: run the shards first")
    first_dir, first, raw = found[0]
    for d, fingerprint, _ in found[1:]:
        if fingerprint != first:
            raise ShardError(f"{d} and {first_dir} hold results of different recipes "
                             f"({'; '.join(fingerprint_differences(first, fingerprint))}); merge only folders of one recipe")
    return stored_recipe_from_dict(raw, first_dir / rundir.RECIPE_FILE)
