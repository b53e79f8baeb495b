"""The empirical NTK of a finite network (Definition 2), by layer structure or through torch.func.

Theta(x, x') = sum_p dg(x)/dtheta_p dg(x')/dtheta_p over every trainable parameter, at the
model's current parameters, for one scalar output g of the network: an output column
(``output=k``) or ``output="random"``, g(x) = v . f(x) for a fixed seeded unit vector v.  The
infinite-width NTK is Theta_inf (x) I over the outputs (Theorem 1), so every such g has the
same limit, ``NTKMLP.limit_kernels(x, z)["ntk"]`` in the NTK parameterization (Theta_inf^(L) of
:func:`lazydrift.kernels.relu_ntk` with the paper's depth L = hidden_layers + 1; see
tests/test_empirical.py).

Two routes compute the same matrix:

* **structured** (the default): a layer y = m W a (+ b) has dg/dW = m dg/dy a^T, so its share
  of the kernel is

      Theta_layer(x, x') = <dg/dy(x), dg/dy(x')> (m^2 <a(x), a(x')> + [bias]),

  summed over the positions (and calls) of a layer that sees several rows per example.  One
  forward pass with hooks records each layer's input a; one backward pass of sum_i g(x_i)
  gives every probe's dg/dy, because in eval mode probe i's output depends on x_i only; then
  two n x n Gram products per layer.  Memory: a few n x width activations, never n x P (256
  token probes at width 30000: 0.30 GB beside the 4.08 GB model; time 0.6-1.0 training steps,
  benchmarks/bench_ntk.py).  A token lookup (``InputLayer`` with ids, ``nn.Embedding``) is
  the product with a one-hot a, so <a(x), a(x')> = [id(x) == id(x')].  Any other module with trainable parameters is routed
  through per-example vector-Jacobian products of that module alone (memory n x P_module).
* **jacobian** (the reference): per-example Jacobians of the whole network from
  ``vmap(jacrev(g))``, contracted parameter by parameter: memory about n2 x P (34 GB for
  ``NTKMLP(2000, 16384, 2000)`` on 256 probes).

The structured route checks that the summed backward really gives each probe's own gradient:
it refuses batch-mixing modules it can name (BatchNorm without running statistics, which uses
batch statistics even in eval mode), checks that every hooked layer sees one leading row per
probe, and compares the outputs of a two-probe forward pass with the same rows of the full
pass.  Tied parameters and layouts it cannot split by probe fall back to the Jacobian route
with a warning (``method="auto"``) or raise (``method="structured"``).  Not detected: a custom
autograd function whose backward alone mixes the batch, and mixing below the check's rounding
tolerance (10 sqrt(eps) of the outputs' norm).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap

from .features import preserved_buffers
from .model import InputLayer, ScaledLinear

__all__ = ["empirical_ntk", "jacobian_ntk", "structured_ntk", "random_output_vector", "StructureError"]

METHODS = ("auto", "structured", "jacobian")
# Entries of the (rows x T) x (n x T) position Gram blocks of a layer that sees T > 1 rows per probe.
_BLOCK_ELEMENTS = 1 << 24


class StructureError(ValueError):
    """The structured route cannot split this model by probe; the Jacobian route still can."""


def random_output_vector(num_outputs: int, seed: int = 0, dtype: torch.dtype = torch.float64,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """The unit vector v of ``output="random"``: N(0, I) drawn on the CPU in float64 from ``seed``,
    normalized, then cast (the same v on every device and dtype)."""
    v = torch.randn(num_outputs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (v / v.norm()).to(dtype=dtype, device=device)


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                  output: int | str | None = None, *, method: str = "auto", seed: int = 0,
                  batch_size: int = 32) -> torch.Tensor:
    """Empirical NTK matrix (n1, n2) of one scalar output of ``model`` at its current parameters.

    Args:
        model: any module mapping a batch (b, ...) to (b,) or (b, ...) outputs (flattened per example).
        x1, x2: inputs (n1, ...) and (n2, ...), float or integer token ids; ``x2=None`` means x1
            (the result is then exactly symmetric).
        output: an output index k, ``"random"`` (v . f(x) with v = :func:`random_output_vector`
            of ``seed``), or None, which requires a single output.
        method: ``"auto"`` (structured, falling back to the Jacobian route with a warning when
            the model cannot be split by layer), ``"structured"`` or ``"jacobian"``.
        seed: seeds v for ``output="random"``.
        batch_size: examples per vmap batch of the Jacobian route (whole model, or one module).

    The model is evaluated in eval mode (each module's flag is restored afterwards) and with any
    in-backward SGD of ``lazydrift.train.fused_sgd`` switched off.  Returns the kernel in the
    parameters' dtype, on their device.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "jacobian":
        return jacobian_ntk(model, x1, x2, output, seed=seed, batch_size=batch_size)
    try:
        return structured_ntk(model, x1, x2, output, seed=seed, batch_size=batch_size)
    except StructureError as e:
        if method == "structured":
            raise
        warnings.warn(f"empirical_ntk: {e}; using the Jacobian route (memory about n x P)", stacklevel=2)
        return jacobian_ntk(model, x1, x2, output, seed=seed, batch_size=batch_size)


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Eval mode, no fused SGD and no TF32 matmuls inside the block; every module's previous state,
    every buffer (a forward may update one whatever the mode) and the TF32 switch are restored after."""
    modes = [(m, m.training) for m in model.modules()]
    fused = [(m, m.sgd_lr) for m in model.modules() if getattr(m, "sgd_lr", None) is not None]
    model.eval()
    for m, _ in fused:
        m.sgd_lr = None  # else ScaledLinear's backward would apply an SGD step to the weights
    try:
        with _no_tf32(), preserved_buffers(model):
            yield
    finally:
        for m, training in modes:
            m.training = training
        for m, lr in fused:
            m.sgd_lr = lr


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 matmuls on CUDA (the switch ``[train] tf32`` sets): the kernel is a measurement,
    and the batch-independence check's tolerance assumes float32 rounding (TF32 is ~1e-3)."""
    try:
        previous = torch.backends.cuda.matmul.allow_tf32
    except RuntimeError:  # torch's newer fp32_precision API is in use: leave the settings alone
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _trainable(module: nn.Module, recurse: bool = True) -> dict[str, torch.Tensor]:
    return {k: p for k, p in module.named_parameters(recurse=recurse) if p.requires_grad}


def _prepare_inputs(x: torch.Tensor, ref: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f"{name} must be a tensor whose first dimension indexes examples")
    if torch.is_floating_point(x):
        x = x.to(dtype=ref.dtype)
    return x.to(ref.device)


def _cotangent(out: torch.Tensor, output, seed: int) -> torch.Tensor:
    """The vector c with g(x_i) = c . f(x_i) (rows of ``out`` are examples, flattened)."""
    k = out.shape[1]
    if output is None:
        if k != 1:
            raise ValueError(f"the model has {k} outputs; pass output=<index> or output='random' to choose one")
        index = 0
    elif isinstance(output, str):
        if output != "random":
            raise ValueError(f"output must be an index, 'random' or None, got {output!r}")
        return random_output_vector(k, seed, dtype=out.dtype, device=out.device)
    elif isinstance(output, int) and not isinstance(output, bool) and -k <= output < k:
        index = output % k
    else:
        raise ValueError(f"output must be an integer in [-{k}, {k}), 'random' or None, got {output!r}")
    c = torch.zeros(k, dtype=out.dtype, device=out.device)
    c[index] = 1
    return c


# ------------------------------------------------------------------------------------------------
# The Jacobian route (reference)
# ------------------------------------------------------------------------------------------------
def jacobian_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                 output: int | str | None = None, *, seed: int = 0, batch_size: int = 32) -> torch.Tensor:
    """The reference route: per-example Jacobians of the whole model (``vmap(jacrev)``), contracted.

    Each example is evaluated alone (a batch of one).  Memory: the Jacobians of x2, about
    n2 * P floats (P = number of trainable parameters), plus one batch of x1.  With ``x2=None``
    only blocks on and above the diagonal are contracted and the result is exactly symmetric.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    params = {k: v.detach() for k, v in _trainable(model).items()}
    if not params:
        raise ValueError("the model has no trainable parameters")
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    ref = next(iter(params.values()))
    x1 = _prepare_inputs(x1, ref, "x1")
    symmetric = x2 is None
    x2 = x1 if symmetric else _prepare_inputs(x2, ref, "x2")

    with _evaluation(model):
        with torch.no_grad():
            cot = _cotangent(model(x1[:1]).reshape(1, -1), output, seed)

        def scalar_output(p, xi):
            return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).reshape(-1) @ cot

        jac = _batched(jacrev(scalar_output), in_dims=(None, 0))

        def jacobians(x):
            return [{k: v.reshape(v.shape[0], -1) for k, v in jac(params, x[i:i + batch_size]).items()}
                    for i in range(0, len(x), batch_size)]

        j2 = jacobians(x2)
        n1, n2 = len(x1), len(x2)
        out = torch.empty(n1, n2, dtype=ref.dtype, device=ref.device)
        starts2 = [i * batch_size for i in range(len(j2))]
        for bi, i0 in enumerate(range(0, n1, batch_size)):
            ja = j2[bi] if symmetric else jacobians(x1[i0:i0 + batch_size])[0]
            i1 = i0 + next(iter(ja.values())).shape[0]
            for bj, j0 in enumerate(starts2):
                if symmetric and bj < bi:
                    continue
                jb = j2[bj]
                block = sum(ja[k] @ jb[k].T for k in ja)
                if symmetric and bj == bi:  # BLAS need not round J J^T symmetrically
                    block = (block + block.T) / 2
                out[i0:i1, j0:j0 + block.shape[1]] = block
                if symmetric:
                    out[j0:j0 + block.shape[1], i0:i1] = block.T
    return out


# ------------------------------------------------------------------------------------------------
# The structured route
# ------------------------------------------------------------------------------------------------
@dataclass
class _Layer:
    """One module with trainable parameters of its own, and what a forward pass saw of it.

    ``kind``: "linear" (nn.Linear and ScaledLinear, y = m a W^T (+ b); InputLayer, y = m a W with
    W stored (in, width) and a float inputs or token ids: the same kernel), "embedding"
    (nn.Embedding) or "module" (anything else: per-example VJPs of its own parameters).
    """

    name: str
    module: nn.Module
    kind: str
    args: list = field(default_factory=list)      # per call: the inputs (detached)
    kwargs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)   # per call: the output tensor in the graph


def _display(name: str) -> str:
    return f"'{name}'" if name else "the model itself"


def _plan(model: nn.Module) -> list[_Layer]:
    """Classify every module that owns trainable parameters; refuse what cannot be split by probe."""
    layers, owners = [], {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            raise ValueError(f"module {_display(name)} ({type(module).__name__} with track_running_stats=False) "
                             "normalizes with batch statistics even in eval mode, so one probe's output depends "
                             "on the others and the per-probe NTK is not defined; use running statistics")
        own = _trainable(module, recurse=False)
        if not own:
            continue
        for p in own.values():
            owners.setdefault(id(p), []).append(name)
        if isinstance(module, (nn.Linear, ScaledLinear, InputLayer)):
            kind = "linear"
        elif isinstance(module, nn.Embedding):
            if module.max_norm is not None or module.scale_grad_by_freq:
                raise ValueError(f"nn.Embedding {_display(name)}: max_norm (renormalizes the weight in place) and "
                                 "scale_grad_by_freq (rescales the gradient by batch counts) are not supported")
            kind = "embedding"
        else:
            kind = "module"
        layers.append(_Layer(name, module, kind))
    if not layers:
        raise ValueError("the model has no trainable parameters")
    tied = [names for names in owners.values() if len(names) > 1]
    if tied:
        raise StructureError(f"a parameter is shared by modules {tied[0]} (tied weights)")
    return layers


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """(n, ...) -> (n, T, features) for float tensors, (n, T) for token ids."""
    if torch.is_floating_point(t):
        return t.reshape(n, -1, t.shape[-1])
    return t.reshape(n, -1)


def _positions(calls: list[torch.Tensor], n: int) -> torch.Tensor:
    """The rows of every call of a layer side by side: (n, T_1 + T_2 + ..., ...)."""
    rows = [_rows(t, n) for t in calls]
    return rows[0] if len(rows) == 1 else torch.cat(rows, 1)


def _position_kernel(a: torch.Tensor, d: torch.Tensor, weight_scale: float | None, bias: bool) -> torch.Tensor:
    """sum over positions t, t' of <d_t, d'_t'> (weight_scale <a_t, a'_t'> + [bias]), per probe pair.

    ``a``: (n, T, in) float, or (n, T) token ids (one-hot a); ``d``: (n, T, out) = dg/dy.
    ``weight_scale`` is m^2 (None when the weight is frozen).  Memory: blocks of
    (rows * T) x (n * T) entries.
    """
    n, positions = d.shape[0], d.shape[1]
    d_flat = d.reshape(n * positions, -1)
    a_flat = a.reshape(n * positions, -1) if torch.is_floating_point(a) else a.reshape(-1)
    out = torch.empty(n, n, dtype=d.dtype, device=d.device)
    rows = max(1, _BLOCK_ELEMENTS // (positions * positions * n))
    for i0 in range(0, n, rows):
        r0, r1 = i0 * positions, min(i0 + rows, n) * positions
        gd = d_flat[r0:r1] @ d_flat.T
        if weight_scale is None:
            block = torch.ones_like(gd) if bias else torch.zeros_like(gd)
        else:
            if torch.is_floating_point(a_flat):
                block = torch.mm(a_flat[r0:r1], a_flat.T).mul_(weight_scale)
            else:
                block = (a_flat[r0:r1, None] == a_flat[None, :]).to(gd.dtype).mul_(weight_scale)
            if bias:
                block += 1
        block.mul_(gd)
        out[i0:i0 + (r1 - r0) // positions] = block.reshape(-1, positions, n, positions).sum(dim=(1, 3))
    return out


def _layer_kernel(layer: _Layer, deltas: list[torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """This layer's share of the NTK (n x n): the sum over every call of the layer in the pass."""
    m = layer.module
    if layer.kind == "module":
        return _module_kernel(layer, deltas, n, batch_size)
    a = [layer_args[0] for layer_args in layer.args]
    if layer.kind == "embedding":
        # Rows looked up at padding_idx get no gradient: drop their dg/dy.
        d = [delta if m.padding_idx is None else delta * (ids != m.padding_idx).unsqueeze(-1)
             for ids, delta in zip(a, deltas)]
        return _position_kernel(_positions(a, n), _positions(d, n), 1.0, False)
    a_rows, d_rows = _positions(a, n), _positions(deltas, n)
    multiplier = getattr(m, "multiplier", 1.0)
    weight_scale = multiplier ** 2 if m.weight.requires_grad else None
    bias = getattr(m, "bias", None)
    return _position_kernel(a_rows, d_rows, weight_scale, bias is not None and bias.requires_grad)


