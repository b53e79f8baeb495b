"""The empirical NTK of a finite network (Definition 2), through torch.func.

Theta(x, x') = sum_p df(x)/dtheta_p df(x')/dtheta_p over every trainable parameter, at the
model's current parameters.  Per-example Jacobians come from ``vmap(jacrev(f))`` in batches and
are contracted parameter by parameter, so no (n, P) matrix is ever built in one piece.  As the
hidden widths of an ``NTKMLP`` grow this tends to ``lazydrift.kernels.relu_ntk(x, z, depth + 1)``
(Theorem 1; see tests/test_empirical.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

__all__ = ["empirical_ntk"]


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                  output: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """Empirical NTK matrix (n1, n2) of one scalar output of ``model``.

    Args:
        model: any module mapping a batch (b, ...) to (b,) or (b, k) outputs.
        x1, x2: inputs (n1, ...) and (n2, ...); ``x2=None`` means x1 (the result is then
            exactly symmetric and only blocks on and above the diagonal are contracted).
        output: which output column to differentiate; None requires a single output.
        batch_size: examples per Jacobian batch.  Memory: the Jacobians of x2 are kept, about
            n2 * P floats (P = number of parameters), plus one batch of x1.

    Returns the kernel in the parameters' dtype, on their device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    ref = next(iter(params.values()))

    def scalar_output(p, xi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),)).reshape(-1)
        if output is None:
            if out.numel() != 1:
                raise ValueError(f"the model has {out.numel()} outputs; pass output=<index> to choose one")
            return out[0]
        return out[output]

    jac = vmap(jacrev(scalar_output), in_dims=(None, 0))

    def jacobians(x):
        if torch.is_floating_point(x):
            x = x.to(dtype=ref.dtype)
        x = x.to(ref.device)
        return [{k: v.reshape(v.shape[0], -1) for k, v in jac(params, x[i:i + batch_size]).items()}
                for i in range(0, len(x), batch_size)]

    def contract(ja, jb):
        return sum(ja[k] @ jb[k].T for k in ja)

    symmetric = x2 is None
    j2 = jacobians(x1 if symmetric else x2)
    n1, n2 = len(x1), (len(x1) if symmetric else len(x2))
    out = torch.empty(n1, n2, dtype=ref.dtype, device=ref.device)
    starts2 = [i * batch_size for i in range(len(j2))]
    for bi, i0 in enumerate(range(0, n1, batch_size)):
        ja = j2[bi] if symmetric else jacobians(x1[i0:i0 + batch_size])[0]
        i1 = i0 + next(iter(ja.values())).shape[0]
        for bj, j0 in enumerate(starts2):
            if symmetric and bj < bi:
                continue
            jb = j2[bj]
            block = contract(ja, jb)
            if symmetric and bj == bi:  # BLAS need not round J J^T symmetrically
                block = (block + block.T) / 2
            out[i0:i1, j0:j0 + block.shape[1]] = block
            if symmetric:
                out[j0:j0 + block.shape[1], i0:i1] = block.T
    return out
