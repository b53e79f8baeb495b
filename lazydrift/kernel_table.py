"""The deep ReLU kernels on the sphere as tabulated functions of the angle (the fast path of
:mod:`lazydrift.kernels`).

For a bias-free ReLU network and unit inputs at angle theta = arccos(rho^(1)), Theorem 1 in its
normalized form (Proposition 5 times L, with T^(L) = L Theta-bar^(L)) is one function of one
variable per depth.  Written in the angle theta_l = arccos(rho^(l)) (Proposition 2:
h'(rho) = 1 - theta/pi and h(cos theta) = (sin theta + (pi - theta) cos theta) / pi):

    T^(1) = cos theta_1,   T^(l+1) = (1 - theta_l / pi) T^(l) + cos theta_{l+1},
    1 - cos theta_{l+1} = (2 pi sin^2(theta_l / 2) - S(theta_l)) / pi,   S(t) = sin t - t cos t,
    theta_{l+1} = 2 arcsin(sqrt((1 - cos theta_{l+1}) / 2)),   rho^(l) = cos theta_l.

In rho these functions have square-root singularities at rho = +-1 (h is not smooth there); in
theta they are analytic on [0, pi].  The second line has no cancellation (S(t) = t^3/3 + ... is
summed as a series), so this recursion is accurate to a few ulps per layer at every angle, unlike
the recursion in rho, where 1 - rho^(l) ~ 1/l^2 is formed by subtraction and arccos amplifies
its rounding.

**The table.**  Near theta = 0 the functions vary on the scale theta ~ 4/L (for theta << 1/L the
layers have not yet pulled theta_l towards 3 pi / l; Theorem 2's expansion below), elsewhere on the
scale theta itself.  So the grid is graded: with y = theta + a, a = 2^-p ~ 1.5 pi / L, each binary
octave of y is cut into 16 equal pieces (the piece is read off the floating-point exponent and
mantissa of y: ``frexp``, no search), and on each piece T^(L) and rho^(L) are polynomials of
degree 8 in the local coordinate s in [0, 2), interpolated at Chebyshev-Lobatto points.  The
values at the nodes come from the recursion above in extended precision (numpy's longdouble,
64-bit mantissa on x86-64; plain float64 elsewhere, then the table is good to ~1e-14 at L = 1000
instead of ~1e-15).  A piece spans at most 1/8 of its distance to theta = -a, so the nearest
singularity is >= 16 half-widths away and degree 8 reaches float64 rounding.  The first piece
starts at theta = 0 with s = 0, where Horner's scheme returns the constant coefficient exactly:
T^(L)(0) = L and rho^(L)(0) = 1 come out exact (Proposition 1, the diagonal).

Per entry the cost is one arccos, a few exact integer/float operations for the piece and s, and
9 gathers and 8 multiply-adds per tabulated function; it does not grow with L.  Depths 1 and 2
are closed forms (T^(1) = rho; T^(2) = (rho phi + S(phi)) / pi, rho^(2) = S(phi) / pi with
phi = arccos(-rho)), which keep relative accuracy where T^(2) and rho^(2) vanish (rho -> -1).

Measured worst relative error against a 50-digit mpmath evaluation of Theorem 1 given the same
float64 cosine (``tests/test_kernels.py``), L in 1..1000, cosines from -1 to 1 including within
1e-12 and one ulp of +-1: 2.2e-15 (the table's own fit at its build points: 1.1e-15).

**Theorem 2's rate.**  For small angles one layer maps theta -> theta - theta^2/(3 pi)
- theta^3/(18 pi^2) + O(theta^4), so 1/theta_{l+1} = 1/theta_l + 1/(3 pi) + theta_l/(6 pi^2) + ...
and 1/theta_L = L/(3 pi) + log(L)/(2 pi) + C(rho^(1)) + o(1).  Put T^(L) = L/4 + D_L in the
recursion: D_{l+1} = (1 - theta_l/pi) D_l - l theta_l/(4 pi) + 3/4 - theta_{l+1}^2/2 + ..., and
l theta_l/(4 pi) = 3/4 - (9/8) log(l)/l - O(1/l), so D_{l+1} = (1 - 3/l) D_l + (9/8) log(l)/l +
O(1/l).  D_l = A log l + B solves it when A = 3 (9/8) / 9 = 3/8 (the homogeneous solutions decay
like l^-3), hence for every rho^(1) in (-1, 1)

    L (Theta-bar^(L) - 1/4) = D_L = (3/8) log L + B(rho^(1)) + o(1),

so |Theta-bar^(L) - 1/4| = Theta(log L / L), not O(1/L).  The paper's proof (section 6.2) has the
log: its V_{L+1} - V_2 = L sqrt(2)/(3 pi) + sum_k O(e_k^(1/2)) with e_k^(1/2) ~ 3 pi/(sqrt(2) k),
a Theta(log L) sum, which Stolz-Cesaro only shows to be o(L).  Carried into h'(rho^(L)) =
1 - 3/L + Theta(log L / L^2), it becomes per-layer terms of order log(L)/L^2 in equation (2),
written o(1/L) there; summed with the weights prod (1 - 4/k') ~ (k/L)^4 they give
Theta(log L / L), of the same order as the claimed rate and larger.  Tested against 50-digit
mpmath up to L = 1e5 (``tests/test_kernels.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["SUB_PIECES_LOG2", "DEGREE", "angle_recursion", "DepthTable", "depth_table",
           "s_over_cube", "each_kernel", "kernels_of_cosine"]

SUB_PIECES_LOG2 = 5        # 2^5 = 32 pieces per binary octave of y = theta + a
DEGREE = 7                 # polynomial degree per piece
# IEEE layout per float type: the integer type of its bits, mantissa bits, exponent bias
_IEEE = {torch.float64: (torch.int64, 52, 1023), torch.float32: (torch.int32, 23, 127)}
_LD = np.longdouble
_PI_LD = _LD("3.14159265358979323846264338327950288")
# S(t)/t^3 = sum_{k>=1} (-1)^(k+1) 2k t^(2k-2) / (2k+1)!  (S(t) = sin t - t cos t): 18 terms reach
# 1e-23 at t = pi, the largest angle, so one series serves every t in [0, pi] without cancellation
# beyond a factor 3 (the terms at t = pi peak at 0.33 for a sum of 1/pi^2).
_S_SERIES = [(-1) ** (k + 1) * 2 * k / math.factorial(2 * k + 1) for k in range(1, 19)]
_S_SERIES_LD = [_LD((-1) ** (k + 1) * 2 * k) / _LD(math.factorial(2 * k + 1)) for k in range(1, 19)]


# ------------------------------------------------------------------------------------------------
# The recursion in the angle (builds the tables; also the reference for depths beyond float64's
# rho-recursion)
# ------------------------------------------------------------------------------------------------
def _s_over_cube_ld(t2: np.ndarray) -> np.ndarray:
    acc = np.zeros_like(t2)
    for c in reversed(_S_SERIES_LD):
        acc = acc * t2 + c
    return acc


def angle_recursion(theta1, depths: Sequence[int], dtype=np.longdouble) -> dict[int, tuple]:
    """T^(l) and rho^(l) of unit inputs at angle ``theta1``, for each l in ``depths`` (>= 1).

    Runs the recursion of the module docstring elementwise in ``dtype`` (longdouble by default)
    and returns {l: (T^(l), rho^(l))}.  Accurate to a few ulps of ``dtype`` per layer.
    """
    depths = sorted(set(int(d) for d in depths))
    pi = _PI_LD if dtype == np.longdouble else dtype(math.pi)
    series = _S_SERIES_LD if dtype == np.longdouble else [dtype(c) for c in _S_SERIES]
    th = np.array(theta1, dtype=dtype, copy=True)
    t = np.cos(th)
    out = {}
    if depths[0] == 1:
        out[1] = (t.copy(), np.cos(th))
    for layer in range(1, depths[-1]):
        t2 = th * th
        s = np.zeros_like(th)
        for c in reversed(series):
            s = s * t2 + c
        om = (2 * pi * np.sin(th / 2) ** 2 - th * t2 * s) / pi     # 1 - cos theta_{l+1}
        t = (1 - th / pi) * t + (1 - om)                            # T^(l+1)
        th = 2 * np.arcsin(np.sqrt(om / 2))                         # theta_{l+1} <= pi / 2
        if layer + 1 in depths:
            out[layer + 1] = (t.copy(), 1 - om)
    return out


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
def _lobatto_nodes(d: int) -> np.ndarray:
    """Chebyshev-Lobatto points on [0, 2] in increasing order (s = 0 and s = 2 included)."""
    return 1 - np.cos(np.pi * np.arange(d + 1, dtype=np.float64) / d)


def _monomial_coefficients(nodes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Coefficients c_0..c_d of the polynomial through (nodes, values[..., :]) in the monomial
    basis s^k, in the values' dtype: Newton's divided differences, then expanded.  Row-wise over
    the leading axes of ``values``."""
    x = nodes.astype(values.dtype)
    d = len(x) - 1
    dd = values.copy()
    for k in range(1, d + 1):
        dd[..., k:] = (dd[..., k:] - dd[..., k - 1:-1]) / (x[k:] - x[:-k])
    coef = np.zeros_like(values)
    coef[..., 0] = dd[..., d]
    for k in range(d - 1, -1, -1):      # p <- p * (s - x_k) + dd_k
        shifted = np.zeros_like(coef)
        shifted[..., 1:] = coef[..., :-1]
        coef = shifted - x[k] * coef
        coef[..., 0] += dd[..., k]
    return coef