def _batched(fn, in_dims):
    """``vmap(fn, in_dims)``, or the same map as a plain loop over examples for modules vmap cannot
    batch (nn.GRU/nn.LSTM's fused kernels): slower, never a different answer."""
    vectorized = vmap(fn, in_dims=in_dims)
    use_loop = False

    def loop(*args):
        n = next(a.shape[0] for a, d in zip(args, in_dims) if d == 0)
        rows = [fn(*(a[i] if d == 0 else a for a, d in zip(args, in_dims))) for i in range(n)]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def call(*args):
        nonlocal use_loop
        if not use_loop:
            try:
                return vectorized(*args)
            except RuntimeError:  # vmap's batching rule does not exist or does not fit this module
                use_loop = True
        return loop(*args)

    return call


def _module_kernel(layer: _Layer, deltas: list[torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """Per-example VJPs of one module's own parameters (the Jacobian route for that module only)."""
    module = layer.module
    params = {k: p.detach() for k, p in _trainable(module, recurse=False).items()}
    total = None
    for args, kwargs, delta in zip(layer.args, layer.kwargs, deltas):
        batched = tuple(0 if isinstance(t, torch.Tensor) else None for t in args)

        def grad_one(*example, delta_i):
            inputs = tuple(t.unsqueeze(0) if isinstance(t, torch.Tensor) else t for t in example)
            _, pullback = vjp(lambda p: functional_call(module, p, inputs, kwargs)[0], params)
            return pullback(delta_i)[0]

        per_example = _batched(lambda d_i, *ex: grad_one(*ex, delta_i=d_i), in_dims=(0,) + batched)
        chunks = []
        for i0 in range(0, n, batch_size):
            ex = tuple(t[i0:i0 + batch_size] if isinstance(t, torch.Tensor) else t for t in args)
            g = per_example(delta[i0:i0 + batch_size], *ex)
            chunks.append(torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], 1))
        jac = torch.cat(chunks)
        total = jac if total is None else total + jac  # a module called twice: gradients add
    return total @ total.T


