"""Writing results: every file lands whole or not at all.

Each writer writes to a temporary file in the destination folder and renames it over the
target (``os.replace`` is atomic on POSIX), so a run killed mid-write leaves the previous
complete file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import pandas as pd


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_write(path, newline="") as f:
        frame.to_csv(f, index=False)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(obj, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", path)


def write_figure(fig, path: str | os.PathLike, tight: bool = True, **savefig_kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically and close it.

    ``tight=False`` keeps a layout set by hand (``tight_layout`` is slow on large grids).
    """
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", **savefig_kwargs)
    plt.close(fig)
    return Path(path)