class DepthTable:
    """T^(L) and rho^(L) for several depths L >= 3 as piecewise polynomials of the angle.

    ``coef[i]`` holds depth ``depths[i]``: shape (2, DEGREE + 1, pieces), [0] for T^(L) and [1]
    for rho^(L), coefficient k of s^k in row k.  One grid (``a = 2^-p`` from the largest depth)
    serves every depth: a finer grid than a shallow depth needs costs nothing per entry.
    """

    def __init__(self, depths: Sequence[int]):
        depths = tuple(int(d) for d in depths)
        if not depths or min(depths) < 3:
            raise ValueError(f"DepthTable tabulates depths >= 3, got {depths!r}")
        self.depths = depths
        self.p = max(1, round(math.log2(max(depths) / (1.5 * math.pi))))
        self.a = 2.0 ** -self.p
        self.e0 = 1 - self.p                      # frexp exponent of y = a (m = 1/2)
        k = SUB_PIECES_LOG2
        last = math.frexp(math.pi + self.a)      # the piece holding theta = pi, plus one spare
        self.pieces = (last[1] - self.e0) * 2 ** k + int((last[0] - 0.5) * 2 ** (k + 1)) + 2
        idx = np.arange(self.pieces)
        e, j = self.e0 + idx // 2 ** k, idx % 2 ** k
        nodes = _lobatto_nodes(DEGREE)
        # y = 2^e (1/2 + (j + s/2) / 2^(k+1)); exact in float64, then theta = y - a in longdouble
        y = np.ldexp(0.5 + (j[:, None] + nodes[None, :] / 2) / 2 ** (k + 1), e[:, None])
        theta = y.astype(_LD) - _LD(self.a)
        vals = angle_recursion(theta, depths)
        self.coef = np.stack([np.stack([_monomial_coefficients(nodes, vals[d][q]) for q in (0, 1)])
                              for d in depths]).swapaxes(-1, -2).astype(np.float64)
        self._on: dict = {}

    def tensors(self, device, dtype) -> torch.Tensor:
        """The coefficients as a (depths, 2, DEGREE + 1, pieces) tensor on ``device`` (cached)."""
        key = (str(device), dtype)
        if key not in self._on:
            self._on[key] = torch.as_tensor(self.coef, dtype=dtype, device=device).contiguous()
        return self._on[key]

    def locate(self, theta: torch.Tensor, scratch=None):
        """Piece index (int64) and local coordinate s in [0, 2) of each angle in [0, pi].

        y = theta + a is a positive normal float 2^E (1 + f): its bits are the biased exponent
        followed by the mantissa f.  The exponent and the top k = SUB_PIECES_LOG2 bits of f are
        the piece, (bits >> (nmant - k)) minus that of a = 2^-p; the remaining bits of f are the
        position inside it.  Every step after the addition is exact; one integer shift replaces
        a search over the grid.  ``scratch(name, shape, dtype)`` supplies reusable buffers.
        """
        if theta.dtype not in _IEEE:
            raise ValueError(f"the tabulated kernels compute in float64 or float32, got {theta.dtype}")
        scratch = scratch or _fresh(theta.device)
        int_type, mantissa, bias = _IEEE[theta.dtype]
        k, low, shape = SUB_PIECES_LOG2, mantissa - SUB_PIECES_LOG2, theta.shape
        y = torch.add(theta, self.a, out=scratch("s", shape, theta.dtype))
        bits = y.view(int_type)
        idx = scratch("idx", shape, torch.int64)
        if int_type == torch.int64:
            torch.bitwise_right_shift(bits, low, out=idx)
        else:                                              # float32: int32 bits, int64 index
            idx.copy_(torch.bitwise_right_shift(bits, low))
        idx.sub_((bias - self.p) << k)
        position = torch.bitwise_and(bits, (1 << low) - 1, out=scratch("position", shape, int_type))
        s = y.copy_(position).mul_(2.0 ** (1 - low))       # y's bits are used up: s takes its place
        return idx, s

    def evaluate(self, which: int, quantity: int, idx: torch.Tensor, s: torch.Tensor, scratch=None) -> torch.Tensor:
        """Horner's scheme on the gathered coefficients: T^(L) (quantity 0) or rho^(L) (1) for
        depth ``self.depths[which]``.  The result lives in ``scratch("value")`` when given."""
        scratch = scratch or _fresh(s.device)
        c = self.tensors(s.device, s.dtype)[which, quantity]
        acc = torch.take(c[DEGREE], idx, out=scratch("value", s.shape, s.dtype))
        tmp = scratch("coefficient", s.shape, s.dtype)
        for k in range(DEGREE - 1, -1, -1):
            torch.take(c[k], idx, out=tmp)
            torch.addcmul(tmp, acc, s, out=acc)
        return acc