class _Hooks:
    """Forward hooks on every planned layer: record inputs and outputs during the NTK pass,
    and check in both passes that each layer sees one leading row per probe.

    Recorded tensors are not copied: :meth:`modified` tells whether any was changed in place
    later in the pass (ReLU(inplace=True) on a layer's output, say), and the pass is then run
    again with ``copy=True``, which records copies of the inputs and hands a copy of each output
    downstream, so the tensor whose gradient is asked for is the layer's own output.
    """

    def __init__(self, layers: list[_Layer]):
        self.layers, self.batch, self.capture, self.copy = layers, 0, False, False
        self.versions: list[tuple[torch.Tensor, int]] = []
        self.handles = [layer.module.register_forward_hook(self._hook(layer), with_kwargs=True)
                        for layer in layers]

    def _hook(self, layer: _Layer):
        def hook(module, args, kwargs, output):
            if not self.batch:
                return None  # inert (e.g. inside a module's own VJP)
            tensors = [t for t in args if isinstance(t, torch.Tensor)]
            if not isinstance(output, torch.Tensor):
                raise StructureError(f"module {_display(layer.name)} returns {type(output).__name__}, not one tensor")
            bad = [tuple(t.shape) for t in tensors + [output] if t.dim() == 0 or t.shape[0] != self.batch]
            if bad or not tensors or any(isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == self.batch
                                         for v in kwargs.values()):
                raise StructureError(f"module {_display(layer.name)} sees tensors of shapes {bad or 'in kwargs'} "
                                     f"in a pass over {self.batch} examples: its rows cannot be assigned to probes")
            if layer.kind != "module" and torch.is_floating_point(args[0]) and args[0].dim() < 2:
                raise StructureError(f"module {_display(layer.name)} gets a 1-d float input: no example axis")
            if not self.capture:
                return None
            if self.copy:
                layer.args.append(tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in args))
            else:
                layer.args.append(tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args))
                self.versions += [(t, t._version) for t in tensors + [output]]
            layer.kwargs.append(dict(kwargs))
            layer.outputs.append(output)
            return output.clone() if self.copy else None
        return hook

    def modified(self) -> bool:
        """Whether a recorded tensor was changed in place after its layer ran."""
        return any(t._version != v for t, v in self.versions)

    def clear(self) -> None:
        self.versions.clear()
        for layer in self.layers:
            layer.args.clear(), layer.kwargs.clear(), layer.outputs.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _check_batch_independence(model: nn.Module, x: torch.Tensor, out: torch.Tensor, hooks: _Hooks) -> None:
    """The first k < n probes alone must give the same outputs as in the full pass.

    Different batch sizes may take different GEMM blockings, so the rows agree only up to
    rounding: a dot product of length K has relative error ~ sqrt(K) eps, a few layers deep that
    is < 1e-4 in float32 for K <= 1e5, and 10 sqrt(eps) (3.5e-3 in float32, 1.5e-7 in float64)
    leaves a margin; mixing probes (batch statistics, attention across the batch) changes
    outputs at O(1).
    """
    n = x.shape[0]
    if n < 2 or not torch.isfinite(out).all():
        return  # a diverged network (inf or NaN outputs) has a non-finite kernel, not a batch-mixing one
    k = min(2, n - 1)
    hooks.batch, hooks.capture = k, False
    try:
        with torch.no_grad(), preserved_buffers(model):  # it sees the buffers the full pass saw
            sub = model(x[:k]).reshape(k, -1)
    except StructureError:
        raise
    except Exception as e:  # e.g. batch statistics of a single example
        raise ValueError(f"the model fails on {k} of the {n} probes alone ({type(e).__name__}: {e}); "
                         "the per-probe NTK needs outputs that do not depend on the rest of the batch") from e
    full = out[:k].detach()
    err = ((sub - full).norm() / full.norm().clamp_min(torch.finfo(full.dtype).tiny)).item()
    tol = 10 * math.sqrt(torch.finfo(full.dtype).eps)
    if not err <= tol:
        raise ValueError(f"the model's outputs depend on the other probes in the batch (relative change {err:.3g} "
                         f"when {k} probes are passed alone; rounding allows {tol:.2g}): the per-probe NTK is not "
                         "defined; remove batch-mixing modules or evaluate each probe alone with method='jacobian'")


