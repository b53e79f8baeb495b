"""An output folder belongs to one recipe and is written by one run at a time.

What a folder ``OUT`` holds (README "Reliability"):

    OUT/recipe.json              the recipe (after --set) and its fingerprint digest: whose folder this is
    OUT/run.json                 the last run's record: status running, then completed, diverged,
                                 failed (with the message) or interrupted (shards: shard-i-of-N.json)
    OUT/cells/<cell>/            one folder per cell: its CSVs, cell.json (with the fingerprint
                                 digest) and, while unfinished, checkpoint.pt (with the recipe)
    OUT/*.csv, *.md, *.png       the cells combined (lazydrift.report), written at the end of a run
    OUT/.lock                    the lock file (never removed)

Rules, checked before any work (:func:`claim`):

* a run of another recipe (any key of the fingerprint differs) is refused with one line naming
  the keys, unless ``--overwrite``, which removes every result first;
* ``--resume`` keeps finished cells, continues unfinished ones from their checkpoints and
  refuses when any cell or checkpoint was written for another recipe;
* without either, a run of the same recipe starts its cells afresh, unless one of them holds a
  checkpoint (unfinished work that ``--resume`` would continue): that is refused.

One run at a time (:func:`lock`): ``lazydrift run`` and ``lazydrift merge`` hold ``OUT/.lock``
exclusively; a shard holds it shared (shards of one sweep may share a folder) and holds each of
its cells' lock files ``OUT/cells/.<cell>.lock`` exclusively.  The locks are ``flock(2)`` locks,
so the kernel releases them when the process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .checkpoint import check_file
from .errors import UserError
from .export import write_json
from .recipes import (CELL_KEYS, Cell, Recipe, RecipeError, fingerprint_differences, fingerprint_digest,
                      stored_recipe_from_dict)

RECIPE_FILE = "recipe.json"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
CELLS = "cells"
CELL_FILE = "cell.json"
CHECKPOINT_FILE = "checkpoint.pt"
PROBES = "probes.csv"
# Every top-level file that a run, merge or plot writes besides the records above: the cells
# combined (lazydrift.report, scaling, analogy), lazydrift plot's figures and protocols.md.
# --overwrite and a rerun delete these names and nothing else: a user's own notes.md or
# extra.csv in the folder stay (tests/test_reliability.py checks a full run writes no other name).
COMBINED = frozenset({
    "drift.csv", "summary.csv", "neurons.csv", "losses.csv", "gram.csv", "init_theory.csv",
    "noise_floor.csv", "ntk.csv", "gram_pairs.csv", "gram_summary.csv", "init_theory_summary.csv",
    "fingerprints.csv", "table1.md", "scaling.csv", "scaling.md", "scaling.png", "scaling_slopes.png",
    "analogy.csv", "analogy.md", "drift.png", "gram.png", "neurons.png", "kernel.png", "protocols.md"})


class RunDirError(UserError):
    """The output folder cannot take this run; the message says why and what to do."""


class BusyError(RunDirError):
    """Another live process holds the folder's (or a cell's) lock."""


class DamagedFileError(RunDirError):
    """A record lazydrift writes (recipe.json, run.json, cell.json) no longer reads as one."""


def read_json(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """The JSON object lazydrift wrote at ``path`` (with ``keys``), or a one-line DamagedFileError.

    Every record is written atomically, so one that does not parse was changed afterwards (an
    editor, a copy cut short, a full disk)."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, not UTF-8
        problem = e.strerror if isinstance(e, OSError) else f"not JSON: {e}"
    else:
        missing = [k for k in keys if k not in content] if isinstance(content, dict) else None
        if missing == []:
            return content
        if missing and "protocol" in missing and "parameterization" in content:
            raise DamagedFileError(f"{path} was written by an older lazydrift, before cells were keyed by their "
                                   "training protocol; rerun with --overwrite to start afresh (its CSVs stay readable)")
        problem = f"no {', '.join(missing)}" if missing else f"a JSON {type(content).__name__}, not an object"
    raise DamagedFileError(f"{path} cannot be read ({problem}); it was changed after lazydrift wrote it: "
                           "delete it (a cell without cell.json runs again with --resume) or rerun with --overwrite")


# -- the lock ------------------------------------------------------------------------------------
def holder_line() -> str:
    """Who this process is, for the lock file: one JSON line."""
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "command": " ".join(["lazydrift", *sys.argv[1:]])[:300]}) + "\n"


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine (shared filesystem): the lock itself says it is held
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def describe_holders(path: Path) -> str:
    """The live processes named in a lock file, most recent first."""
    holders = []
    with contextlib.suppress(OSError):
        for line in reversed(path.read_text().splitlines()):
            with contextlib.suppress(ValueError):
                h = json.loads(line)
                if isinstance(h, dict) and _alive(h):
                    holders.append(f"process {h.get('pid')} on {h.get('host')} (`{h.get('command')}`, "
                                   f"since {h.get('since')})")
    return "; ".join(holders) or "another process"


