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

import time
from pathlib import Path

import torch

from .errors import UserError
from .export import atomic_write
from .recipes import Cell, RecipeError, fingerprint_differences, recipe_from_dict

FILENAME = "checkpoint.pt"


class ForeignCheckpointError(UserError):
    """A checkpoint was written for another recipe or cell."""


class Checkpointer:
    """Saves a cell's state every ``every_steps`` steps or ``every_minutes`` minutes, atomically."""

    def __init__(self, cell_dir: Path, every_steps: int, every_minutes: float):
        self.path = Path(cell_dir) / FILENAME
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self.last >= self.every_seconds

    def save(self, payload: dict, recipe: dict, digest: str, cell: Cell) -> None:
        with atomic_write(self.path, "wb") as f:
            torch.save({**payload, "recipe": recipe, "fingerprint": digest, "cell": cell.name}, f)
        self.last = time.monotonic()

    def load(self, fingerprint: dict, digest: str, cell: Cell) -> dict | None:
        """The saved state, or None without a checkpoint; raises if it belongs elsewhere."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        check(state, self.path, fingerprint, digest, cell)
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def check_file(path: Path, fingerprint: dict, digest: str, cell: Cell) -> None:
    """Check the checkpoint at ``path`` against a recipe and cell without reading its tensors."""
    check(torch.load(path, map_location="cpu", weights_only=True, mmap=True), path, fingerprint, digest, cell)


def check(state: dict, path: Path, fingerprint: dict, digest: str, cell: Cell) -> None:
    if state.get("cell") != cell.name or state.get("fingerprint") != digest:
        theirs = state.get("recipe")
        what = (", ".join(fingerprint_differences(_fingerprint_of(theirs), fingerprint)) if isinstance(theirs, dict)
                else "it carries no recipe")
        raise ForeignCheckpointError(f"{path} was written for another recipe or cell ({what or state.get('cell')}); "
                                     "rerun with --overwrite to start afresh or choose another --out")


def _fingerprint_of(recipe: dict) -> dict:
    try:
        return recipe_from_dict(recipe).fingerprint()
    except RecipeError:
        return recipe
