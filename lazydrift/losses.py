"""The training losses, by name: ``mse`` (the paper's Euclidean loss) and ``cross_entropy``.

Both take the network's output (batch, outputs) and either integer class ids (one-hot targets,
no one-hot matrix is built) or a dense float target of the output's shape, and average over
the batch:

* ``mse``: (1/2B) sum_b ||f(x_b) - y_b||^2 (:func:`lazydrift.train.mse_loss`; Proposition 4's
  Euclidean loss, halved so that its gradient is the residual (f - y) / B);
* ``cross_entropy``: (1/B) sum_b -sum_k y_bk log softmax(f(x_b))_k, ``F.cross_entropy``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from .train import mse_loss

LOSSES = ("mse", "cross_entropy")


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch; ``target`` is class ids or probabilities."""
    if output.dim() != 2:
        raise ValueError(f"output must be (batch, outputs), got shape {tuple(output.shape)}")
    return F.cross_entropy(output, target)


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    if name == "mse":
        return mse_loss
    if name == "cross_entropy":
        return cross_entropy
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