@contextlib.contextmanager
def hold(path: Path, shared: bool, what: str) -> Iterator[None]:
    """Hold an flock on ``path`` (created if needed) or raise :class:`BusyError` at once.

    An exclusive holder replaces the file's content with its own line; a shared holder appends
    its line (appends of one short line are atomic), so a refusal can name the live holders.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as e:
        raise RunDirError(f"{what}: cannot create the lock file {path} ({e.strerror}); choose another --out") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{what} is in use by {describe_holders(path)}: one run at a time per folder; "
                            "wait for it to finish or choose another --out") from None
        except OSError as e:  # e.g. a filesystem without locks
            raise RunDirError(f"{what}: cannot lock {path} ({e.strerror}); choose another --out") from None
        if not shared:
            os.ftruncate(fd, 0)
        os.write(fd, holder_line().encode())
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def lock(out: Path, cells: list[Cell] | None = None) -> Iterator[None]:
    """One run at a time: ``cells=None`` locks ``out`` exclusively (a whole run, a merge); a shard
    passes its cells and shares the folder with other shards, locking only its own cells."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if cells is not None:
            (out / CELLS).mkdir(exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--out {out}: cannot create it ({e.strerror}); choose another --out") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(hold(out / LOCK_FILE, shared=cells is not None, what=str(out)))
        if cells is not None:
            for cell in cells:
                stack.enter_context(hold(out / CELLS / f".{cell.name}.lock", shared=False,
                                         what=f"{out / CELLS / cell.name}"))
        yield


# -- whose folder is it ---------------------------------------------------------------------------
def has_results(out: Path) -> bool:
    """Whether ``out`` holds anything but lock files (and the cells folder that holds shards' locks)."""
    if not out.is_dir():
        return False
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    return (any(p.name != CELLS for p in visible)
            or any(not p.name.startswith(".") for p in (out / CELLS).glob("*")))


def is_lazydrift_folder(out: Path) -> bool:
    return any((out / name).exists() for name in (RECIPE_FILE, RUN_FILE, CELLS)) or any(out.glob("shard-*-of-*.json"))


def stored_recipe(out: Path) -> tuple[dict, str] | None:
    """(fingerprint, digest) of the recipe that owns ``out``, or None when it records none."""
    path = out / RECIPE_FILE
    if not path.is_file():
        return None
    stored = read_json(path, ("recipe",))
    try:
        if not isinstance(stored["recipe"], dict):
            raise TypeError(f"its recipe is a JSON {type(stored['recipe']).__name__}, not an object")
        recipe = stored_recipe_from_dict(stored["recipe"], path)
    except (ValueError, KeyError, TypeError, RecipeError) as e:
        raise RunDirError(f"{path} cannot be read ({e}); rerun with --overwrite to start afresh "
                          "or choose another --out") from None
    return recipe.fingerprint(), stored.get("fingerprint")


def _refuse_other_recipe(out: Path, theirs: dict, ours: dict, fix: str) -> None:
    diff = "; ".join(fingerprint_differences(theirs, ours))
    raise RunDirError(f"{out} holds results of another recipe ({diff}); {fix}")


def cell_state(out: Path, cell: Cell) -> dict | None:
    """The cell's cell.json content if it finished (completed or diverged), else None."""
    path = out / CELLS / cell.name / CELL_FILE
    return read_json(path, (*CELL_KEYS, "status")) if path.is_file() else None


def claim(out: Path, recipe: Recipe, cells: list[Cell], *, resume: bool, overwrite: bool, whole: bool) -> None:
    """Make ``out`` this recipe's folder or refuse (see the module doc); call it under :func:`lock`.

    ``whole`` is an unsharded run: a fresh start then also removes the top-level outputs and shard
    records; a shard only ever touches its own cells.
    """
    ours, digest = recipe.fingerprint(), fingerprint_digest(recipe.fingerprint())
    if overwrite:
        if not whole:
            raise RunDirError("--overwrite cannot be combined with a shard: shards share the folder; "
                              f"delete {out} or choose another --out")
        clear(out, cells=True)
        write_recipe(out, recipe)
        return
    stored = stored_recipe(out)
    if stored is None and has_results(out):
        raise RunDirError(f"{out} holds results without a {RECIPE_FILE} (written by an older lazydrift); "
                          "rerun with --overwrite to start afresh or choose another --out")
    if stored is not None and stored[0] != ours:
        _refuse_other_recipe(out, stored[0], ours, "rerun with --overwrite to replace them or choose another --out")
    if resume:
        for cell in cells:
            info = cell_state(out, cell)
            if info is not None and info.get("fingerprint") != digest:
                raise RunDirError(f"{out / CELLS / cell.name / CELL_FILE} was written for another recipe; "
                                  "rerun with --overwrite to start afresh or choose another --out")
            ckpt = out / CELLS / cell.name / CHECKPOINT_FILE
            if info is None and ckpt.is_file():
                check_file(ckpt, recipe, cell)
    else:
        unfinished = [c.name for c in cells if (out / CELLS / c.name / CHECKPOINT_FILE).is_file()]
        if unfinished:
            raise RunDirError(f"{out} holds unfinished cells of this recipe ({', '.join(unfinished)}): rerun with "
                              "--resume to continue them or --overwrite to start afresh")
        if whole:
            clear(out, cells=True)
        else:
            for cell in cells:
                shutil.rmtree(out / CELLS / cell.name, ignore_errors=True)
    write_recipe(out, recipe)


def write_recipe(out: Path, recipe: Recipe) -> None:
    """Record the owner of ``out``; shards starting together may race here, so create it once and
    then compare (``os.link`` fails if the file exists)."""
    path = out / RECIPE_FILE
    tmp = out / f".{RECIPE_FILE}.{os.getpid()}.tmp"
    write_json({"recipe": recipe.to_dict(), "fingerprint": fingerprint_digest(recipe.fingerprint())}, tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        stored = stored_recipe(out)
        if stored is not None and stored[0] != recipe.fingerprint():
            _refuse_other_recipe(out, stored[0], recipe.fingerprint(), "choose another --out")
    finally:
        tmp.unlink(missing_ok=True)


def clear(out: Path, cells: bool) -> None:
    """Remove the combined files earlier runs wrote and, with ``cells``, everything else a run writes:
    the cell folders, probes.csv, run.json, shard records and recipe.json (lock files stay).

    Every folder it would delete from is checked first: a folder that cannot be changed (a
    read-only ``cells/``) stops it with one line before anything is removed, so a refusal never
    leaves a half-deleted run."""
    files = [out / name for name in COMBINED]
    folders = []
    if cells:
        files += [out / RECIPE_FILE, out / RUN_FILE, out / PROBES, *out.glob("shard-*-of-*.json")]
        folders = [path for path in (out / CELLS).glob("*") if path.is_dir()]
    parents = {out} | ({out / CELLS} if folders else set())
    parents |= {Path(root) for folder in folders for root, _, _ in os.walk(folder)}
    locked = sorted(p for p in parents if not os.access(p, os.W_OK | os.X_OK))
    if locked:
        raise RunDirError(f"cannot remove the old results in {locked[0]} (not writable); "
                          "make it writable, or choose another --out")
    try:
        for path in files:
            path.unlink(missing_ok=True)
        for path in folders:
            shutil.rmtree(path)
    except OSError as e:
        raise RunDirError(f"cannot remove the old results in {out}: {e.strerror or e} ({e.filename}); "
                          "choose another --out") from None


# -- reading a folder ----------------------------------------------------------------------------
def read_cells(*dirs: Path) -> list[tuple[dict, Path]]:
    """(cell.json content, folder) for every cell under ``dir/cells/``, in a stable order."""
    found = []
    for d in dirs:
        for info_path in sorted(Path(d).glob(f"{CELLS}/*/{CELL_FILE}")):
            found.append((read_json(info_path, (*CELL_KEYS, "status")), info_path.parent))
    found.sort(key=lambda item: tuple(item[0][k] for k in CELL_KEYS))
    return found


def layer_order(infos: list[dict], present=()) -> list[str]:
    """The recorded layers in the order the cells stored (forward order); all cells must agree.

    Results written before cells stored it fall back to the NTKMLP forward order of the names
    ``present`` in the files (:func:`forward_order`).
    """
    orders = {tuple(i["layers"]) for i in infos if i.get("layers")}
    if len(orders) > 1:
        raise UserError(f"the cells record different layers ({' vs '.join(map(str, orders))}); combine only cells "
                        "of one recipe")
    return list(orders.pop()) if orders else forward_order(present)


def stored_layers(out: Path, present=()) -> list[str]:
    """The layer order of a results folder: run.json's ``layers``, else its cells', else :func:`forward_order`."""
    run = Path(out) / RUN_FILE
    layers = read_json(run).get("layers") if run.is_file() else None
    return list(layers) if layers else layer_order([i for i, _ in read_cells(Path(out))], present)


def forward_order(names) -> list[str]:
    """NTKMLP's forward order of module names (``hidden.k`` by k as a number, then ``readout``), other
    names after them in the order given; only for results that do not store their order."""
    def key(name: str):
        parts = name.split(".")
        if parts[0] == "hidden" and all(p.isdigit() for p in parts[1:]) and len(parts) > 1:
            return (0, *map(int, parts[1:]))
        return (1,) if name == "readout" else (2,)  # sorted() is stable: the given order is kept
    return sorted(dict.fromkeys(names), key=key)


# -- the run record -------------------------------------------------------------------------------
class RunRecord:
    """run.json (or a shard's shard-i-of-N.json): written when the run starts and at every exit."""

    def __init__(self, path: Path, content: dict):
        self.path, self.content = path, {**content, "status": "running"}
        write_json(self.content, path)

    def update(self, **fields) -> None:
        self.content.update(fields)
        write_json(self.content, self.path)
