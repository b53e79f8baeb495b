"""Shared fixtures: tiny recipes that run in seconds on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
