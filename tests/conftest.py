"""Shared fixtures: tiny recipes that run in seconds on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"  # text8-mini is built here once and reused


def shared_mnist_root() -> Path | None:
    """The MNIST IDX files shipped beside the checkout (../shared/data), or $LAZYDRIFT_MNIST_ROOT."""
    env = os.environ.get("LAZYDRIFT_MNIST_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "MNIST" / "raw").is_dir():
            return c
    return None


TINY_TEXT8 = """\
name = "tiny"
seed = 0
device = "cpu"

[data]
dataset = "text8-mini"
data_dir = "{data_dir}"
vocab_size = 300
n_probes = 24

[model]
widths = [32, 64]

[train]
lr = 0.5
steps = {steps}
batch_size = 32

[record]
points = 6
gram_probes = 8

[checkpoint]
every_steps = {every}
every_minutes = 0
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    def make(steps: int = 12, every: int = 0, extra: str = "") -> Path:
        path = tmp_path / "tiny.toml"
        path.write_text(TINY_TEXT8.format(data_dir=DATA_DIR, steps=steps, every=every) + extra)
        return path
    return make


# The issue-12 size: widths [32, 64], 20 steps, V = 50 (all 50 words are probes), the first 20000
# tokens of text8-mini.  An in-process run takes well under a second on one thread.
TINY = """\
name = "tiny"
seed = 0
device = "cpu"

[data]
dataset = "text8-mini"
data_dir = "{data_dir}"
max_tokens = 20000
vocab_size = 50
n_probes = 0

[model]
widths = [32, 64]

[train]
lr = 0.5
steps = 20
batch_size = 32

[record]
points = 5
gram_probes = 8

[checkpoint]
every_minutes = 0
"""


def write_tiny(path: Path, **replace: str) -> Path:
    """TINY with lines replaced, e.g. ``write_tiny(p, **{"lr = 0.5": "lr = 0.1"})``."""
    text = TINY.format(data_dir=DATA_DIR)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture
def one_thread():
    """Tiny widths gain nothing from threads and lose much when the cores are shared; results
    compared within a test are then computed with the same thread count by construction."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every result file under ``folder`` (lock files aside): relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


# table1.md shows 4 decimals (half a unit: 5e-5); drift.csv holds float32 as text, whose round trip
# moves a value by at most a float32 half-ulp (6e-8 relative), far below that.
TABLE_ROUNDING = 5e-5 + 1e-6
TABLE_ROWS = {"l2": "| ‖h_t − h_0‖₂ | ", "linf": r"| max_i \|h_t,i − h_0,i\| | ", "ratio": "| ‖h_t − h_0‖₂ / max_i"}


def table_cell(table: str, measure: str, column: str) -> tuple[float, float]:
    """(mean, s.d.) that table1.md shows for ``measure`` (l2, linf, ratio) in ``column``."""
    lines = table.splitlines()
    head = [c.strip() for c in next(line for line in lines if line.startswith("| Measure")).strip("| ").split(" | ")]
    row = next(line for line in lines if line.startswith(TABLE_ROWS[measure]))
    values = row.rstrip(" |").split(" | ")  # the labels hold "\\|" (escaped for markdown), never " | "
    mean, sd = values[head.index(column)].split(" (")
    return float(mean), float(sd.rstrip(")"))
