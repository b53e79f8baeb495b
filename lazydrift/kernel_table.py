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
layers have not yet pulled theta_l towards 3 pi / l, see Theorem 2's expansion in
:mod:`lazydrift.kernels`), elsewhere on the scale theta itself.  So the grid is graded: with
y = theta + a, a = 2^-p ~ 1.5 pi / L, each binary octave of y is cut into 32 equal pieces (the
piece is read off the floating-point exponent and top mantissa bits of y, no search), and on
each piece T^(L) and rho^(L) are polynomials of degree 7 in the local coordinate s in [0, 2),
interpolated at Chebyshev-Lobatto points.  The values at the nodes come from the recursion above
in extended precision (numpy's longdouble, 64-bit mantissa on x86-64; where it is plain float64
the table is good to ~1e-14 at L = 1000 instead of ~1e-15).  A piece spans at most 1/32 of its
distance to theta = -a, where the functions' nearest singularities sit, and degree 7 then reaches
float64 rounding (measured: 16 pieces per octave need degree 8, 64 need degree 6; a and the
piece count were chosen by the same measurement for L = 3..3000).  The first piece starts at
theta = 0 with s = 0, where Horner's scheme returns the constant coefficient exactly: T^(L)(0) = L
and rho^(L)(0) = 1 come out exact (Proposition 1, the diagonal).  One grid, set by the largest
depth, serves a list of depths.  Building the table costs one run of the recursion over
~8 x 32 x log2(L) angles: 0.03 s for L = 30, 0.55 s for L = 1000, once per process.

Per entry the cost is one arccos, five exact integer/float operations for the piece and s, and
8 gathers and 7 multiply-adds per tabulated function; it does not grow with L.  Depths 1 and 2
are closed forms (T^(1) = rho; T^(2) = (rho phi + S(phi)) / pi, rho^(2) = S(phi) / pi with
phi = arccos(-rho)), which keep relative accuracy where T^(2) and rho^(2) vanish (rho -> -1).

Measured worst relative error against a 50-digit mpmath evaluation of Theorem 1 given the same
float64 cosine (``tests/test_kernels.py``), L in 1..1000, cosines from -1 to 1 including within
1e-12 and one ulp of +-1 (64 cosines, 16 depths): 1.0e-15, at L = 2 next to the zero of T^(2);
against the longdouble recursion at 23000 angles between the nodes, L = 3..1000: 8.5e-16.

The same recursion gives Theorem 2's exact rate, (3/8) log L / L: see :mod:`lazydrift.kernels`.
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
# The recursion in the angle (builds the tables; also a reference where the recursion in rho
# loses digits)
# ------------------------------------------------------------------------------------------------
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
        self.e0 = 1 - self.p                      # y = a = (1/2) 2^e0: the first octave
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
        """Piece index (int32) and local coordinate s in [0, 2) of each angle in [0, pi].

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
        position = torch.bitwise_and(bits, (1 << low) - 1, out=scratch("position", shape, int_type))
        top = torch.bitwise_right_shift(bits, low, out=scratch("top", shape, int_type))
        # int32 indices: index_select gathers them twice as fast as take gathers int64 ones
        idx = torch.sub(top, (bias - self.p) << k, out=scratch("idx", shape, torch.int32))
        s = y.copy_(position).mul_(2.0 ** (1 - low))       # y's bits are used up: s takes its place
        return idx, s

    def evaluate(self, which: int, quantity: int, idx: torch.Tensor, s: torch.Tensor, scratch=None) -> torch.Tensor:
        """Horner's scheme on the gathered coefficients: T^(L) (quantity 0) or rho^(L) (1) for
        depth ``self.depths[which]``.  The result lives in ``scratch("value")`` when given."""
        scratch = scratch or _fresh(s.device)
        c = self.tensors(s.device, s.dtype)[which, quantity]
        flat = idx.reshape(-1)
        acc = scratch("value", s.shape, s.dtype)
        tmp = scratch("coefficient", s.shape, s.dtype)
        torch.index_select(c[DEGREE], 0, flat, out=acc.view(-1))
        for k in range(DEGREE - 1, -1, -1):
            torch.index_select(c[k], 0, flat, out=tmp.view(-1))
            torch.addcmul(tmp, acc, s, out=acc)
        return acc


def _fresh(device):
    """A scratch supplier that allocates every time (for one-off calls)."""
    return lambda name, shape, dtype: torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def depth_table(depths: tuple[int, ...]) -> DepthTable:
    """The table for these depths, built once per process (0.03 s for L = 30, 0.55 s for L = 1000)."""
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
