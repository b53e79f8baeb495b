"""Training tasks: the data of a recipe as inputs, targets, a batch sampler and a probe set.

* text8 (``text8-mini``, ``text8``): skip-gram on one-hot tokens, centre word in, one word of its
  window out (the paper's Table 1 setting; README "Table 1: our choices");
* MNIST: images on the unit sphere, one-hot (10-dimensional) targets.

Every random choice derives from the recipe's seed: the probes from ``probe_seed(seed)``, a
cell's batch order from ``sampler_seed(cell seed)``; the model's weights from the cell's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .recipes import Recipe


@dataclass
class Task:
    """A training task: inputs, targets, a batch sampler and the probe set."""

    name: str
    in_features: int
    out_features: int
    make_sampler: Callable[[int], object]  # seed -> object with next_batch(), state_dict(), load_state_dict()
    probes: torch.Tensor                   # inputs (token ids or float rows)
    probe_table: pd.DataFrame              # probe -> what it is (word, image row, label)
    info: dict
    vocab: object = None                   # text8 tasks: the Vocabulary


def probe_seed(seed: int) -> int:
    return seed + 2


def sampler_seed(seed: int) -> int:
    return seed + 1


def text8_task(recipe: Recipe) -> Task:
    """Skip-gram on text8 one-hot tokens: centre word in, one context word out (one-hot target)."""
    from . import text8

    d = recipe.data
    tokens = text8.load_tokens(d.dataset, d.data_dir, max_tokens=d.max_tokens or None, download=d.download)
    vocab = text8.build_vocab(tokens, d.vocab_size)
    ids = text8.encode(tokens, vocab)
    V = len(vocab.words)
    n_probes = d.n_probes or V
    g = torch.Generator().manual_seed(probe_seed(recipe.seed))
    probe_ids = torch.randperm(V, generator=g)[:n_probes].sort().values
    table = pd.DataFrame({"probe": np.arange(n_probes), "token_id": probe_ids.numpy(),
                          "word": [vocab.words[i] for i in probe_ids.tolist()],
                          "count": [vocab.counts[i] for i in probe_ids.tolist()]})
    return Task(
        name=d.dataset, in_features=V, out_features=V,
        make_sampler=lambda seed: text8.SkipGramSampler(ids, d.window, recipe.train.batch_size, seed),
        probes=probe_ids, probe_table=table,
        info={"task": f"skip-gram on {d.dataset} (V = {V} one-hot words in and out, window {d.window})",
              "tokens": len(tokens), "tokens_in_vocab": int(len(ids)), "vocab_size": V,
              "vocab_coverage": round(float(len(ids) / max(1, len(tokens))), 4), "window": d.window,
              "probes": (f"all {V} vocabulary tokens" if n_probes == V else
                         f"{n_probes} distinct vocabulary tokens sampled with seed {probe_seed(recipe.seed)}")},
        vocab=vocab,
    )


class ArraySampler:
    """Uniform minibatches (with replacement) of rows of (x, y), from a private generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self):
        idx = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def mnist_task(recipe: Recipe) -> Task:
    """MNIST images on the unit sphere, one-hot (10-dimensional) targets, the Euclidean loss."""
    from . import mnist

    d = recipe.data
    x, labels = mnist.load_mnist_subset(d.n_train, seed=recipe.seed, train=True, root=d.mnist_root or None,
                                        data_dir=d.data_dir, download=d.download)
    y = mnist.one_hot(labels, 10, dtype=x.dtype)
    n_probes = d.n_probes or len(x)
    g = torch.Generator().manual_seed(probe_seed(recipe.seed))
    probe_rows = torch.randperm(len(x), generator=g)[:n_probes].sort().values
    probes = x[probe_rows]
    table = pd.DataFrame({"probe": np.arange(n_probes), "row": probe_rows.numpy(),
                          "label": labels[probe_rows].numpy()})
    return Task(
        name="mnist", in_features=x.shape[1], out_features=10,
        make_sampler=lambda seed: ArraySampler(x, y, recipe.train.batch_size, seed),
        probes=probes, probe_table=table,
        info={"task": f"MNIST, {len(x)} training images on the unit sphere, one-hot (10-dimensional) targets",
              "n_train": len(x), "probes": f"{n_probes} training images sampled with seed {probe_seed(recipe.seed)}"},
    )


MNIST_SHAPE = (784, 10)  # inputs and outputs of the MNIST task, known before loading it


def task_shape(recipe: Recipe) -> tuple[int, int, int]:
    """(in_features, out_features, probes) of the recipe's task without loading its data: upper
    bounds for text8, whose vocabulary can come out smaller than ``vocab_size`` on a tiny corpus."""
    d = recipe.data
    if d.dataset == "mnist":
        return (*MNIST_SHAPE, d.n_probes or d.n_train)
    return d.vocab_size, d.vocab_size, d.n_probes or d.vocab_size


def make_task(recipe: Recipe) -> Task:
    return mnist_task(recipe) if recipe.data.dataset == "mnist" else text8_task(recipe)
