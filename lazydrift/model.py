"""NTKMLP: a bias-free ReLU multilayer perceptron in the NTK parameterization (paper section 4).

Every weight is drawn N(0, init_std^2) and every layer's output is multiplied by a fixed
``multiplier``; in Jacot et al.'s parameterization init_std = 1 and multiplier = 1/sqrt(fan_in),
so that Sigma^(1)(x, x') = x^T x' / n0 (Definition 1) and the network's NTK converges to
Theta_inf (Theorem 1).  Three other parameterizations are offered for comparison (``mup``,
``standard`` and ``pytorch``); their scalings are listed in :func:`layer_scalings`.

Module names are part of the public contract: the post-ReLU output of hidden layer ``k``
(0-based) is the output of the submodule ``hidden.k``, so forward hooks can target it, and the
last hidden layer is ``hidden.{hidden_layers-1}``.  The readout is ``readout``.

Depth, one meaning: ``hidden_layers`` counts hidden ReLU layers (Table 1's network has 2) and
``depth`` is the paper's L, the number of weight layers, ``hidden_layers + 1``, as in
:mod:`lazydrift.kernels`.  :meth:`NTKMLP.limit_kernels` gives the network's own infinite-width
limits (NNGP, NTK, feature cosines), derived from its own layer scalings.

One-hot inputs can be given as integer token ids (LongTensor): the first layer then looks up
rows of its weight instead of multiplying by a V-by-width one-hot matrix, which is the same
computation (see tests) at a fraction of the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .kernels import input_fan_in

PARAMETERIZATIONS = ("ntk", "mup", "standard", "pytorch")  # the one list: recipes, plots and tables use it


@dataclass(frozen=True)
class Scaling:
    """How one layer is parameterized: y = multiplier * W x, W ~ N(0, init_std^2), lr * lr_scale.

    ``init="uniform"`` draws W ~ U(-sqrt(3) init_std, sqrt(3) init_std) instead (same variance),
    nn.Linear's default.  ``lr_scale`` is the layer's factor for SGD (with or without
    momentum); Adam's factors are in :func:`lazydrift.optimizers.adam_lr_factors`.
    """

    multiplier: float
    init_std: float
    lr_scale: float
    init: str = "normal"


def layer_scalings(parameterization: str, in_features: int, width: int, hidden_layers: int,
                   input_scale: str = "fan_in") -> list[Scaling]:
    """Scalings of the input layer, the hidden_layers - 1 hidden-to-hidden layers and the readout.

    With n the hidden width and d the input's fan-in (d is replaced by 1 when
    ``input_scale="embedding"``, the usual scale for one-hot token inputs):

    ============  ====================  ======================  =================  ========================
    layer         ntk (Jacot et al.)    mup (Yang & Hu, TP4)    standard           pytorch (nn.Linear)
    ============  ====================  ======================  =================  ========================
    input         1/sqrt(d), N(0,1), 1  1/sqrt(d), N(0,1), n    1, N(0,1/d), 1/n   1, U(+-1/sqrt(d)), 1 *
    hidden        1/sqrt(n), N(0,1), 1  1/sqrt(n), N(0,1), n    1, N(0,1/n), 1/n   1, U(+-1/sqrt(n)), 1
    readout       1/sqrt(n), N(0,1), 1  1/n,       N(0,1), n    1, N(0,1/n), 1/n   1, U(+-1/sqrt(n)), 1
    ============  ====================  ======================  =================  ========================

    Each cell is (multiplier, init distribution, learning-rate factor).  The muP column is
    Yang & Hu's (2021) abc-parameterization for SGD (a = -1/2, 0, 1/2; b = 1/2; c = 0)
    rewritten with N(0, 1) weights through their symmetry (a, b, c) -> (a + b, 0, c - 2b):
    it equals the NTK column with the readout divided by a further sqrt(n) and every
    learning rate multiplied by n.  The standard column uses the learning rate eta/n, the
    largest SGD scaling that stays stable as n grows (TP4, section 3), which places it in the
    kernel regime.  The pytorch column is what a PyTorch user writes by default: ``nn.Linear``
    layers (kaiming_uniform_ with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance
    1/(3 fan_in)) trained with one unscaled learning rate.  (*) With ``input_scale="embedding"``
    its input layer is ``nn.Embedding``'s default, N(0, 1), the table a PyTorch user writes for
    token ids.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    d = input_fan_in(input_scale, in_features)
    n = width
    if parameterization == "ntk":
        first = Scaling(1 / math.sqrt(d), 1.0, 1.0)
        hidden = Scaling(1 / math.sqrt(n), 1.0, 1.0)
        readout = Scaling(1 / math.sqrt(n), 1.0, 1.0)
    elif parameterization == "mup":
        first = Scaling(1 / math.sqrt(d), 1.0, float(n))
        hidden = Scaling(1 / math.sqrt(n), 1.0, float(n))
        readout = Scaling(1 / n, 1.0, float(n))
    elif parameterization == "standard":
        first = Scaling(1.0, 1 / math.sqrt(d), 1 / n)
        hidden = Scaling(1.0, 1 / math.sqrt(n), 1 / n)
        readout = Scaling(1.0, 1 / math.sqrt(n), 1 / n)
    else:  # pytorch: nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has standard deviation 1/sqrt(3 fan_in)
        first = (Scaling(1.0, 1.0, 1.0) if input_scale == "embedding"
                 else Scaling(1.0, 1 / math.sqrt(3 * d), 1.0, "uniform"))
        hidden = Scaling(1.0, 1 / math.sqrt(3 * n), 1.0, "uniform")
        readout = Scaling(1.0, 1 / math.sqrt(3 * n), 1.0, "uniform")
    return [first] + [hidden] * (hidden_layers - 1) + [readout]


