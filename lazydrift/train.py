"""The fused SGD step, the Euclidean loss, and the divergence error of the training loop.

The training loop itself is :func:`lazydrift.cell.run_cell`; its optimizers are
:mod:`lazydrift.optimizers` (``sgd`` is the fused step below) and its losses :mod:`lazydrift.losses`.

``fused_sgd(model, lr)`` makes ``loss.backward()`` update every NTKMLP weight in place as
soon as its gradient is known (W.addmm_ for dense layers, index_add_ for the token lookup),
so no gradient tensor is ever allocated: at width 30000 that saves a 3.6 GB buffer per step
and the time to fault it in.  The update is exactly SGD's (each layer's gradient depends
only on the parameters before the step), which tests check against ``torch.optim.SGD``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DivergenceError(RuntimeError):
    """The loss (or a recorded activation) became NaN or infinite."""

    def __init__(self, step: int, loss: float, lr: float, what: str = "loss", optimizer: str = "sgd",
                 key: str = "[train] lr"):
        self.step, self.loss, self.lr, self.what, self.optimizer = step, loss, lr, what, optimizer
        super().__init__(f"training diverged at step {step}: {what} = {loss} with {optimizer} at learning rate {lr}; "
                         f"lower {key} or check the data")


class fused_sgd:
    """SGD inside ``loss.backward()``: each lazydrift layer's weight takes its step in place, with
    learning rate ``lr`` times the layer's ``lr_scale``, and ``.grad`` is left unset.

    Use it as ``with fused_sgd(model, lr): loss.backward()``: on leaving the block the layers
    return to plain autograd.  Called without ``with`` it is just as active, until
    ``.close()`` (so the call never silently does nothing).  Blocks nest: leaving one restores
    the learning rates that held before it.
    """

    def __init__(self, model: nn.Module, lr: float):
        layers = [m for m in model.modules() if hasattr(m, "sgd_lr")]
        if not layers:
            raise ValueError("fused_sgd needs a model built from lazydrift layers (e.g. NTKMLP)")
        try:
            rate = float(lr)
        except (TypeError, ValueError):
            rate = math.nan
        if isinstance(lr, bool) or not math.isfinite(rate):
            raise ValueError(f"fused_sgd: lr must be a finite number, got {lr!r}")
        self._previous = [(layer, layer.sgd_lr) for layer in layers]
        for layer in layers:
            layer.sgd_lr = rate

    def close(self) -> None:
        """Return the layers to the learning rates they had before (plain autograd if none)."""
        for layer, lr in self._previous:
            layer.sgd_lr = lr
        self._previous = []

    def __enter__(self) -> "fused_sgd":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False


class _MSELoss(torch.autograd.Function):
    """(1/2B) ||f - y||^2 whose gradient (f - y)/B reuses the residual of the forward pass."""

    @staticmethod
    def forward(ctx, output, target):
        batch = output.shape[0]
        residual = output.detach().clone()
        if torch.is_floating_point(target):
            residual.sub_(target)
        else:  # class ids stand for one-hot rows: subtract 1 at (b, y_b)
            residual[torch.arange(batch, device=output.device), target] -= 1
        flat = residual.view(-1)
        ctx.save_for_backward(residual)
        ctx.batch = batch
        return torch.dot(flat, flat) * (0.5 / batch)

    @staticmethod
    def backward(ctx, grad):
        (residual,) = ctx.saved_tensors
        return residual * (grad / ctx.batch), None


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Euclidean loss averaged over the batch: (1/2B) sum_b ||f(x_b) - y_b||^2.

    ``target`` is either a dense tensor shaped like ``output`` or integer class ids, which
    stand for one-hot rows (no one-hot matrix is built).
    """
    if output.dim() != 2:
        raise ValueError(f"output must be (batch, outputs), got shape {tuple(output.shape)}")
    return _MSELoss.apply(output, target)
