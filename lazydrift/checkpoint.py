"""A cell's checkpoint: everything its training loop needs to continue, and the recipe it belongs to.

``OUT/cells/<cell>/checkpoint.pt`` holds the step, the losses so far, the model's weights, the
sampler's and torch's RNG states, the recorder (h_0 and every row so far), the seconds spent,
the cell and the recipe it was written for (its full dict and fingerprint digest).  It is
written atomically every ``[checkpoint] every_steps`` steps or ``every_minutes`` minutes and
removed once the cell has written its results; ``--resume`` continues from it and refuses one
written for another recipe.  Optimizer state joins the payload when an optimizer has any
(plain SGD has none).
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import torch

from .errors import UserError
from .export import atomic_write
from .recipes import (Cell, Recipe, RecipeError, fingerprint_differences, fingerprint_digest,
                      stored_recipe_from_dict)

FILENAME = "checkpoint.pt"


class ForeignCheckpointError(UserError):
    """A checkpoint was written for another recipe or cell."""


class DamagedCheckpointError(UserError):
    """A checkpoint file does not read as one (cut short, emptied, overwritten)."""


def _load(path: Path, mmap: bool = False) -> dict:
    """``torch.load`` of a checkpoint, or a one-line DamagedCheckpointError naming it and the fix."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        problem = "an empty file" if path.stat().st_size == 0 else str(e).split(". ")[0]  # torch's run on
    else:
        if isinstance(state, dict):
            return state
        problem = f"it holds a {type(state).__name__}, not a checkpoint"
    raise DamagedCheckpointError(f"{path} cannot be read ({problem}); delete it to run that cell again from step 0 "
                                 "with --resume, or rerun with --overwrite")


class Checkpointer:
    """Saves a cell's state every ``[checkpoint] every_steps`` steps or ``every_minutes`` minutes, atomically."""

    def __init__(self, cell_dir: Path, recipe: Recipe, cell: Cell):
        self.path, self.recipe, self.cell = Path(cell_dir) / FILENAME, recipe, cell
        self.every_steps, self.every_seconds = recipe.checkpoint.every_steps, recipe.checkpoint.every_minutes * 60
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self.last >= self.every_seconds

    def save(self, state: dict) -> None:
        with atomic_write(self.path, "wb") as f:
            torch.save({**state, "recipe": self.recipe.to_dict(),
                        "fingerprint": fingerprint_digest(self.recipe.fingerprint()), "cell": self.cell.name}, f)
        self.last = time.monotonic()

    def load(self) -> dict | None:
        """The saved state, or None without a checkpoint; raises if it belongs to another recipe or cell."""
        if not self.path.is_file():
            return None
        state = _load(self.path)
        check(state, self.path, self.recipe, self.cell)
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def check_file(path: Path, recipe: Recipe, cell: Cell) -> None:
    """Check the checkpoint at ``path`` against a recipe and cell without reading its tensors."""
    check(_load(path, mmap=True), path, recipe, cell)


def check(state: dict, path: Path, recipe: Recipe, cell: Cell) -> None:
    if state.get("cell") == cell.name and state.get("fingerprint") == fingerprint_digest(recipe.fingerprint()):
        return
    theirs = state.get("recipe")
    what = (", ".join(fingerprint_differences(_fingerprint_of(theirs), recipe.fingerprint()))
            if isinstance(theirs, dict) else "it names no recipe")
    raise ForeignCheckpointError(f"{path} was written for another recipe or cell ({what or state.get('cell')}); "
                                 "rerun with --overwrite to start afresh or choose another --out")


def _fingerprint_of(recipe: dict) -> dict:
    try:
        return stored_recipe_from_dict(recipe).fingerprint()
    except RecipeError:
        return recipe