def scaled_mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * a @ b in one BLAS call (the scale rides on GEMM's alpha; beta = 0 ignores C)."""
    return torch.addmm(a.new_zeros(()), a, b, beta=0, alpha=alpha)


class _LinearSGD(torch.autograd.Function):
    """y = m * x @ W^T whose backward applies the SGD step to W in place (no gradient tensor)."""

    @staticmethod
    def forward(ctx, x, weight, multiplier, lr):
        ctx.save_for_backward(x, weight)
        ctx.multiplier, ctx.lr = multiplier, lr
        return scaled_mm(x, weight.t(), multiplier)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        m = ctx.multiplier
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = scaled_mm(grad_out, weight, m)  # uses W before its update below
        # W <- W - lr * dL/dW with dL/dW = m * grad_out^T x, accumulated straight into W.
        weight.addmm_(grad_out.t(), x, alpha=-ctx.lr * m)
        return grad_x, None, None, None


class _InputSGD(torch.autograd.Function):
    """First layer y = m * x W (W stored in-by-width) whose backward applies the SGD step to W in place.

    Integer ``x`` are token ids: the forward looks rows up and the backward scatters the step
    into those rows only; float ``x`` use the dense product and its rank-B update.
    """

    @staticmethod
    def forward(ctx, x, weight, multiplier, lr):
        ctx.save_for_backward(x)
        ctx.weight, ctx.multiplier, ctx.lr = weight, multiplier, lr
        return _input_product(x, weight, multiplier)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        alpha = -ctx.lr * ctx.multiplier
        if torch.is_floating_point(x):
            ctx.weight.addmm_(x.t(), grad_out, alpha=alpha)
        else:
            ctx.weight.index_add_(0, x.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]), alpha=alpha)
        return None, None, None, None


class _LinearStep(torch.autograd.Function):
    """y = m * x @ W^T whose backward writes dL/dW into a reused buffer and calls step(W, grad).

    ``step`` (see lazydrift.optimizers) owns the buffer (``step.buffer(weight)``) and applies
    an optimizer update from it; no gradient tensor is allocated per step.
    """

    @staticmethod
    def forward(ctx, x, weight, multiplier, step):
        ctx.save_for_backward(x, weight)
        ctx.multiplier, ctx.step = multiplier, step
        return scaled_mm(x, weight.t(), multiplier)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        m = ctx.multiplier
        grad_x = scaled_mm(grad_out, weight, m) if ctx.needs_input_grad[0] else None  # W before the step
        grad = ctx.step.buffer(weight)
        torch.addmm(grad, grad_out.t(), x, beta=0, alpha=m, out=grad)  # dL/dW = m grad_out^T x, one pass
        ctx.step(weight, grad)
        return grad_x, None, None, None


