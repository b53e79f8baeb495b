"""MNIST through torchvision, offline first: images on the unit sphere, seeded subsets.

Where the files are looked for, in order:

1. ``root`` (an argument), then ``$LAZYDRIFT_MNIST_ROOT``, then ``data_dir`` (``data/``);
2. in each, torchvision's layout ``<dir>/MNIST/raw/<name>`` (uncompressed IDX files), or the four
   ``.gz`` files in ``<dir>/MNIST/raw``, ``<dir>/raw`` or ``<dir>`` itself.  Gzipped files are
   decompressed into ``<data_dir>/MNIST/raw`` (each file written atomically) and checked against
   a ``SHA256SUMS`` found beside them (or one or two folders up), or, without one, against the
   IDX header and size.  A corrupt or truncated file is reported by name and never used.

With ``download=True`` and nothing found, torchvision downloads into ``data_dir``.  Otherwise a
:class:`DataNotFoundError` says how to get the data.

Images are flattened to 784 values and divided by their Euclidean norm (section 4: inputs on
the sphere S^{n0-1}); labels are int64.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from lazydrift.export import atomic_write
from lazydrift.text8 import CorruptDataError, DataNotFoundError, sha256_file

__all__ = ["DataNotFoundError", "CorruptDataError", "FILES", "find_mnist_root", "load_mnist", "to_sphere",
           "load_mnist_sphere", "load_mnist_subset", "sample_indices", "one_hot"]

ENV_VAR = "LAZYDRIFT_MNIST_ROOT"
# name -> (IDX magic number, item shape, number of items)
FILES = {
    "train-images-idx3-ubyte": (2051, (28, 28), 60000),
    "train-labels-idx1-ubyte": (2049, (), 60000),
    "t10k-images-idx3-ubyte": (2051, (28, 28), 10000),
    "t10k-labels-idx1-ubyte": (2049, (), 10000),
}
_CHUNK = 1 << 20


def find_mnist_root(root: str | os.PathLike | None = None, data_dir: str | os.PathLike = "data") -> Path:
    """A folder ``R`` with ``R/MNIST/raw/<uncompressed IDX files>`` (torchvision's ``root``).

    Raises DataNotFoundError (or its subclass CorruptDataError) with instructions.
    """
    data_dir = Path(data_dir)
    candidates = [Path(p) for p in (root, os.environ.get(ENV_VAR) or None, data_dir) if p]
    for c in candidates:
        if _has_raw(c / "MNIST" / "raw"):
            _check_folder(c / "MNIST" / "raw", compressed=False)
            return c
        for folder in (c / "MNIST" / "raw", c / "raw", c):
            if all((folder / f"{name}.gz").is_file() for name in FILES):
                _decompress_all(folder, data_dir / "MNIST" / "raw")
                return data_dir
    looked = ", ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"MNIST not found (looked in: {looked}; each as <dir>/MNIST/raw/*-ubyte[.gz], <dir>/raw/*.gz or "
        f"<dir>/*.gz). Pass download=True (or `--download`) to fetch it with torchvision into {data_dir}/, "
        f"or point root=... / ${ENV_VAR} at a folder holding the four IDX files (see data/README.md).")


def load_mnist(train: bool = True, root=None, data_dir: str | os.PathLike = "data",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the training (60000) or test (10000) set."""
    from torchvision.datasets import MNIST

    try:
        found = find_mnist_root(root, data_dir)
    except CorruptDataError:
        raise
    except DataNotFoundError:
        if not download:
            raise
        found = Path(data_dir)
        found.mkdir(parents=True, exist_ok=True)
    ds = MNIST(str(found), train=train, download=download)
    return ds.data, ds.targets.long()


def to_sphere(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flatten each image to a vector and divide it by its Euclidean norm (section 4)."""
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    norms = x.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("an all-zero image cannot be projected onto the sphere")
    return (x / norms).to(dtype)


def sample_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices in [0, n_total), drawn without replacement with ``seed`` (sorted)."""
    if not 0 <= n <= n_total:
        raise ValueError(f"cannot sample {n} distinct items out of {n_total}")
    g = torch.Generator().manual_seed(int(seed))
    return np.sort(torch.randperm(n_total, generator=g)[:n].numpy())


def one_hot(labels, num_classes: int = 10, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One-hot targets (N, num_classes) for integer labels."""
    return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), num_classes).to(dtype)


def load_mnist_sphere(train: bool = True, root=None, data_dir="data", download: bool = False,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split on the unit sphere (N, 784) and their labels."""
    images, labels = load_mnist(train, root, data_dir, download)
    return to_sphere(images, dtype), labels


def load_mnist_subset(n: int, seed: int = 0, train: bool = True, root=None, data_dir="data",
                      download: bool = False, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images sampled without replacement with ``seed`` (section 6.4), on the sphere."""
    images, labels = load_mnist(train, root, data_dir, download)
    idx = torch.as_tensor(sample_indices(len(images), n, seed))
    return to_sphere(images[idx], dtype), labels[idx]


# -- files --------------------------------------------------------------------------------------
def _has_raw(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _find_sums(folder: Path) -> dict[str, str]:
    """name -> sha256 from the nearest SHA256SUMS (the folder, its parent or grandparent)."""
    for d in (folder, folder.parent, folder.parent.parent):
        f = d / "SHA256SUMS"
        if f.is_file():
            sums = {}
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and not line.startswith("#"):
                    sums[parts[1].lstrip("*")] = parts[0].lower()
            return sums
    return {}


def _check_idx(name: str, header: bytes, size: int, where: Path) -> None:
    magic, shape, count = FILES[name]
    ndim = 1 + len(shape)
    expected = 4 + 4 * ndim + count * int(np.prod(shape, dtype=np.int64))
    got = [int.from_bytes(header[i:i + 4], "big") for i in range(0, 4 + 4 * ndim, 4)]
    if got[:2] != [magic, count] or tuple(got[2:]) != shape or size != expected:
        raise CorruptDataError(f"{where}: not a complete MNIST IDX file (header {got}, {size} bytes; "
                               f"expected magic {magic}, {count} items of {shape}, {expected} bytes). "
                               "Delete it and fetch MNIST again (see data/README.md).")


def _check_folder(folder: Path, compressed: bool) -> None:
    """IDX header and size of uncompressed files (cheap); SHA-256 when a SHA256SUMS is present."""
    sums = _find_sums(folder)
    for name in FILES:
        path = folder / name
        with open(path, "rb") as f:
            header = f.read(16)
        _check_idx(name, header, path.stat().st_size, path)
        if name in sums and (digest := sha256_file(path)) != sums[name]:
            raise CorruptDataError(f"{path}: SHA-256 {digest} does not match SHA256SUMS "
                                   f"({sums[name]}); delete it and fetch MNIST again.")


def _decompress_all(src: Path, dst: Path) -> None:
    """Decompress the four .gz files of ``src`` into ``dst`` unless already there and intact."""
    sums = _find_sums(src)
    for name in FILES:
        target = dst / name
        if target.is_file() and _intact(target, name, sums.get(name)):
            continue
        gz = src / f"{name}.gz"
        digest = hashlib.sha256()
        size = 0
        try:
            with gzip.open(gz, "rb") as fin, atomic_write(target, "wb") as fout:
                header = b""
                for chunk in iter(lambda: fin.read(_CHUNK), b""):
                    if len(header) < 16:
                        header += chunk[:16 - len(header)]
                    digest.update(chunk)
                    size += len(chunk)
                    fout.write(chunk)
                # raising here leaves no file behind (atomic_write removes the temporary)
                if name in sums and digest.hexdigest() != sums[name]:
                    raise CorruptDataError(f"{gz}: decompresses to SHA-256 {digest.hexdigest()}, but SHA256SUMS "
                                           f"says {sums[name]}; the file is corrupt, so it was not used.")
                _check_idx(name, header, size, gz)
        except (OSError, EOFError, gzip.BadGzipFile) as e:  # truncated or not gzip
            raise CorruptDataError(f"{gz}: cannot be decompressed ({type(e).__name__}: {e}); the file is "
                                   "corrupt or partial, so it was not used. Replace it or download MNIST again.") from e


def _intact(path: Path, name: str, sha: str | None) -> bool:
    try:
        with open(path, "rb") as f:
            header = f.read(16)
        _check_idx(name, header, path.stat().st_size, path)
    except CorruptDataError:
        return False
    return sha is None or sha256_file(path) == sha