def _fresh(device):
    """A scratch supplier that allocates every time (for one-off calls)."""
    return lambda name, shape, dtype: torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def depth_table(depths: tuple[int, ...]) -> DepthTable:
    """The table for these depths, built once per process (~0.2 s for L = 1000)."""
    return DepthTable(depths)


# ------------------------------------------------------------------------------------------------
# Evaluation on angles
# ------------------------------------------------------------------------------------------------
def s_over_cube(t2: torch.Tensor) -> torch.Tensor:
    """S(t)/t^3 from t^2, S(t) = sin t - t cos t, by its series (accurate for t in [0, pi])."""
    acc = torch.full_like(t2, _S_SERIES[-1])
    for c in reversed(_S_SERIES[:-1]):
        acc.mul_(t2).add_(c)
    return acc


def each_kernel(theta: torch.Tensor, phi: torch.Tensor | None, rho: torch.Tensor, depths: Sequence[int],
                quantities=("ntk", "nngp"), scratch=None):
    """Yield ((quantity, L), value): T^(L) ("ntk") and rho^(L) ("nngp") for each L in ``depths``
    from the angles of the pairs.

    ``theta`` = arccos(rho), ``phi`` = pi - theta = arccos(-rho) (needed for depth 2 only; pass
    it computed directly, it is then accurate near rho = -1) and ``rho`` the cosines.  A value
    may live in a scratch buffer that the next one reuses: use it before asking for the next.
    Tensors may be on any device; the inputs are not written to.
    """
    if 1 in depths:
        for q in quantities:
            yield (q, 1), rho
    if 2 in depths:
        if phi is None:
            raise ValueError("depth 2 needs phi = arccos(-rho)")
        # h(rho) = S(phi)/pi and h'(rho) = phi/pi: cancellation-free near rho = -1
        h = phi * phi
        h = s_over_cube(h).mul_(h).mul_(phi).mul_(1 / math.pi)
        if "nngp" in quantities:
            yield ("nngp", 2), h
        if "ntk" in quantities:
            yield ("ntk", 2), torch.addcmul(h, rho, phi, value=1 / math.pi)
    deep = tuple(sorted({int(d) for d in depths if d >= 3}))
    if deep:
        table = depth_table(deep)
        idx, s = table.locate(theta, scratch)
        for i, d in enumerate(deep):
            for q in quantities:
                yield (q, d), table.evaluate(i, 0 if q == "ntk" else 1, idx, s, scratch)


def kernels_of_cosine(rho, depth: int | Sequence[int], quantity: str = "ntk"):
    """T^(L) (``quantity="ntk"``; L Theta-bar^(L)) or rho^(L) (``"nngp"``) of unit inputs with
    cosine ``rho`` through the tables, elementwise (tensor or array in, same shape out; float64).
    With a list of depths the results are stacked on a new first axis."""
    many = not isinstance(depth, (int, np.integer))
    depths = [int(d) for d in (depth if many else [depth])]
    r = torch.as_tensor(np.asarray(rho, dtype=np.float64) if not isinstance(rho, torch.Tensor) else rho)
    r = r.to(torch.float64).clamp(-1.0, 1.0)
    res = {key: value.clone() for key, value in each_kernel(torch.arccos(r), torch.arccos(-r), r, depths, (quantity,))}
    stack = torch.stack([res[(quantity, d)] for d in depths]) if many else res[(quantity, depths[0])]
    return stack if isinstance(rho, torch.Tensor) else stack.numpy()
