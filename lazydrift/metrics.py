"""Drift and Gram measures: pure functions of feature matrices.

Rows of ``h`` and ``h0`` are probes x, columns are the neurons i of one layer; ``h0`` holds the
features at initialization and ``h`` at training step t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def drift_norms(h: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per probe: the three rows of Table 1.

    l2    = ||h_t(x) - h_0(x)||_2
    linf  = max_i |h_{t,i}(x) - h_{0,i}(x)|
    ratio = l2 / linf  (NaN where h_t(x) = h_0(x), e.g. at t = 0)

    The ratio lies in [1, sqrt(width)]: 1 when one neuron carries all the change, sqrt(width)
    when every neuron moves by the same amount.
    """
    return drift_stats(h, h0)[:3]


def neuron_deviation(h: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron i: mean and max over probes of |h_{t,i}(x) - h_{0,i}(x)|."""
    return drift_stats(h, h0)[3:]


def drift_stats(h: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`drift_norms` and :func:`neuron_deviation` from one pass over |h - h_0|.

    Returns (l2, linf, ratio) per probe and (mean, max) over probes per neuron.
    """
    dev = (h - h0).abs_()
    l2 = torch.linalg.vector_norm(dev, ord=2, dim=1)
    linf = dev.amax(dim=1)
    ratio = torch.where(linf > 0, l2 / linf, torch.full_like(l2, float("nan")))
    return l2, linf, ratio, dev.mean(dim=0), dev.amax(dim=0)


def coord_abs_mean(h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Per probe: mean_i |h_{t,i}(x)|, the size of a typical coordinate of h_t.

    The statistic of microsoft/mup's coordinate check (its ``coord_check``): plotted against
    width it stays flat when a parameterization keeps activations O(1) per coordinate and
    grows or vanishes when it does not.  A ``stats=`` entry of :class:`DriftRecorder`
    (``stats={"coord_abs_mean": coord_abs_mean}``); ``h0`` is unused.
    """
    return h.abs().mean(dim=1)


def all_pairs(n_probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) of every unordered probe pair with i < j."""
    i, j = np.triu_indices(n_probes, k=1)
    return i.astype(np.int64), j.astype(np.int64)


def gram_terms(h0: torch.Tensor, h: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> dict[str, np.ndarray]:
    """Inner products <h_t(x_i), h_t(x_j)> split as in the proof of Proposition 4, expansion (1).

    <h_t(x), h_t(x')> = <h_0(x), h_0(x')>                       (inner0)
                      + <h_0(x), D(x')> + <D(x), h_0(x')>        (cross)
                      + <D(x), D(x')>                            (quadratic)
    with D = h_t - h_0; ``inner`` is computed directly from h_t, so the identity
    inner = inner0 + cross + quadratic is a check, not a definition.  Also returns the cosine
    between h_t(x_i) and h_t(x_j).  Computed in float64 through Gram matrices of the probes
    involved, so that small changes of large inner products keep their digits.
    """
    rows, inverse = torch.unique(torch.cat([i, j]), return_inverse=True)
    a, b = inverse[: len(i)], inverse[len(i):]
    h0r = h0[rows].double()
    htr = h[rows].double()
    delta = htr - h0r
    gram0 = h0r @ h0r.T
    cross = h0r @ delta.T  # cross[p, q] = <h_0(x_p), D(x_q)>
    quad = delta @ delta.T
    gram = htr @ htr.T
    norms = gram.diagonal().sqrt()
    out = {"inner": gram[a, b], "cosine": gram[a, b] / (norms[a] * norms[b]), "inner0": gram0[a, b],
           "cross": cross[a, b] + cross[b, a], "quadratic": quad[a, b]}
    return {k: v.cpu().numpy() for k, v in out.items()}


def pair_change_stats(frame: pd.DataFrame, value: str = "inner") -> pd.DataFrame:
    """Non-constancy of each pair's trajectory G_t over the recorded steps.

    ``frame`` has columns step, layer, i, j and ``value``.  Per (layer, i, j):
    total_variation = sum_k |G_{t_{k+1}} - G_{t_k}|, max_change = max_t |G_t - G_0|,
    rel_change = |G_T - G_0| / |G_0| (T the last recorded step).
    """
    f = frame.sort_values(["layer", "i", "j", "step"])
    g = f.groupby(["layer", "i", "j"], sort=False)[value]
    first, last = g.transform("first"), g.transform("last")
    f = f.assign(_abs_step=g.diff().abs(), _dev=(f[value] - first).abs(),
                 _rel=(last - first).abs() / first.abs())
    out = f.groupby(["layer", "i", "j"], sort=False).agg(
        total_variation=("_abs_step", "sum"), max_change=("_dev", "max"), rel_change=("_rel", "last"))
    return out.reset_index()
