"""Optimizers for NTKMLP with each layer's learning-rate factor: ``sgd``, ``momentum``, ``adam``.

Every optimizer takes one base learning rate ``lr``; layer k (input, hidden-to-hidden, readout)
is updated with ``lr * factor_k``, where the factors depend on the parameterization and on
the optimizer family (:func:`lr_factors`):

* ``sgd`` and ``momentum`` (heavy ball, PyTorch's convention ``b <- mu b + g; W <- W - lr b``)
  use the SGD factors of :func:`lazydrift.model.layer_scalings` (``Scaling.lr_scale``):
  1 for ntk and pytorch, n for mup, 1/n for standard.  Momentum is a linear filter of the
  gradients, so the width scaling of its learning rate is SGD's (TP5, Table 3 lists one
  "SGD LR" row for both).
* ``adam`` uses :func:`adam_lr_factors`: Adam's update is invariant to the scale of the
  gradient, so its factors follow a different rule (below).

``sgd`` runs as :func:`lazydrift.train.fused_sgd`: the update is applied inside the backward
pass and no gradient tensor exists.  ``momentum`` and ``adam`` need their gradient: inside the
block, each NTKMLP layer's backward (``grad_step``, model._LinearStep / _InputStep) writes its
weight gradient with one GEMM into a scratch buffer that all layers share and that lives for
the whole run, and steps the weight from it at once with a fused (one pass over memory)
``torch.optim`` kernel.  One gradient buffer (the largest layer's size) exists in all, it is
never allocated again (no page faults, no extra scaling pass as in autograd's addmm
backward), and the update is exact: the layer's input gradient is computed from W before the
step, and no later backward node reads W (the property fused_sgd relies on).  The cost over
fused SGD is then the optimizer's own memory traffic (``benchmarks/bench_optimizers.py``).

Use::

    opt = Optimizer(model, "adam", lr=1e-3)
    for step in ...:
        with opt.step():                  # forward and backward inside the block
            loss = loss_fn(model(x), y)
            loss.backward()               # the weights are updated here
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from .model import PARAMETERIZATIONS
from .train import fused_sgd

OPTIMIZERS = ("sgd", "momentum", "adam")
HYPERPARAMETERS = {  # each optimizer's own hyperparameters and their defaults (PyTorch's)
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}


def adam_lr_factors(parameterization: str, width: int, hidden_layers: int) -> list[float]:
    """Adam's learning-rate factor of the input layer, the hidden_layers - 1 hidden-to-hidden layers and the readout.

    ============  ==============================================================
    ntk           1, 1, 1: one learning rate, the parameterization as written
    standard      1, 1, 1: TP5's standard parameterization trains Adam this way
    pytorch       1, 1, 1: what a PyTorch user writes
    mup           1, n^-1/2, 1: Yang et al. 2022, TP5, Table 3, rewritten below
    ============  ==============================================================

    muP.  Tensor Programs V (Yang et al. 2022, "Tuning Large Neural Networks via Zero-Shot
    Hyperparameter Transfer", Table 3) gives muP for Adam with weights initialized at the
    target scale and no multipliers: init variance 1/fan_in (input), 1/fan_in (hidden),
    1/fan_in^2 (output); Adam LR 1, 1/fan_in, 1/fan_in.  NTKMLP draws every weight N(0, 1)
    and carries the scale as a multiplier m = sigma (the init standard deviation).  Adam's
    step on w = W / sigma is lr' times a normalized direction that does not depend on the
    gradient's scale, so the effective weight m w moves by sigma lr' per entry, where TP5's W
    moves by lr: lr' = lr / sigma.  Hence input 1 / 1 = 1 (fan_in is the fixed input
    dimension; as in the SGD column of layer_scalings only the width n is tracked), hidden
    (1/n) / (1/sqrt(n)) = n^-1/2, readout (1/n) / (1/n) = 1.  The multipliers this gives,
    1/sqrt(n) (hidden) and 1/n (readout), are exactly NTKMLP's mup multipliers.  (The same
    rewrite of TP5's SGD row, lr' = lr / sigma^2, gives n, n, n: layer_scalings' mup column.)

    Adam's epsilon is not rescaled (TP5 notes it should shrink with the gradients; at the
    widths here the mup readout's gradients stay far above 1e-8).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}; got {parameterization!r}")
    hidden = 1 / math.sqrt(width) if parameterization == "mup" else 1.0
    return [1.0] + [hidden] * (hidden_layers - 1) + [1.0]


def lr_factors(model: nn.Module, optimizer: str) -> list[float]:
    """Each weight layer's learning-rate factor (``model.linear_layers()`` order) for ``optimizer``."""
    check_optimizer(optimizer)
    if optimizer == "adam":
        return adam_lr_factors(model.parameterization, model.width, model.hidden_layers)
    return [layer.lr_scale for layer in model.linear_layers()]


def param_groups(model: nn.Module, optimizer: str, lr: float) -> list[dict]:
    """Per-layer parameter groups with learning rate ``lr * factor``, for a ``torch.optim`` optimizer."""
    return [{"params": [layer.weight], "lr": lr * f}
            for layer, f in zip(model.linear_layers(), lr_factors(model, optimizer))]


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def hyperparameters(name: str, **overrides) -> dict:
    """``name``'s hyperparameters: the defaults updated by ``overrides`` (unknown keys are an error)."""
    check_optimizer(name)
    known = HYPERPARAMETERS[name]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"optimizer {name!r} has no hyperparameter(s) {unknown}; "
                         f"it takes {sorted(known) or 'none besides lr'}")
    return {**known, **overrides}