def structured_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                   output: int | str | None = None, *, seed: int = 0, batch_size: int = 32) -> torch.Tensor:
    """The structured route (see the module docstring): one forward, one backward, n x n Grams per layer.

    Raises :class:`StructureError` when the model cannot be split by probe (tied weights, rows
    that are not one per probe, modules returning several tensors) and ValueError when its
    outputs mix probes.  With ``x2`` the kernel of the concatenated inputs is computed and its
    (x1, x2) block returned.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    layers = _plan(model)
    ref = next(p for layer in layers for p in _trainable(layer.module, recurse=False).values())
    x1 = _prepare_inputs(x1, ref, "x1")
    if x2 is None:
        x = x1
    else:
        x2 = _prepare_inputs(x2, ref, "x2")
        if x1.dtype != x2.dtype or x1.shape[1:] != x2.shape[1:]:
            raise ValueError(f"x1 and x2 must be alike: got {x1.dtype} {tuple(x1.shape)} and {x2.dtype} {tuple(x2.shape)}")
        x = torch.cat([x1, x2])
    n = x.shape[0]

    hooks = _Hooks(layers)
    try:
        with _evaluation(model), torch.enable_grad():
            hooks.batch, hooks.capture = n, True
            with preserved_buffers(model):  # every pass starts from the same buffers
                out = model(x).reshape(n, -1)
            if hooks.modified():
                hooks.clear()
                hooks.copy = True
                with preserved_buffers(model):
                    out = model(x).reshape(n, -1)
            hooks.capture = False
            _check_batch_independence(model, x, out, hooks)
            hooks.batch = 0  # inert from here on: _module_kernel calls modules again
            cot = _cotangent(out, output, seed)
            calls = [(layer, y) for layer in layers for y in layer.outputs]
            wanted = [y for _, y in calls if y.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_outputs=cot.expand(n, -1), allow_unused=True)
                         if wanted else ())
            deltas = {id(layer): [] for layer in layers}
            for layer, y in calls:  # a layer off the path to the output (or frozen upstream) gets dg/dy = 0
                d = next(grads) if y.requires_grad else None
                deltas[id(layer)].append(torch.zeros_like(y) if d is None else d.detach())
            theta = torch.zeros(n, n, dtype=torch.float64, device=ref.device)
            for layer in layers:
                if layer.outputs:
                    theta += _layer_kernel(layer, deltas[id(layer)], n, batch_size).to(torch.float64)
    finally:
        hooks.remove()
        hooks.clear()
    theta = theta.to(ref.dtype)
    if x2 is None:
        return (theta + theta.T) / 2  # exactly symmetric: fl(a + b) = fl(b + a)
    return theta[:len(x1), len(x1):].contiguous()