class _InputStep(torch.autograd.Function):
    """First layer y = m * x W whose backward writes dL/dW into a reused buffer and calls step(W, grad)."""

    @staticmethod
    def forward(ctx, x, weight, multiplier, step):
        ctx.save_for_backward(x)
        ctx.weight, ctx.multiplier, ctx.step = weight, multiplier, step
        return _input_product(x, weight, multiplier)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        grad = ctx.step.buffer(ctx.weight)
        if torch.is_floating_point(x):
            torch.addmm(grad, x.t(), grad_out, beta=0, alpha=ctx.multiplier, out=grad)
        else:  # token ids: the rows of the batch's tokens, every other row 0
            grad.zero_().index_add_(0, x.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]),
                                    alpha=ctx.multiplier)
        ctx.step(ctx.weight, grad)
        return None, None, None, None


def _input_product(x: torch.Tensor, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
    """m * x W for the first layer: a dense product for float x, a row lookup for token ids."""
    if torch.is_floating_point(x):
        return scaled_mm(x, weight, multiplier)
    rows = F.embedding(x, weight)
    return rows if multiplier == 1.0 else rows.mul_(multiplier)


def _draw(weight: torch.Tensor, scaling: Scaling, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        if scaling.init == "uniform":  # the same draw as nn.init.kaiming_uniform_ with this bound
            bound = math.sqrt(3.0) * scaling.init_std
            weight.uniform_(-bound, bound, generator=generator)
        else:
            weight.normal_(0.0, scaling.init_std, generator=generator)


class ScaledLinear(nn.Module):
    """Bias-free linear layer y = multiplier * x W^T with W ~ N(0, init_std^2), shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, scaling: Scaling):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.multiplier, self.init_std, self.lr_scale = scaling.multiplier, scaling.init_std, scaling.lr_scale
        self.scaling = scaling
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.sgd_lr: float | None = None  # set by lazydrift.train.fused_sgd
        self.grad_step = None  # set by lazydrift.optimizers.Optimizer: an update applied inside backward

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _draw(self.weight, self.scaling, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sgd_lr is not None and torch.is_grad_enabled():
            return _LinearSGD.apply(x, self.weight, self.multiplier, self.sgd_lr * self.lr_scale)
        if self.grad_step is not None and torch.is_grad_enabled():
            return _LinearStep.apply(x, self.weight, self.multiplier, self.grad_step)
        return scaled_mm(x, self.weight.t(), self.multiplier)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, multiplier={self.multiplier:.4g}"


class InputLayer(nn.Module):
    """First layer y = multiplier * x W with W of shape (in_features, width).

    ``x`` is either a float tensor (..., in_features) or integer token ids (...,): for ids the
    layer returns rows of W, which equals the product with the one-hot encoding of the ids.
    The weight is stored input-major (like ``nn.Embedding``) so that a lookup reads
    contiguous rows.
    """

    def __init__(self, in_features: int, width: int, scaling: Scaling):
        super().__init__()
        self.in_features, self.out_features = in_features, width
        self.multiplier, self.init_std, self.lr_scale = scaling.multiplier, scaling.init_std, scaling.lr_scale
        self.scaling = scaling
        self.weight = nn.Parameter(torch.empty(in_features, width))
        self.sgd_lr: float | None = None
        self.grad_step = None

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        _draw(self.weight, self.scaling, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sgd_lr is not None and torch.is_grad_enabled():
            return _InputSGD.apply(x, self.weight, self.multiplier, self.sgd_lr * self.lr_scale)
        if self.grad_step is not None and torch.is_grad_enabled():
            return _InputStep.apply(x, self.weight, self.multiplier, self.grad_step)
        return _input_product(x, self.weight, self.multiplier)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, multiplier={self.multiplier:.4g}"


class NoLimitError(ValueError):
    """The network has no infinite-width limit of the kind asked for (the message says why)."""


class NTKMLP(nn.Module):
    """Bias-free ReLU MLP with ``hidden_layers`` hidden layers of equal ``width``.

    The paper's depth L counts weight layers: ``NTKMLP(..., hidden_layers=2)`` (Table 1's network)
    has ``depth`` L = 3, and :meth:`limit_kernels` gives its limits (its NTK tends to
    ``lazydrift.kernels.relu_ntk(..., depth=3)`` in the NTK parameterization).

    Args:
        in_features: input dimension (the vocabulary size V for one-hot tokens).
        width: the hidden width n, the same for every hidden layer.
        out_features: output dimension.
        hidden_layers: number of hidden layers (the paper's L minus 1).
        parameterization: ``"ntk"`` (default), ``"mup"``, ``"standard"`` or ``"pytorch"``; see
            :func:`layer_scalings`.
        input_scale: ``"fan_in"`` divides the first layer by sqrt(in_features) as in
            Definition 1; ``"embedding"`` uses scale 1, so that a one-hot input gives O(1)
            pre-activations as an embedding table does.
        seed: seeds the initialization (a private generator; the global RNG is untouched).
        device, dtype: where the parameters live.
    """

    def __init__(self, in_features: int, width: int, out_features: int, hidden_layers: int = 2, *,
                 parameterization: str = "ntk", input_scale: str = "fan_in",
                 seed: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, **renamed):
        super().__init__()
        if "depth" in renamed:  # the old name meant hidden layers; depth now means the paper's L everywhere
            raise TypeError("NTKMLP: depth= is now hidden_layers= (the number of hidden layers); "
                            "NTKMLP.depth is the paper's L = hidden_layers + 1")
        if renamed:
            raise TypeError(f"NTKMLP got unexpected keyword argument(s) {', '.join(map(repr, renamed))}")
        for name, value in (("in_features", in_features), ("width", width),
                            ("out_features", out_features), ("hidden_layers", hidden_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NTKMLP: {name} must be a positive integer, got {value!r}")
        self.in_features, self.width, self.out_features = in_features, width, out_features
        self.hidden_layers = hidden_layers
        self.parameterization, self.input_scale = parameterization, input_scale
        scalings = layer_scalings(parameterization, in_features, width, hidden_layers, input_scale)
        blocks = [nn.Sequential(InputLayer(in_features, width, scalings[0]), nn.ReLU())]
        blocks += [nn.Sequential(ScaledLinear(width, width, s), nn.ReLU()) for s in scalings[1:-1]]
        self.hidden = nn.ModuleList(blocks)
        self.readout = ScaledLinear(width, out_features, scalings[-1])
        self.to(device=device, dtype=dtype)
        self.reset_parameters(seed)

    @property
    def depth(self) -> int:
        """The paper's depth L: the number of weight layers, ``hidden_layers + 1``."""
        return self.hidden_layers + 1

    def limit_kernels(self, x: torch.Tensor, z: torch.Tensor | None = None,
                      want=("nngp", "ntk", "feature_cosine")) -> dict[str, torch.Tensor]:
        """This network's infinite-width limits at inputs ``x`` (and ``z``; default ``x``), float64, CPU.

        Derived from the network's own layers: a layer y = m W a with W ~ (0, s^2) has pre-activation
        covariance (m s)^2 fan_in E[a a'], so the first layer gives Sigma^(1) = (m_1 s_1)^2 x^T x'
        (Definition 1 when m_1 = 1/sqrt(n0), s_1 = 1) and every later layer sigma_w^2 = (m s)^2 n.

        * ``"nngp"``: Sigma^(L)(x, z), the covariance of each output at initialization
          (Proposition 2 through the layers; L = :attr:`depth`);
        * ``"ntk"``: Theta_inf^(L)(x, z) (Theorem 1), the limit of the empirical NTK of one output
          (:mod:`lazydrift.empirical`), i.e. the kernel that plain SGD follows in the lazy limit.
          Only in the ``ntk`` parameterization, where every layer learns at the same rate: under
          ``mup`` the features move at every width (no kernel limit), under ``standard`` the
          learning rate eta/n freezes the input layer in the limit, and ``pytorch`` trains at a
          width-independent rate;
        * ``"feature_cosine"``: (hidden_layers, n, m), the cosine between the post-ReLU features of
          ``hidden.k`` at two inputs, h^(k+1)(rho^(1)) = rho^(k+2) (Proposition 2, Definition 5);
        * ``"input_cosine"``: rho^(1)(x, z) (Definition 3), the inputs' cosine that the feature
          cosines are functions of (exact at every width).

        Integer ``x``/``z`` are token ids standing for one-hot rows.  The limit assumes Gaussian
        pre-activations; one-hot inputs through a uniformly initialized first layer (``pytorch``
        with ``input_scale="fan_in"``) give single uniform weights instead, and are refused.
        Raises :class:`NoLimitError` when a requested limit does not exist.
        """
        from .kernels import relu_kernels

        want = tuple(want)
        unknown = set(want) - {"nngp", "ntk", "feature_cosine", "input_cosine"}
        if unknown or not want:
            raise ValueError(f"want must name some of 'nngp', 'ntk', 'feature_cosine', 'input_cosine', got {want!r}")
        if "ntk" in want and self.parameterization != "ntk":
            raise NoLimitError(f"NTKMLP: the {self.parameterization!r} parameterization has no Theorem-1 NTK "
                               "limit (see NTKMLP.limit_kernels); use parameterization='ntk'")
        first, hidden, readout = self.scalings()[0], self.scalings()[1], self.scalings()[-1]
        integer = [t is not None and not torch.is_floating_point(t) for t in (x, z)]
        if any(integer) and first.init != "normal" and set(want) != {"input_cosine"}:
            raise NoLimitError("NTKMLP: one-hot inputs through a uniformly initialized first layer have uniform, "
                               "not Gaussian, pre-activations: Proposition 2's limit does not apply")
        x, z = (None if t is None else self._dense_inputs(t) for t in (x, z))
        sigma_w2 = (hidden.multiplier * hidden.init_std) ** 2 * self.width
        c = (first.multiplier * first.init_std) ** 2 / sigma_w2  # Sigma^(1) = sigma_w2 c x^T z
        readout_ratio = (readout.multiplier * readout.init_std) ** 2 * self.width / sigma_w2
        out = {}
        if "nngp" in want or "ntk" in want:
            k = relu_kernels(x, z, self.depth, sigma_w2=sigma_w2, input_scale=c,
                             want=[w for w in ("nngp", "ntk") if w in want])
            out.update({"nngp": k["nngp"] * readout_ratio} if "nngp" in want else {})
            out.update({"ntk": k["ntk"]} if "ntk" in want else {})
        if "feature_cosine" in want:
            depths = list(range(2, self.hidden_layers + 2))
            out["feature_cosine"] = relu_kernels(x, z, depths, want=("rho",))["rho"]  # a list of depths: a stack
        if "input_cosine" in want:
            out["input_cosine"] = relu_kernels(x, z, 1, want=("rho",))["rho"]
        return {name: out[name] for name in want}

    def scalings(self) -> list[Scaling]:
        """Each weight layer's :class:`Scaling`, in forward order."""
        return [layer.scaling for layer in self.linear_layers()]

    def _dense_inputs(self, t: torch.Tensor) -> torch.Tensor:
        if torch.is_floating_point(t):
            return t.detach().to("cpu", torch.float64)
        return F.one_hot(t.detach().to("cpu", torch.int64), self.in_features).to(torch.float64)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw every weight afresh; the same seed on the same device gives the same weights."""
        device = self.readout.weight.device
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        for layer in self.linear_layers():
            layer.reset_parameters(generator)

    def linear_layers(self) -> list[nn.Module]:
        """The weight layers in forward order: input, hidden-to-hidden, readout."""
        return [block[0] for block in self.hidden] + [self.readout]

    @property
    def last_hidden(self) -> str:
        """Module name of the last hidden layer's post-ReLU output (Table 1's h_t)."""
        return f"hidden.{self.hidden_layers - 1}"

    def default_record_layers(self) -> list[str]:
        return [self.last_hidden]

    def param_groups(self, lr: float) -> list[dict]:
        """Per-layer parameter groups for ``torch.optim.SGD`` with each layer's lr factor."""
        return [{"params": [layer.weight], "lr": lr * layer.lr_scale} for layer in self.linear_layers()]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError naming the expected shape and dtype when ``x`` cannot be an input."""
        expected = (f"integer token ids of shape (batch,) with values in [0, {self.in_features}) "
                    f"or a float tensor of shape (batch, {self.in_features})")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"inputs must be a torch.Tensor: {expected}; got {type(x).__name__}")
        if torch.is_floating_point(x):
            if x.dim() != 2 or x.shape[1] != self.in_features:
                raise ValueError(f"inputs must be {expected}; got float shape {tuple(x.shape)}")
        elif x.dtype in (torch.int64, torch.int32):
            if x.dim() != 1:
                raise ValueError(f"inputs must be {expected}; got integer shape {tuple(x.shape)}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.in_features):
                raise ValueError(f"inputs must be {expected}; got ids in [{int(x.min())}, {int(x.max())}]")
        else:
            raise ValueError(f"inputs must be {expected}; got dtype {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.hidden:
            x = block(x)
        return self.readout(x)

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization}, input_scale={self.input_scale}"
