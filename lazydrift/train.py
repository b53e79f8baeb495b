"""The training loop: plain SGD on the Euclidean loss, with the SGD step applied inside backward.

``fused_sgd(model, lr)`` makes ``loss.backward()`` update every NTKMLP weight in place as
soon as its gradient is known (W.addmm_ for dense layers, index_add_ for the token lookup),
so no gradient tensor is ever allocated: at width 30000 that saves a 3.6 GB buffer per step
and the time to fault it in.  The update is exactly SGD's (each layer's gradient depends
only on the parameters before the step), which tests check against ``torch.optim.SGD``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm


class DivergenceError(RuntimeError):
    """The loss (or a recorded activation) became NaN or infinite."""

    def __init__(self, step: int, loss: float, lr: float, what: str = "loss"):
        self.step, self.loss, self.lr, self.what = step, loss, lr, what
        super().__init__(f"training diverged at step {step}: {what} = {loss} with learning rate {lr}; "
                         "lower [train] lr or check the data")


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


@dataclass
class TrainState:
    """What a run needs to continue: the next step and the losses logged so far."""

    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)


def train(model: nn.Module, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
          lr: float, *, on_step: Callable[[int, float], None] | None = None,
          fused: bool = True, state: TrainState | None = None, progress: bool = True,
          desc: str = "train", loss_every: int = 10, postfix: Callable[[], dict] | None = None) -> TrainState:
    """Run SGD steps ``state.step + 1 .. steps``; call ``on_step(step, loss)`` after each update.

    ``fused=False`` uses ``torch.optim.SGD`` with the model's per-layer learning rates
    (``model.param_groups``) instead of the in-backward update; both give the same weights.
    A NaN or infinite loss raises :class:`DivergenceError` naming the step.
    """
    state = state or TrainState()
    optimizer = None
    if not fused:
        groups = model.param_groups(lr) if hasattr(model, "param_groups") else [{"params": model.parameters()}]
        optimizer = torch.optim.SGD(groups, lr=lr)
    model.train()
    bar = tqdm(total=steps, initial=state.step, desc=desc, disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
    last_postfix = time.monotonic()
    try:
        for step in range(state.step + 1, steps + 1):
            x, y = next_batch()
            if fused:
                with fused_sgd(model, lr):
                    loss = mse_loss(model(x), y)
                    loss.backward()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = mse_loss(model(x), y)
                loss.backward()
                optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise DivergenceError(step, value, lr)
            state.step = step
            if step % loss_every == 0 or step == steps:
                state.losses.append((step, value))
            if on_step is not None:
                on_step(step, value)
            bar.update(1)
            if progress and time.monotonic() - last_postfix > 1.0:
                bar.set_postfix({"loss": f"{value:.4g}", **(postfix() if postfix else {})}, refresh=False)
                last_postfix = time.monotonic()
    finally:
        bar.close()
    return state