def torch_optimizer(name: str, groups: list[dict], lr: float, fused: bool | None = None,
                    **overrides) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer that defines ``name``'s update, over ``groups``."""
    h = hyperparameters(name, **overrides)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(h["beta1"], h["beta2"]), eps=h["eps"], fused=fused)
    return torch.optim.SGD(groups, lr=lr, momentum=h.get("momentum", 0.0), fused=fused)


STATE_TENSORS = {"sgd": 0, "momentum": 1, "adam": 2}  # tensors shaped like each weight: buf; exp_avg, exp_avg_sq


def state_bytes(name: str, weight_sizes: list[int], in_backward: bool = True, itemsize: int = 4) -> int:
    """Bytes of optimizer state for weights of ``weight_sizes`` elements (the preflight estimate).

    Momentum keeps one buffer per weight, Adam two moments (its step counters are scalars);
    plain SGD keeps none.  In backward (:class:`Optimizer`) momentum and Adam add one gradient
    buffer the size of the largest weight, reused by every layer, and fused SGD none; the
    reference path (``in_backward=False``) holds a gradient per weight at once.
    """
    check_optimizer(name)
    total = sum(weight_sizes)
    state = STATE_TENSORS[name] * total
    if not in_backward:
        gradients = total
    else:
        gradients = 0 if name == "sgd" else max(weight_sizes, default=0)
    return (state + gradients) * itemsize


class Optimizer:
    """Train an NTKMLP with ``name`` at base learning rate ``lr`` (times each layer's factor).

    ``with opt.step():`` around the forward and backward pass of one step applies the update
    during ``backward()``; outside the block gradients accumulate as usual (``.grad``), so
    probe passes and other backward calls are unaffected.

    ``in_backward=False`` is the reference path (``[train] fused_sgd = false``): plain autograd
    fills every ``.grad`` and the ``torch.optim`` optimizer of :func:`torch_optimizer` steps on
    leaving the block.  Both paths apply the same update (tests/test_optimizers.py).
    """

    def __init__(self, model: nn.Module, name: str, lr: float, in_backward: bool = True, **overrides):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.model, self.name, self.lr, self.in_backward = model, name, float(lr), in_backward
        self.hyper = hyperparameters(name, **overrides)
        self.factors = lr_factors(model, name)
        self._layers = model.linear_layers()
        self._per_weight: list[torch.optim.Optimizer] = []
        self._step = None
        if not in_backward:
            self._per_weight.append(torch_optimizer(name, param_groups(model, name, self.lr), self.lr, **overrides))
        elif name != "sgd":
            by_weight = {}
            for group in param_groups(model, name, self.lr):
                opt = torch_optimizer(name, [group], self.lr, fused=True, **overrides)
                self._per_weight.append(opt)
                by_weight[id(group["params"][0])] = opt
            self._step = _InBackwardStep(by_weight)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Within the block, ``loss.backward()`` applies one update to every weight."""
        if not self.in_backward:
            (opt,) = self._per_weight
            opt.zero_grad(set_to_none=True)
            yield
            opt.step()
            opt.zero_grad(set_to_none=True)
            return
        if self.name == "sgd":
            with fused_sgd(self.model, self.lr):
                yield
            return
        for layer in self._layers:
            layer.grad_step = self._step
        try:
            yield
        finally:
            for layer in self._layers:
                layer.grad_step = None

    def state_dict(self) -> dict:
        """Each weight's optimizer state (momentum buffers, Adam moments and step counts)."""
        return {"name": self.name, "lr": self.lr, "hyper": dict(self.hyper), "in_backward": self.in_backward,
                "per_weight": [opt.state_dict() for opt in self._per_weight]}

    def load_state_dict(self, state: dict) -> None:
        mine = {"name": self.name, "lr": self.lr, "hyper": self.hyper, "in_backward": self.in_backward}
        theirs = {k: state.get(k, True if k == "in_backward" else None) for k in mine}
        if theirs != mine:
            raise ValueError(f"optimizer state was saved with {theirs}, this optimizer has {mine}")
        for opt, s in zip(self._per_weight, state["per_weight"]):
            opt.load_state_dict(s)

    def close(self) -> None:
        """Free the shared gradient buffer (a later step allocates it again)."""
        if self._step is not None:
            self._step.scratch = None

    def __repr__(self) -> str:
        return f"Optimizer({self.name}, lr={self.lr:g}, factors={[f'{f:.4g}' for f in self.factors]}, {self.hyper})"


class _InBackwardStep:
    """Called by a layer's backward with (weight, grad): one fused optimizer step for that weight.

    ``buffer(weight)`` is a view, shaped like the weight, of one scratch tensor shared by all
    layers (a layer's gradient is consumed by its step before the next layer's is written).
    """

    def __init__(self, optimizers: dict[int, torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.scratch: torch.Tensor | None = None

    def buffer(self, weight: torch.Tensor) -> torch.Tensor:
        n = weight.numel()
        if self.scratch is None or self.scratch.numel() < n or self.scratch.dtype != weight.dtype \
                or self.scratch.device != weight.device:
            size = max(n, self.scratch.numel() if self.scratch is not None else 0)
            self.scratch = torch.empty(size, dtype=weight.dtype, device=weight.device)
        return self.scratch[:n].view(weight.shape)

    def __call__(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        weight.grad = grad
        try:
            self.optimizers[id(weight)].step()
        finally:
            weight.grad = None
