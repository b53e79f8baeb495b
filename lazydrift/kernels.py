"""Closed-form infinite-width kernels of a fully-connected ReLU network (paper sections 4 and 6).

Notation follows the paper.  A network of depth ``L`` has ``L`` weight layers (``L - 1`` hidden
ReLU layers), so ``NTKMLP(hidden_layers=d)`` has ``L = d + 1`` (its ``depth``).  For inputs x, x' in R^{n0}:

* Definition 1:  Sigma^(1)(x, x') = x^T x' / n0 and Sigma^(l+1) = E[relu(u) relu(u')],
  Sigma-dot^(l+1) = E[relu'(u) relu'(u')] with (u, u') ~ N(0, Sigma^(l)).
* Definition 3:  rho^(l) = Sigma^(l)(x, x') / sqrt(Sigma^(l)(x, x) Sigma^(l)(x', x')).
* Proposition 2 (Cho and Saul 2009, Arora et al. 2019): rho^(l+1) = h(rho^(l)),
  Sigma-dot^(l+1) = h'(rho^(l)) / 2, with h from Definition 5; and Sigma^(l+1)(x, x) =
  Sigma^(l)(x, x) / 2, so that on the sphere Sigma^(L)(x, x') = rho^(L) / (n0 2^(L-1)).
* Theorem 1 (Jacot et al. 2018): Theta^(1) = Sigma^(1),
  Theta^(l+1) = Sigma-dot^(l+1) Theta^(l) + Sigma^(l+1).
* Definition 4: Theta-bar^(L) = n0 2^(L-1) Theta^(L) / L, equal to 1 on the diagonal.

With ``T^(l) = l Theta-bar^(l)`` Theorem 1 becomes ``T^(1) = rho^(1)``,
``T^(l+1) = h'(rho^(l)) T^(l) + h(rho^(l))`` (Proposition 5 times ``l + 1``), and for a bias-free
network with weight variance sigma_w^2 and first-layer scale c (c = 1/n0 in Definition 1)

    Theta^(L)(x, x') = |x| |x'| c sigma_w^2 (sigma_w^2 / 2)^(L-1) T^(L)(x/|x|, x'/|x'|),
    Sigma^(L)(x, x') = |x| |x'| c sigma_w^2 (sigma_w^2 / 2)^(L-1) rho^(L)(x/|x|, x'/|x'|).

So a bias-free kernel is one function of the cosine per depth, and :func:`relu_kernels` has two
routes to it.  The default (``method="table"``) evaluates T^(L) and rho^(L) from tables of the
angle theta = arccos(rho^(1)) built once per depth in extended precision
(:mod:`lazydrift.kernel_table`): per entry one arccos, exact bit operations to find the piece,
and 8 gathers and 7 multiply-adds per function, whatever L is, so the kernel costs about what the
Gram matrix X X^T it starts from costs (measured below).  The layer recursion on the cosines
(``method="sphere"``: per layer and entry one arccos, one sqrt and four multiply-adds) is kept as
the reference it was checked against.  With biases (beta > 0) homogeneity fails and Theorem 1 is
run literally with per-point variances (``method="theorem1"``, what "auto" picks then).

Correspondence with neural-tangents (``tests/test_kernels.py``, ``benchmarks/bench_kernels.py``): the
network ``stax.serial(*[Dense(w, W_std=sqrt(sigma_w2), b_std=beta, parameterization="ntk"),
Relu()] * (L - 1), Dense(1, W_std=sqrt(sigma_w2), b_std=beta, parameterization="ntk"))`` has
``kernel_fn(x, z, "ntk") == relu_ntk(x, z, depth=L)`` and ``"nngp" == relu_nngp(x, z, depth=L)``:
L stax Dense layers is the paper's depth L, and stax's ntk already includes the readout layer's
own term Sigma^(L) (the last ``+ Sigma^(l+1)`` of Theorem 1), so no index shift is needed.  (b_std
None and b_std=0 give the same kernel.)  Measured with the layer recursion (the table path agrees
with it to 5e-15 at L = 30): off the diagonal the two agree to ~1e-15; on the diagonal of K(X, X)
neural-tangents is off by up to ~1e-7 at L = 30 because its cosine x.x/|x|^2 rounds to 1 - 1e-16
and arccos amplifies that (see Precision); here the diagonal's angle is exactly 0, and a 50-digit
evaluation agrees with this module to ~1e-15.

Precision.  Everything is float64 by default.  rho^(l) -> 1 with depth (Lemma 1) and the kernels
are not smooth in rho at +-1 (arccos(1 - e) ~ sqrt(2 e)), so a rounding error d of a cosine
near 1 becomes an error of about d / sqrt(2 (1 - rho)) in the angle.  The table path computes in
the angle throughout and is within 1e-15 of a 50-digit evaluation of Theorem 1 given the same
cosine, for every L up to 1000 and cosines within one ulp of +-1 (worst measured: 1.0e-15,
``tests/test_kernels.py`` and :mod:`lazydrift.kernel_table`); the recursion on cosines re-amplifies its own rounding every layer
(7e-13 off at L = 300 on random inputs, about 1e-11 at L = 1000).  What remains is the cosine
itself: x.z / (|x||z|) from the GEMM carries a few ulps to ~n0 ulps (20 ulps measured for
colinear 784-dimensional inputs; the amount depends on the CPU's summation order).  Pairs within
NEAR_PARALLEL = 2^-20 of +-1 (2^-10 in float32) therefore get their angle from the unit vectors' distance,
2 arcsin(|x/|x| -+ z/|z|| / 2), accurate to a few ulps of the angle: duplicates (x against itself
or 2x, with or without z) get exactly 0, antipodes exactly pi, colinear inputs <= (n0 + 6) ulps,
so Proposition 1 holds to ~1e-14 on any CPU.  We do not snap cosines to +-1: their angle can be
computed instead, and snapping near-duplicates that are not colinear would be a wrong number.
Elsewhere a cosine's rounding passes into the kernel as it would for any method.  float32
(``dtype``) computes the same way with float32 tables, ~1e-7 relative.  Inputs with NaN or
infinite values are rejected; cosines are clipped into [-1, 1].

Large matrices are computed in square tiles (``block_size``, 256 on CPU): each tile's GEMM, angles
and table lookups stay in cache, with per-thread scratch buffers reused from tile to tile.  With
``z is None`` only the tiles on and above the diagonal are computed and mirrored, so the GEMM
does half the Gram matrix's work and memory is the output plus a few tiles per thread.  On CPU
the tiles are shared among ``num_threads`` threads that each run single-threaded torch ops
(robust on a shared machine).  Measured on 2 shared cores (``benchmarks/bench_kernels.py``, side
by side with ``X @ X.T``): see the README's "Performance and benchmarks".

Theorem 2's rate.  For small angles one layer maps theta -> theta - theta^2/(3 pi) -
theta^3/(18 pi^2) + O(theta^4) (from 1 - cos theta' = (2 pi sin^2(theta/2) - sin theta +
theta cos theta) / pi), so 1/theta_{l+1} = 1/theta_l + 1/(3 pi) + theta_l/(6 pi^2) + O(theta_l^2)
and 1/theta_L = L/(3 pi) + log(L)/(2 pi) + C(rho^(1)) + o(1).  Write T^(L) = L/4 + D_L in
T^(l+1) = (1 - theta_l/pi) T^(l) + cos theta_{l+1}: D_{l+1} = (1 - theta_l/pi) D_l -
l theta_l/(4 pi) + 3/4 - theta_{l+1}^2/2 + ..., and l theta_l/(4 pi) = 3/4 - (9/8) log(l)/l +
O(1/l), so D_{l+1} = (1 - 3/l) D_l + (9/8) log(l)/l + O(1/l).  D_l = A log l + B solves it when
3 A = 9/8, A = 3/8 (the homogeneous solutions decay like l^-3), hence for every rho^(1) in (-1, 1)

    L (Theta-bar^(L) - 1/4) = D_L = (3/8) log L + B(rho^(1)) + o(1),

so |Theta-bar^(L) - 1/4| = Theta(log L / L), not O(1/L) as Theorem 2 states.  The paper's proof
(section 6.2) has the log in it: V_{L+1} - V_2 = L sqrt(2)/(3 pi) + sum_k O(e_k^(1/2)) with
e_k^(1/2) ~ 3 pi / (sqrt(2) k), a Theta(log L) sum that Stolz-Cesaro only shows to be o(L).
Carried into h'(rho^(L)) = 1 - 3/L + Theta(log L / L^2), it makes per-layer terms of order
log(L)/L^2 in equation (2), written o(1/L) there; summed with the weights prod (1 - 4/k') ~
(k/L)^4 they add up to Theta(log L / L), the order of the claimed rate and larger.  Tested against
Proposition 5 in 50-digit arithmetic up to L = 1e5: the fitted coefficient of log L (with 1/L
corrections) is 0.37498 (``tests/test_kernels.py``).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from lazydrift import kernel_table

__all__ = [
    "h", "h_prime", "correlations", "feature_cosine", "normalized_kernel_recurrence",
    "relu_kernels", "relu_ntk", "relu_nngp", "normalized_kernel", "first_layer_scale", "input_fan_in", "INPUT_SCALES",
    "eta_recurrence", "max_offdiag_cosine", "depth_rule",
]

_INV_PI = 1.0 / math.pi
# Tile edges: 256^2 float64 = 0.5 MiB per buffer on CPU, so a tile's buffers stay in cache while the
# GEMM of a 256-row panel keeps its arithmetic intensity (thin row blocks of a 20000-column matrix
# re-read all of z per block and ran at memory speed); 4096^2 on CUDA.
_CPU_TILE = 256
_CUDA_TILE = 4096
# Pairs whose cosine is within this of +-1 get their angle from |x -+ z| (see _angles): far above
# what a GEMM rounds the cosine of colinear inputs to (~n0 ulps: 1e-13 in float64, 6e-5 in float32
# for n0 = 1000), far below the cosines of distinct data.
NEAR_PARALLEL = {torch.float64: 2.0 ** -20, torch.float32: 2.0 ** -10}


# ------------------------------------------------------------------------------------------------
# Scalar maps (elementwise on numpy arrays, Python floats or torch tensors)
# ------------------------------------------------------------------------------------------------
def _clip(rho):
    if isinstance(rho, torch.Tensor):
        return rho.clamp(-1.0, 1.0), torch
    return np.clip(np.asarray(rho, dtype=np.float64), -1.0, 1.0), np


def _ret(value, like):
    """Python floats in, Python float out; arrays and tensors keep their type."""
    if isinstance(like, (int, float)) and not isinstance(like, bool):
        return float(value)
    return value


def h(rho):
    """Definition 5: h(z) = z arcsin(z) / pi + sqrt(1 - z^2) / pi + z / 2, so rho^(l+1) = h(rho^(l)).

    Equal to 2 E[relu(u) relu(u')] for unit-variance (u, u') with correlation z; h(0) = 1/pi,
    h(1) = 1, h(-1) = 0.  Input is clipped into [-1, 1].
    """
    r, lib = _clip(rho)
    return _ret((r * lib.arcsin(r) + lib.sqrt((1.0 - r) * (1.0 + r))) * _INV_PI + 0.5 * r, rho)


def h_prime(rho):
    """Derivative of h: h'(z) = 1/2 + arcsin(z) / pi = 2 Sigma-dot^(l+1) (Proposition 2)."""
    r, lib = _clip(rho)
    return _ret(0.5 + lib.arcsin(r) * _INV_PI, rho)


def correlations(rho1, depth: int):
    """rho^(1), ..., rho^(depth) stacked on a new first axis: rho^(l+1) = h(rho^(l)) (Proposition 2)."""
    _check_depth(depth)
    r, lib = _clip(rho1)
    out = [r]
    for _ in range(depth - 1):
        out.append(h(out[-1]))
    return lib.stack(out)


def feature_cosine(rho1, layer: int, post_activation: bool = True):
    """Predicted cosine between the hidden features of two inputs with input cosine ``rho1``.

    ``layer`` is the 0-based hidden layer index of ``NTKMLP`` (module ``hidden.{layer}``).  In the
    infinite-width limit the pre-activations of hidden layer ``k`` have correlation
    rho^(k+1) = h^k(rho^(1)), and the post-ReLU outputs have (uncentred) cosine
    E[relu(u) relu(u')] / E[relu(u)^2] = h(rho^(k+1)) = rho^(k+2) = h^(k+1)(rho^(1)).
    ``post_activation=True`` (the default) returns the latter, what the output of ``hidden.k``
    shows; ``False`` returns the pre-activation correlation h^k(rho^(1)).  One-hot inputs have
    rho^(1) = 0 (footnote 5), so their post-ReLU features at ``hidden.0`` have cosine 1/pi.

    Vectorized over ``rho1`` (numpy array, float or tensor).
    """
    if not isinstance(layer, (int, np.integer)) or layer < 0:
        raise ValueError(f"layer must be a non-negative integer (0-based hidden layer), got {layer!r}")
    r, _ = _clip(rho1)
    for _ in range(int(layer) + (1 if post_activation else 0)):
        r = h(r)
    return _ret(r, rho1)


def normalized_kernel_recurrence(rho1, depth: int, all_depths: bool = False):
    """Theta-bar^(depth) from the input cosines through Proposition 5 (elementwise).

    Theta-bar^(1) = rho^(1) and
    Theta-bar^(L+1) = L/(L+1) h'(rho^(L)) Theta-bar^(L) + h(rho^(L)) / (L+1).
    An independent route to :func:`normalized_kernel` (which runs Theorem 1 on Gram blocks).
    With ``all_depths=True`` returns Theta-bar^(1..depth) stacked on a new first axis.

    Off the diagonal the values tend to 1/4 (Theorem 2), but not at the stated O(1/L) rate:
    L (Theta-bar^(L) - 1/4) = (3/8) log L + B(rho^(1)) + o(1) (derivation in the module
    docstring), i.e. the distance is Theta(log L / L).  In float64 this recurrence in rho loses
    digits as rho^(L) -> 1 (~1e-9 relative by L ~ 3000); beyond L ~ 1e4 use
    :func:`lazydrift.kernel_table.angle_recursion`, which works in the angle.
    """
    _check_depth(depth)
    r, lib = _clip(rho1)
    theta = r
    out = [theta]
    for L in range(1, depth):
        theta = (L * h_prime(r) * theta + h(r)) / (L + 1)
        r = h(r)
        out.append(theta)
    if all_depths:
        return lib.stack(out)
    return _ret(theta, rho1)


def eta_recurrence(rho1, depth: int, all_depths: bool = False):
    """Section 6.4's eta kernel: eta^(1) = x^T x', eta^(L+1) = g(eta^(L)), g(z) = (1 + exp(-z))^-2."""
    _check_depth(depth)
    e = np.asarray(rho1, dtype=np.float64)
    out = [e]
    for _ in range(depth - 1):
        e = (1.0 + np.exp(-e)) ** -2
        out.append(e)
    return np.stack(out) if all_depths else e


def max_offdiag_cosine(x: torch.Tensor, block: int = 2048) -> float:
    """max_{i != j} x_i^T x_j for unit rows, in row blocks (memory O(block * n))."""
    best = -1.0
    for i0 in range(0, len(x), block):
        g = x[i0:i0 + block] @ x.T
        idx = torch.arange(g.shape[0])
        g[idx, idx + i0] = -2.0
        best = max(best, float(g.max()))
    return min(best, 1.0)


def depth_rule(max_cos: float) -> float:
    """Section 6.4's depth L = max_{i != j} 1 / sqrt(1 - h(x_i^T x_j)) (h is increasing)."""
    return 1.0 / math.sqrt(1.0 - h(max_cos))


# ------------------------------------------------------------------------------------------------
# Kernel matrices
# ------------------------------------------------------------------------------------------------
INPUT_SCALES = ("fan_in", "embedding")


def input_fan_in(input_scale: str, n0: int) -> int:
    """The fan-in d by which the first layer is scaled: n0 for ``"fan_in"`` (Definition 1's
    Sigma^(1) = x^T x' / n0) and 1 for ``"embedding"`` (one-hot token ids read as rows of an
    embedding table: O(1) pre-activations).  The one place these names get their meaning: the
    network (:func:`lazydrift.model.layer_scalings`) and its kernel (:func:`first_layer_scale`)
    both use it."""
    if input_scale == "fan_in":
        return n0
    if input_scale == "embedding":
        return 1
    raise ValueError(f"input_scale must be one of {', '.join(INPUT_SCALES)}, got {input_scale!r}")


def first_layer_scale(input_scale: str | float, n0: int) -> float:
    """Covariance scale c of the first layer, Sigma^(1) = sigma_w^2 c x^T x' + beta^2.

    ``"fan_in"``: c = 1/n0 (Definition 1, NTKMLP's default); ``"embedding"``: c = 1 (one-hot
    inputs with NTKMLP(input_scale="embedding")); see :func:`input_fan_in`.  A number is used as c.
    """
    if isinstance(input_scale, str):
        return 1.0 / input_fan_in(input_scale, n0)
    c = float(input_scale)
    if not c > 0:
        raise ValueError(f"input_scale must be positive, got {input_scale!r}")
    return c


def relu_kernels(x, z=None, depth: int | Sequence[int] = 2, *, sigma_w2: float = 1.0, beta: float = 0.0,
                 input_scale: str | float = "fan_in", want: Sequence[str] = ("nngp", "ntk"),
                 method: str = "auto", dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, block_size: int | None = None,
                 num_threads: int | None = None) -> dict:
    """Sigma^(L)(x, z) and/or Theta_inf^(L)(x, z) for a ReLU network of depth L (Theorem 1).

    Args:
        x: (n, n0) inputs (tensor or array); z: (m, n0) inputs, or None for z = x (the result is
            then exactly symmetric and only the tiles on and above the diagonal are computed).
        depth: the paper's L, the number of weight layers (>= 1), or a list of depths: each
            result then has a leading axis, one (n, m) matrix per depth in the given order, at
            about the cost of one table evaluation per depth.
        sigma_w2, beta: weight variance and bias standard deviation (Jacot et al.'s sigma_w^2
            and beta): Sigma^(1) = sigma_w2 c x^T z + beta^2, Sigma^(l+1) = sigma_w2 E[relu relu]
            + beta^2, Sigma-dot^(l+1) = sigma_w2 E[relu' relu'].  Defaults give the paper's kernel.
        input_scale: the first layer's covariance scale c, see :func:`first_layer_scale`.
        want: which of "nngp" (Sigma^(L)), "ntk" (Theta_inf^(L)), "ntk_bar" (Definition 4's
            Theta-bar^(L)) and "rho" (Definition 3's rho^(L), the NNGP with unit diagonal) to
            return; the last two are of the inputs projected on the sphere, bias-free only.
        method: "table" (the tabulated functions of the angle, :mod:`lazydrift.kernel_table`;
            beta must be 0), "sphere" (the layer recursion on the cosines, beta 0; the reference
            the table was checked against), "theorem1" (the literal recursion with per-point
            variances, any beta) or "auto" (table when beta == 0, else theorem1).
        dtype: float64 by default (see the module docstring for why).
        device: where to compute (default: x's device); CPU and CUDA both work.
        block_size: edge of the square tiles the matrix is computed in (default 256 on CPU,
            where a tile's buffers stay in cache; 4096 on CUDA).
        num_threads: CPU threads, each carrying whole tiles with single-threaded torch ops
            (default ``torch.get_num_threads()``; torch's own thread count is set to 1 during
            the call and restored after it).

    Returns a dict {name: (n, m) tensor}, or {name: (len(depth), n, m) tensor} for a list.
    """
    depths, many = _depths(depth)
    want = tuple(want)
    bad = set(want) - {"nngp", "ntk", "ntk_bar", "rho"}
    if bad or not want:
        raise ValueError(f"want must name some of 'nngp', 'ntk', 'ntk_bar', 'rho', got {want!r}")
    if method == "auto":
        method = "table" if beta == 0 else "theorem1"
    if method not in ("table", "sphere", "theorem1"):
        raise ValueError(f"method must be 'auto', 'table', 'sphere' or 'theorem1', got {method!r}")
    if method != "theorem1" and beta != 0:
        raise ValueError(f"method={method!r} needs beta == 0 (biases break homogeneity); use 'theorem1'")
    if method == "theorem1" and {"ntk_bar", "rho"} & set(want):
        raise ValueError("'ntk_bar' and 'rho' are the bias-free kernels of the directions; use method='table'")

    x = _as_matrix(x, dtype, device, "x")
    symmetric = z is None
    z = x if symmetric else _as_matrix(z, dtype, x.device, "z")
    if z.shape[1] != x.shape[1]:
        raise ValueError(f"x and z must have the same number of columns, got {x.shape[1]} and {z.shape[1]}")
    n, m, n0 = x.shape[0], z.shape[0], x.shape[1]
    c = first_layer_scale(input_scale, n0)
    if block_size is None:
        block_size = _CUDA_TILE if x.device.type == "cuda" else _CPU_TILE
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    tile = int(block_size)

    out = {k: torch.empty(len(depths), n, m, dtype=dtype, device=x.device) for k in want}
    x_norm, z_norm = x.norm(dim=1), z.norm(dim=1)
    _check_finite(x_norm, "x")
    _check_finite(z_norm, "z")
    quantities = tuple(q for q, names in (("ntk", {"ntk", "ntk_bar"}), ("nngp", {"nngp", "rho"})) if names & set(want))
    if method != "theorem1":
        # Unit directions; zero rows stay zero (their kernel rows are 0 through the norm factor).
        xu = x / x_norm.clamp_min(torch.finfo(dtype).tiny)[:, None]
        zu = xu if symmetric else z / z_norm.clamp_min(torch.finfo(dtype).tiny)[:, None]
        # Theta^(L) = |x||z| c sigma_w^2 (sigma_w^2/2)^(L-1) T^(L), Sigma^(L) the same with
        # rho^(L): the factor is the outer product of the scaled norms, which is exactly symmetric
        root = {L: math.sqrt(c * sigma_w2 * (sigma_w2 / 2.0) ** (L - 1)) for L in depths}

    scratch = _Scratch(x.device)

    def write(k: str, d: int, i0: int, i1: int, j0: int, j1: int, value: torch.Tensor) -> None:
        """Entry (i0:i1, j0:j1) of result ``k`` at depth index ``d`` (and its mirror)."""
        dst = out[k][d, i0:i1, j0:j1]
        L = depths[d]
        if method == "theorem1":
            dst.copy_(value)
        elif k == "ntk_bar":
            torch.div(value, L, out=dst)
        elif k == "rho":
            dst.copy_(value)
        else:
            torch.outer(x_norm[i0:i1] * root[L], z_norm[j0:j1] * root[L], out=dst)
            dst.mul_(value)
        if symmetric and i0 != j0:   # tiles write disjoint regions: theirs and the mirror
            out[k][d, j0:j1, i0:i1].copy_(dst.T)

    def one_tile(i0: int, j0: int) -> None:
        i1, j1 = min(i0 + tile, n), min(j0 + tile, m)
        if method == "theorem1":
            gram = x[i0:i1] @ z[j0:j1].T
            if symmetric and i0 == j0:
                _symmetrize(gram)
            vals = _theorem1_layers(gram, x_norm[i0:i1] ** 2, z_norm[j0:j1] ** 2, depths, sigma_w2,
                                    beta ** 2, c, unit_diagonal=symmetric and i0 == j0)
            results = vals.items()
        else:
            rho = torch.mm(xu[i0:i1], zu[j0:j1].T, out=scratch("rho", (i1 - i0, j1 - j0), dtype)).clamp_(-1.0, 1.0)
            if symmetric and i0 == j0:
                _symmetrize(rho, diagonal=1.0)
            if method == "table":
                theta, phi = _angles(rho, xu[i0:i1], zu[j0:j1], 2 in depths, scratch)
                results = kernel_table.each_kernel(theta, phi, rho, depths, quantities, scratch)
            else:
                results = _sphere_layers(rho, depths, quantities).items()
        for (q, L), value in results:     # a table value is overwritten by the next: use it now
            for k in (("ntk", "ntk_bar") if q == "ntk" else ("nngp", "rho")):
                if k in want:
                    for d in [d for d, depth in enumerate(depths) if depth == L]:
                        write(k, d, i0, i1, j0, j1, value)

    tiles = [(i0, j0) for i0 in range(0, n, tile) for j0 in range(i0 if symmetric else 0, m, tile)]
    if x.device.type != "cpu":
        for t in tiles:
            one_tile(*t)
        return out if many else {k: v[0] for k, v in out.items()}
    # On CPU the tiles are the unit of parallelism: a pool of threads that each run whole tiles
    # with single-threaded torch ops.  On a shared machine OpenMP's split of every small op waits
    # for its slowest thread (measured: 0.8 s -> 15 s for n = 2000, L = 30 under load; a lone
    # torch.arccos(out=) on a 19 x 19 tensor took 3.5 ms with 2 threads, 2 us with 1), while
    # whole tiles per thread balance freely.
    workers = torch.get_num_threads() if num_threads is None else int(num_threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers <= 1 or len(tiles) == 1:
            for t in tiles:
                one_tile(*t)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for f in [pool.submit(one_tile, *t) for t in tiles]:
                    f.result()
    finally:
        torch.set_num_threads(previous)
    return out if many else {k: v[0] for k, v in out.items()}


def relu_ntk(x, z=None, depth: int | Sequence[int] = 2, **kwargs) -> torch.Tensor:
    """Theta_inf^(depth)(x, z), the limiting NTK of Theorem 1; see :func:`relu_kernels` for options.

    Proposition 1: for colinear x, x' it equals depth |x| |x'| / (n0 2^(depth-1)).
    """
    return relu_kernels(x, z, depth, want=("ntk",), **kwargs)["ntk"]


def relu_nngp(x, z=None, depth: int | Sequence[int] = 2, **kwargs) -> torch.Tensor:
    """Sigma^(depth)(x, z): the covariance of the depth-L network's output at initialization."""
    return relu_kernels(x, z, depth, want=("nngp",), **kwargs)["nngp"]


def normalized_kernel(x, z=None, depth: int | Sequence[int] = 2, **kwargs) -> torch.Tensor:
    """Definition 4: Theta-bar^(depth) = n0 2^(depth-1) Theta_inf^(depth) / depth on the sphere.

    Inputs off the sphere are first projected onto it (Proposition 2's homogeneity), so the
    result is always the kernel of the input directions: 1 on the diagonal, values in [0, 1].
    """
    kwargs.setdefault("method", "table")
    return relu_kernels(x, z, depth, want=("ntk_bar",), **kwargs)["ntk_bar"]


# ------------------------------------------------------------------------------------------------
# Per tile: angles for the table, and the two layer recursions (the references)
# ------------------------------------------------------------------------------------------------
class _Scratch:
    """Scratch tensors for one relu_kernels call, one set per thread, reused from tile to tile:
    fresh 0.5 MiB tensors for every tile cost ~10% on CPU (new pages, cache misses).  Freed with
    the call.  ``scratch(name, shape, dtype)`` returns a tensor of that shape (a view of a flat
    buffer that grows as needed)."""

    def __init__(self, device):
        self.device = device
        self._by_thread: dict = {}

    def __call__(self, name: str, shape, dtype) -> torch.Tensor:
        store = self._by_thread.setdefault(threading.get_ident(), {})
        size = math.prod(shape)
        buf = store.get((name, dtype))
        if buf is None or buf.numel() < size:
            buf = store[(name, dtype)] = torch.empty(size, dtype=dtype, device=self.device)
        return buf[:size].view(shape)


def _angles(rho: torch.Tensor, xu: torch.Tensor, zu: torch.Tensor, need_phi: bool, scratch=None):
    """theta = arccos(rho) and (if asked) phi = arccos(-rho) = pi - theta for a tile of cosines.

    The cosine x.z of unit vectors carries a rounding error of a few ulps to ~n0 ulps (20 ulps
    measured for colinear 784-dimensional inputs), and arccos(1 - e) ~ sqrt(2 e) turns it into
    an angle error of 1e-8 next to parallel inputs, which the kernel (not smooth in rho at +-1)
    passes on: colinear inputs came out 1e-8..1e-7 off Proposition 1 depending on the CPU.  So
    the angle of pairs within NEAR_PARALLEL (2^-20 in float64) of +-1 is taken from the distance,
    theta = 2 arcsin(|x - z| / 2) (or pi minus that with x + z), which is accurate to a few ulps
    of the angle itself: duplicates get exactly 0 (pi), colinear inputs ~1e-15.
    """
    scratch = scratch or _Scratch(rho.device)
    theta = torch.arccos(rho, out=scratch("theta", rho.shape, rho.dtype))
    phi = torch.neg(rho, out=scratch("phi", rho.shape, rho.dtype)).arccos_() if need_phi else None
    threshold = NEAR_PARALLEL[rho.dtype]
    lowest, highest = torch.aminmax(rho)       # one pass; most tiles have no such pair
    if highest > 1.0 - threshold or lowest < threshold - 1.0:
        near = rho.abs() > 1.0 - threshold
        rows, cols = near.nonzero(as_tuple=True)
        for s in range(0, len(rows), 4096):       # bounded memory for inputs full of duplicates
            i, j = rows[s:s + 4096], cols[s:s + 4096]
            parallel = rho[i, j] > 0
            sign = torch.where(parallel, -1.0, 1.0).to(xu.dtype)
            gap = torch.addcmul(xu[i], sign[:, None], zu[j]).norm(dim=1)     # |x - z| or |x + z|
            ang = 2 * torch.asin((gap / 2).clamp_(max=1.0))
            theta[i, j] = torch.where(parallel, ang, math.pi - ang)
            if phi is not None:
                phi[i, j] = torch.where(parallel, math.pi - ang, ang)
    return theta, phi


def _sphere_layers(rho: torch.Tensor, depths: Sequence[int], quantities=("ntk", "nngp")) -> dict:
    """The layer recursion on a tile of input cosines: {(quantity, L): T^(L) or rho^(L)}.

    T^(1) = rho^(1); T^(l+1) = h'(rho^(l)) T^(l) + h(rho^(l)) with T^(l) = l Theta-bar^(l)
    (Theorem 1 in normalized form, Proposition 5).  With a = arccos(rho):
    h'(rho) = 1 - a/pi and h(rho) = rho h'(rho) + sqrt(1 - rho^2)/pi, so each layer costs one
    arccos, one sqrt and a few multiply-adds.  1 - rho^2 is formed as (1 - rho)(1 + rho): near
    rho = 1, 1 - rho is exact while 1 - rho*rho has an absolute error ~1e-16 that sqrt turns into
    ~1e-8 and arccos, one layer later, into ~1e-4.  The clamp keeps a rounded h(rho) from
    exceeding 1.  Near rho = 1 each layer's arccos still amplifies the rounding of rho^(l) (about
    1e-11 relative at L = 1000): the table path computes in the angle instead.
    """
    need_t = "ntk" in quantities
    rho = rho.clone()
    t = rho.clone() if need_t else None
    hp = torch.empty_like(rho)
    s = torch.empty_like(rho)
    one = torch.ones((), dtype=rho.dtype, device=rho.device)
    out = {}

    def keep(L):
        if L in depths:
            if need_t:
                out[("ntk", L)] = t.clone()
            if "nngp" in quantities:
                out[("nngp", L)] = rho.clone()
    keep(1)
    for layer in range(1, max(depths)):
        torch.arccos(rho, out=hp)
        torch.add(one, hp, alpha=-_INV_PI, out=hp)                  # h'(rho) = 1 - a/pi
        torch.sub(one, rho, out=s)                                  # 1 - rho: exact near 1
        torch.addcmul(s, s, rho, out=s).sqrt_()                     # sqrt((1 - rho)(1 + rho))
        rho.mul_(hp).add_(s, alpha=_INV_PI).clamp_(max=1.0)         # rho <- h(rho)
        if need_t:
            torch.addcmul(rho, t, hp, out=t)                        # T <- h' T + h
        keep(layer + 1)
    return out


def _theorem1_layers(gram, qx, qz, depths, sigma_w2, beta2, c, unit_diagonal=False) -> dict:
    """Theorem 1 and Definition 1 literally, with Proposition 2's Gaussian expectations.

    Tracks Sigma^(l)(x, z) and the per-point variances Sigma^(l)(x, x), Sigma^(l)(z, z):
    Sigma^(l+1) = sigma_w2 sqrt(q_x q_z) h(rho) / 2 + beta^2, q^(l+1) = sigma_w2 q^(l) / 2 + beta^2,
    Sigma-dot^(l+1) = sigma_w2 h'(rho) / 2, Theta^(l+1) = Sigma-dot^(l+1) Theta^(l) + Sigma^(l+1).
    Returns {("nngp" or "ntk", L): tensor} for every L in ``depths``.
    """
    sigma = sigma_w2 * c * gram + beta2
    qx = sigma_w2 * c * qx + beta2
    qz = sigma_w2 * c * qz + beta2
    theta = sigma.clone()
    out = {}
    for layer in range(1, max(depths) + 1):
        if layer > 1:
            root = torch.sqrt(qx[:, None] * qz[None, :])
            rho = torch.where(root > 0, sigma / root.clamp_min(torch.finfo(root.dtype).tiny),
                              torch.zeros_like(sigma)).clamp_(-1.0, 1.0)
            if unit_diagonal:  # x_i against itself: exactly 1, not 1 - 1e-16 (arccos would amplify it)
                rho.diagonal().fill_(1.0)
            sigma_dot = sigma_w2 * h_prime(rho) / 2
            sigma = sigma_w2 * root * h(rho) / 2 + beta2
            qx = sigma_w2 * qx / 2 + beta2
            qz = sigma_w2 * qz / 2 + beta2
            theta = sigma_dot * theta + sigma
        if layer in depths:
            out[("nngp", layer)], out[("ntk", layer)] = sigma, theta
    return out


# ------------------------------------------------------------------------------------------------
def _symmetrize(tile: torch.Tensor, diagonal: float | None = None) -> None:
    """Make a diagonal tile exactly symmetric, so the mirrored output is symmetric too.

    The matmul may round x_i.x_j and x_j.x_i differently; every later step is elementwise, so a
    symmetric input gives a symmetric kernel.  ``diagonal`` sets the diagonal (unit cosines).
    """
    upper = torch.triu(tile, diagonal=1)
    tile.copy_(torch.triu(tile) + upper.T)
    if diagonal is not None:
        tile.diagonal().fill_(diagonal)


def _check_depth(depth) -> None:
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth (the paper's L, number of weight layers) must be an integer >= 1, got {depth!r}")


def _depths(depth) -> tuple[tuple[int, ...], bool]:
    """(depths, is_list) from an int or a sequence of ints, each checked."""
    if isinstance(depth, (int, np.integer)) and not isinstance(depth, bool):
        _check_depth(depth)
        return (int(depth),), False
    try:
        depths = tuple(depth)
    except TypeError:
        _check_depth(depth)  # raises with the usual message
        raise
    if not depths:
        raise ValueError("depth: an empty list of depths")
    for d in depths:
        _check_depth(d)
    return tuple(int(d) for d in depths), True


def _check_finite(norms: torch.Tensor, name: str) -> None:
    """A NaN or an infinity anywhere in a row makes its norm non-finite (one pass over n values)."""
    if not bool(torch.isfinite(norms).all()):
        bad = int((~torch.isfinite(norms)).nonzero()[0])
        raise ValueError(f"{name}[{bad}] contains NaN or infinite values (or overflows float range); "
                         "the kernel of such inputs is undefined")


def _as_matrix(a, dtype, device, name: str = "x") -> torch.Tensor:
    t = torch.as_tensor(a)
    if t.dim() == 1:
        t = t[None, :]
    if t.dim() != 2:
        raise ValueError(f"{name}: inputs must be a (n, n0) matrix, got shape {tuple(t.shape)}")
    return t.to(dtype=dtype, device=device if device is not None else t.device)
