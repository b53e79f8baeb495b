"""MNIST loader on the IDX files shipped beside the checkout (../shared/data/MNIST/raw/*.gz)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lazydrift import mnist
from lazydrift.mnist import CorruptDataError, DataNotFoundError

SHARED = Path(os.environ["LAZYDRIFT_MNIST_ROOT"]) if os.environ.get("LAZYDRIFT_MNIST_ROOT") else \
    Path(__file__).resolve().parents[1].parent / "shared" / "data"
GZ_DIR = SHARED / "MNIST" / "raw"
needs_data = pytest.mark.skipif(not (GZ_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                                reason=f"MNIST IDX files not found in {GZ_DIR} (set LAZYDRIFT_MNIST_ROOT)")
# Test-set digit counts 0..9 of the canonical release (LeCun, Cortes and Burges).
CANONICAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A data_dir into which the shipped .gz files are decompressed once for this module."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)


@needs_data
def test_decompresses_verifies_and_loads(cache):
    images, labels = mnist.load_mnist(train=False, root=SHARED, data_dir=cache)
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert sorted(p.name for p in (cache / "MNIST" / "raw").iterdir()) == sorted(mnist.FILES)
    # label counts: the canonical release, and an independent count straight from the IDX bytes
    with gzip.open(GZ_DIR / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    counts = np.bincount(labels.numpy(), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(raw, minlength=10))
    np.testing.assert_array_equal(counts, CANONICAL_TEST_COUNTS)
    # pixels: the first test image straight from the IDX bytes
    with gzip.open(GZ_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        first = np.frombuffer(f.read(16 + 784), dtype=np.uint8, offset=16).reshape(28, 28)
    np.testing.assert_array_equal(images[0].numpy(), first)


@needs_data
def test_sphere_and_subsets(cache):
    x, labels = mnist.load_mnist_sphere(train=True, root=SHARED, data_dir=cache, dtype=torch.float64)
    assert x.shape == (60000, 784)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(60000, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (x >= 0).all()
    a, la = mnist.load_mnist_subset(500, seed=3, root=SHARED, data_dir=cache)
    b, lb = mnist.load_mnist_subset(500, seed=3, root=SHARED, data_dir=cache)
    c, _ = mnist.load_mnist_subset(500, seed=4, root=SHARED, data_dir=cache)
    assert a.shape == (500, 784) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    idx = mnist.sample_indices(60000, 500, 3)
    torch.testing.assert_close(a.double(), x[idx], rtol=0, atol=1e-7)
    assert torch.equal(la, labels[idx])


@needs_data
def test_environment_variable_and_cached_reuse(cache, monkeypatch):
    mnist.load_mnist(train=False, root=SHARED, data_dir=cache)  # cache present
    monkeypatch.setenv(mnist.ENV_VAR, str(SHARED))
    assert mnist.find_mnist_root(data_dir=cache / "elsewhere") == cache / "elsewhere"
    monkeypatch.delenv(mnist.ENV_VAR)
    assert mnist.find_mnist_root(root=cache, data_dir=cache / "unused") == cache  # torchvision layout


def test_sample_indices_and_one_hot():
    idx = mnist.sample_indices(100, 30, seed=0)
    assert len(np.unique(idx)) == 30 and idx.min() >= 0 and idx.max() < 100
    np.testing.assert_array_equal(idx, mnist.sample_indices(100, 30, seed=0))
    assert len(mnist.sample_indices(100, 100, seed=1)) == 100
    with pytest.raises(ValueError):
        mnist.sample_indices(10, 11, seed=0)
    y = mnist.one_hot(torch.tensor([3, 0, 9]))
    assert y.shape == (3, 10) and y.dtype == torch.float64
    np.testing.assert_array_equal(y.argmax(1).numpy(), [3, 0, 9])
    assert (y.sum(1) == 1).all()


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="download=True"):
        mnist.load_mnist(root=tmp_path / "nothing", data_dir=tmp_path / "data")


@needs_data
def test_corrupt_gz_is_named_and_not_used(tmp_path):
    src = tmp_path / "src" / "MNIST" / "raw"
    src.mkdir(parents=True)
    for p in GZ_DIR.glob("*.gz"):
        shutil.copy(p, src / p.name)
    shutil.copy(SHARED / "MNIST" / "SHA256SUMS", src.parent / "SHA256SUMS")
    bad = src / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a partial download
    data = tmp_path / "data"
    with pytest.raises(CorruptDataError, match="t10k-labels-idx1-ubyte.gz"):
        mnist.load_mnist(train=False, root=tmp_path / "src", data_dir=data)
    assert not (data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()
    assert not list((data / "MNIST" / "raw").glob(".*tmp"))  # no temporary left behind
    # a complete gzip whose content differs from SHA256SUMS is rejected too
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00" * 10008)
    with pytest.raises(CorruptDataError, match="SHA256SUMS"):
        mnist.load_mnist(train=False, root=tmp_path / "src", data_dir=data)
    assert not (data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


@needs_data
def test_run_table2_small(cache, tmp_path):
    """A small Table 2 run: the files, their columns, and a sane accuracy."""
    import pandas as pd

    from lazydrift.table2 import run_table2
    out = tmp_path / "t2"
    summary = run_table2(out, seeds=[0, 1], n_train=60, depth=5, n_test=400, root=SHARED, data_dir=cache)
    table = pd.read_csv(out / "table2.csv")
    assert list(table.columns) == ["metric", "mean", "std", "n_seeds", "paper"]
    assert {"accuracy", "f1_macro", "error", "error_l2_batch_sum"} <= set(table.metric)
    seeds = pd.read_csv(out / "seeds.csv")
    assert list(seeds.seed) == [0, 1] and (seeds.n_test == 400).all()
    assert (out / "table2.md").read_text().startswith("# Table 2")
    # the summary is the seeds' mean and sample s.d.
    by_metric = table.set_index("metric")
    for metric in ("accuracy", "f1_macro", "error", "error_l2"):
        assert by_metric.loc[metric, "mean"] == pytest.approx(seeds[metric].mean(), rel=1e-12)
        assert by_metric.loc[metric, "std"] == pytest.approx(seeds[metric].std(ddof=1), rel=1e-12)
    # ten equal batches of 40: the sum of batch means is ten times the mean (to rounding)
    np.testing.assert_allclose(seeds.error_l2_batch_sum, 10 * seeds.error_l2, rtol=1e-13)
    acc = summary.set_index("metric").loc["accuracy", "mean"]
    assert 0.6 < acc < 1.0  # 60 images already classify most digits
    assert (seeds.theta_vs_theta_bar < 1e-10).all()


PAPER_TEXT = SHARED.parent / "paper" / "revisiting-ntk-width-depth.txt"


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason=f"the paper's text is not at {PAPER_TEXT}")
def test_table2_paper_numbers_are_the_papers():
    """table2.PAPER against Table 2 as printed in the paper's text (Appendix D)."""
    import re

    from lazydrift.table2 import PAPER
    text = PAPER_TEXT.read_text()
    error = re.search(r"Average error \(stdev\) ([0-9.]+)\(([0-9.]+)\)", text)
    assert (float(error.group(1)), float(error.group(2))) == (PAPER["error"], PAPER["error_std"])
    assert float(re.search(r"\nAccuracy (\d\.\d{3})", text).group(1)) == PAPER["accuracy"]
    assert float(re.search(r"\nF1 score (\d\.\d{3})", text).group(1)) == PAPER["f1_macro"]
