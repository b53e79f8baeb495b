"""lazydrift.kernels against independent references.

References: closed forms (Proposition 1, Sheppard's orthant formula, h(0) = 1/pi), numerical
integration of Definition 1's Gaussian expectations, 50-digit mpmath runs of Theorem 1 and of
Proposition 5, the layer recursion the table replaced (method="sphere"), the elementwise
Proposition 5 recurrence, Monte Carlo over a wide NTKMLP, and (optionally) neural-tangents.

Tolerances are derived in each test's docstring; none relies on how a particular CPU rounds
(the suite runs with default threads, OMP_NUM_THREADS=1 and MKL_CBWR=COMPATIBLE).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate

from lazydrift import NTKMLP, kernels
from lazydrift.kernels import (correlations, feature_cosine, h, h_prime, normalized_kernel,
                               normalized_kernel_recurrence, relu_kernels, relu_ntk, relu_nngp)

ROOT = Path(__file__).resolve().parents[1]
RHOS = np.array([-0.95, -0.5, 0.0, 0.3, 0.7, 0.95])


def unit_pair_batch(rhos) -> torch.Tensor:
    """Unit vectors e_1 and (rho, sqrt(1 - rho^2)) for each rho: row 0 against rows 1..k."""
    rows = [[1.0, 0.0]] + [[r, math.sqrt(1 - r * r)] for r in rhos]
    return torch.tensor(rows, dtype=torch.float64)


def relu_moment(rho: float) -> float:
    """E[relu(u) relu(v)] for standard normals with correlation rho, by 2-D numerical integration.

    u = b, v = rho b + c a with a, b independent N(0, 1), c = sqrt(1 - rho^2); integrating only
    over the quadrant u, v > 0 keeps the integrand smooth, so quadrature is accurate to ~1e-12.
    """
    c = math.sqrt(1 - rho * rho)

    def integrand(a, b):
        return b * (rho * b + c * a) * math.exp(-(a * a + b * b) / 2) / (2 * math.pi)
    val, _ = integrate.dblquad(integrand, 0, 12, lambda b: -rho * b / c, 12, epsabs=1e-13, epsrel=1e-12)
    return val


# -- the scalar maps ------------------------------------------------------------------------------
def test_h_special_values():
    assert h(0.0) == pytest.approx(1 / math.pi, abs=1e-15)
    assert h(1.0) == pytest.approx(1.0, abs=1e-15)
    assert h(-1.0) == pytest.approx(0.0, abs=1e-15)
    assert h_prime(0.0) == pytest.approx(0.5, abs=1e-15)
    assert h_prime(1.0) == pytest.approx(1.0, abs=1e-15)
    # clipping: out-of-range input behaves as the boundary
    assert h(1.0 + 1e-9) == h(1.0)


@pytest.mark.parametrize("rho", [-0.8, 0.0, 0.4, 0.9])
def test_h_is_twice_the_relu_gaussian_moment(rho):
    """Definition 1: Sigma^(2) = E[relu(u) relu(v)] = h(rho) / 2 for unit variances."""
    assert h(rho) == pytest.approx(2 * relu_moment(rho), abs=1e-10)


def test_h_prime_is_derivative_and_twice_sheppard():
    r = np.linspace(-0.99, 0.99, 41)
    eps = 1e-6
    numeric = (h(r + eps) - h(r - eps)) / (2 * eps)
    np.testing.assert_allclose(h_prime(r), numeric, atol=1e-8)
    # Sigma-dot = P(u > 0, v > 0) = (pi - arccos rho) / (2 pi) (Sheppard), so h' = 2 Sigma-dot
    np.testing.assert_allclose(h_prime(r), 2 * (np.pi - np.arccos(r)) / (2 * np.pi), atol=1e-15)
    np.testing.assert_allclose(h_prime(r), 0.5 + np.arcsin(r) / np.pi, atol=1e-15)


def test_scalar_maps_accept_tensors_and_keep_types():
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    assert isinstance(h(t), torch.Tensor) and isinstance(h(0.5), float)
    np.testing.assert_allclose(h(t).numpy(), h(np.array([0.0, 0.5])))
    assert correlations(np.array([0.0, 0.2]), 4).shape == (4, 2)


def test_feature_cosine_composes_h():
    # one-hot inputs (rho1 = 0): post-ReLU cosine at hidden.0 is h(0) = 1/pi (footnote 5)
    assert feature_cosine(0.0, 0) == pytest.approx(1 / math.pi)
    assert feature_cosine(0.0, 0, post_activation=False) == 0.0
    r = np.array([0.0, 0.3, 0.9])
    np.testing.assert_allclose(feature_cosine(r, 2), h(h(h(r))))
    np.testing.assert_allclose(feature_cosine(r, 2, post_activation=False), h(h(r)))
    with pytest.raises(ValueError):
        feature_cosine(r, -1)


# -- closed forms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 7, 30])
def test_proposition_1_colinear_inputs(depth):
    """Colinear x, x' = a x: Sigma^(L) = |x||x'| / (n0 2^(L-1)), Theta^(L) = L |x||x'| / (n0 2^(L-1)).

    Tolerance.  The Gram cosine of colinear inputs is 1 minus a few ulps, how many depends on the
    CPU's summation order, and the kernel is not smooth in rho at 1 (issue 10: 1 - 1e-16 gave
    2e-9..7e-8 on an Intel Xeon).  The fast path takes the angle of such pairs from the unit
    vectors' distance, which for colinear inputs is at most (n0 + 6) ulps of 1/2 (each unit
    vector carries its norm's rounding, <= (n0/2 + 2) u, as a common factor, plus one rounding
    per entry).  Near theta = 0, T^(L) = L - L (L - 1) theta / (2 pi) + O(theta^2) (every layer
    keeps theta_l ~ theta and has h' = 1 - theta/pi, so T^(l+1) = T^(l) + 1 - theta T^(l) / pi),
    a relative error below (L - 1) theta / (2 pi) = 29 * 19 * 1.1e-16 / 6.3 = 1e-14 here.
    Hence rtol 1e-13 on any CPU.
    """
    n0 = 13
    x = torch.randn(1, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pts = torch.cat([x, 2.5 * x, 0.3 * x])
    norms = pts.norm(dim=1)
    expected_nngp = torch.outer(norms, norms) / (n0 * 2 ** (depth - 1))
    torch.testing.assert_close(relu_nngp(pts, depth=depth), expected_nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(relu_ntk(pts, depth=depth), depth * expected_nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(relu_ntk(pts, pts.clone(), depth=depth), depth * expected_nngp, rtol=1e-13, atol=0)
    # Definition 4 then gives exactly 1
    torch.testing.assert_close(normalized_kernel(pts, depth=depth), torch.ones(3, 3, dtype=torch.float64),
                               rtol=0, atol=1e-14)


def test_one_ulp_of_the_cosine_is_what_broke_proposition_1_and_the_table_path_ignores_it():
    """Issue 10 reproduced on any CPU: perturb the cosine of colinear inputs by one ulp.

    In the layer recursion on cosines, arccos(1 - 2^-53) = 2^-26 (sqrt(2 e)), so T^(30) drops by
    (L - 1) theta / (2 pi) = 29 * 2^-26 / (2 pi) = 6.9e-8 relative (first order, see above; the
    next term is ~(L theta)^2, 1e-7 times smaller): what MKL's rounding did on the Xeon.  The table path takes the
    angle of near-parallel pairs from the vectors, so whatever the GEMM rounded the cosine to,
    colinear inputs get an angle of a few ulps at most ((n0 + 6) 2^-53, see above).
    """
    depth = 30
    rho = torch.tensor([[1.0, 1.0 - 2.0 ** -53]], dtype=torch.float64)
    t = kernels._sphere_layers(rho, [depth], ("ntk",))[("ntk", depth)][0]
    assert t[0].item() == depth                                         # exactly 1: exactly L
    assert (depth - t[1].item()) / depth == pytest.approx((depth - 1) * 2.0 ** -26 / (2 * math.pi), rel=1e-4)
    n0 = 13
    x = torch.randn(1, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xu, zu = x / x.norm(), 2.5 * x / (2.5 * x).norm()
    for rounded in (1.0, 1.0 - 2.0 ** -53, 1.0 - 20 * 2.0 ** -53, 1.0 - 1e-12):
        theta, phi = kernels._angles(torch.tensor([[rounded]], dtype=torch.float64), xu, zu, need_phi=True)
        assert 0 <= theta.item() <= (n0 + 6) * 2.0 ** -53
        assert phi.item() == pytest.approx(math.pi, abs=(n0 + 6) * 2.0 ** -53)
    # antiparallel inputs: the angle is pi (phi = 0) the same way
    theta, phi = kernels._angles(torch.tensor([[-1.0 + 2.0 ** -52]], dtype=torch.float64), xu, -zu, need_phi=True)
    assert phi.item() <= (n0 + 6) * 2.0 ** -53 and theta.item() == pytest.approx(math.pi, abs=1e-15)


def test_depth_one_and_two_closed_forms():
    """L = 1: x^T x'/n0.  L = 2: Sigma^(2) = |x||x'| h(rho)/(2 n0), Theta^(2) = rho |x||x'| h'(rho)/(2 n0) + Sigma^(2)."""
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(5, 9, dtype=torch.float64, generator=g), torch.randn(4, 9, dtype=torch.float64, generator=g)
    torch.testing.assert_close(relu_ntk(x, z, depth=1), x @ z.T / 9, rtol=1e-13, atol=1e-15)
    outer = torch.outer(x.norm(dim=1), z.norm(dim=1))
    rho = (x @ z.T) / outer
    sigma2 = outer * h(rho) / (2 * 9)
    theta2 = (x @ z.T / 9) * h_prime(rho) / 2 + sigma2
    torch.testing.assert_close(relu_nngp(x, z, depth=2), sigma2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(relu_ntk(x, z, depth=2), theta2, rtol=1e-12, atol=1e-15)


def theorem1_mpmath(x, z, depth, sigma_w2=1, beta=0):
    """Theorem 1 with Definition 1's ReLU expectations in 50-digit arithmetic (one entry)."""
    mpmath.mp.dps = 50
    n0 = len(x)
    x = [mpmath.mpf(float(v)) for v in x]
    z = [mpmath.mpf(float(v)) for v in z]
    sw, b2 = mpmath.mpf(sigma_w2), mpmath.mpf(beta) ** 2
    s = sw * mpmath.fsum(a * b for a, b in zip(x, z)) / n0 + b2
    qx = sw * mpmath.fsum(a * a for a in x) / n0 + b2
    qz = sw * mpmath.fsum(a * a for a in z) / n0 + b2
    theta = s
    for _ in range(depth - 1):
        r = max(min(s / mpmath.sqrt(qx * qz), 1), -1)
        # E[relu relu] = sqrt(qx qz) (sqrt(1-r^2) + (pi - arccos r) r) / (2 pi); E[relu' relu'] = (pi - arccos r)/(2 pi)
        s_dot = sw * (mpmath.pi - mpmath.acos(r)) / (2 * mpmath.pi)
        s = sw * mpmath.sqrt(qx * qz) * (mpmath.sqrt(1 - r * r) + (mpmath.pi - mpmath.acos(r)) * r) / (2 * mpmath.pi) + b2
        qx, qz = sw * qx / 2 + b2, sw * qz / 2 + b2
        theta = s_dot * theta + s
    return float(s), float(theta)


def normalized_mpmath(rho1, depths):
    """{L: (T^(L), rho^(L))} for unit inputs with cosine rho1 (a float, taken exactly), by
    Proposition 5 times L in 50-digit arithmetic: T^(l+1) = h'(rho^(l)) T^(l) + h(rho^(l))."""
    mpmath.mp.dps = 50
    pi = mpmath.pi
    r = mpmath.mpf(rho1)
    t, out = r, {}
    for layer in range(1, max(depths) + 1):
        if layer in depths:
            out[layer] = (t, r)
        a = mpmath.acos(r)
        r_next = (mpmath.sqrt(1 - r * r) + (pi - a) * r) / pi
        t, r = (1 - a / pi) * t + r_next, r_next
    return out


@pytest.mark.parametrize("depth,sigma_w2,beta", [(30, 1.0, 0.0), (5, 2.0, 0.0), (6, 1.5, 0.3)])
def test_matches_high_precision_theorem_1(depth, sigma_w2, beta):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 20, dtype=torch.float64, generator=g)
    x[1] = 0.5 * x[0] + 0.01 * x[1]  # a near-duplicate direction: the ill-conditioned case
    k = relu_kernels(x, depth=depth, sigma_w2=sigma_w2, beta=beta)
    for i in range(4):
        for j in range(4):
            s, t = theorem1_mpmath(x[i].tolist(), x[j].tolist(), depth, sigma_w2, beta)
            assert k["nngp"][i, j].item() == pytest.approx(s, rel=1e-12, abs=1e-300)
            assert k["ntk"][i, j].item() == pytest.approx(t, rel=1e-12, abs=1e-300)


# Cosines for the accuracy target: both ends, one and two ulps inside them, 1e-12 inside them,
# and the bulk; -0.79 is where Theta-bar^(2) is most negative.
TARGET_COSINES = [-1.0, -1.0 + 2.0 ** -52, -1.0 + 1e-12, -0.999, -0.79, -0.3, 0.0, 1 / math.pi, 0.5, 0.9,
                  0.999, 1.0 - 1e-8, 1.0 - 1e-12, 1.0 - 2.0 ** -52, 1.0 - 2.0 ** -53, 1.0]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6, 10, 30, 100, 300, 1000])
def test_table_within_1e12_of_50_digit_theorem_1(depth):
    """Issue 14's accuracy target: the fast path given a cosine, T^(L) and rho^(L), within 1e-12
    relative of Theorem 1 (normalized: Proposition 5) evaluated in 50 digits from the same float
    cosine, for L up to 1000 and cosines within one ulp of +-1.  Exact zeros (T^(1)(0),
    T^(2)(-1), rho^(2)(-1)) must come out exactly 0.  Measured worst: 5.6e-16 on these cosines,
    1.0e-15 over 64 (kernel_table's docstring).
    """
    from lazydrift.kernel_table import kernels_of_cosine
    ref = {r: normalized_mpmath(r, [depth])[depth] for r in TARGET_COSINES}
    for q, quantity in enumerate(("ntk", "nngp")):
        ours = kernels_of_cosine(np.array(TARGET_COSINES), depth, quantity)
        for r, value in zip(TARGET_COSINES, ours):
            exact = float(ref[r][q])
            assert abs(value - exact) <= 1e-12 * abs(exact), (quantity, r, value, exact)


# -- the routes, options, tiles -------------------------------------------------------------------
def test_normalized_kernel_matches_proposition_5_route():
    depth = 12
    x = unit_pair_batch(RHOS)
    theta_bar = normalized_kernel(x, depth=depth)[0, 1:]
    via_prop5 = normalized_kernel_recurrence(RHOS, depth)
    np.testing.assert_allclose(theta_bar.numpy(), via_prop5, rtol=0, atol=1e-13)
    # and Definition 4's normalization of the unnormalized kernel
    n0 = 2
    theta = relu_ntk(x, depth=depth)[0, 1:]
    np.testing.assert_allclose((n0 * 2 ** (depth - 1) * theta / depth).numpy(), via_prop5, atol=1e-13)
    # all_depths stacks depth 1..L; depth 1 is the input cosine
    stack = normalized_kernel_recurrence(RHOS, depth, all_depths=True)
    np.testing.assert_allclose(stack[0], RHOS)
    np.testing.assert_allclose(stack[-1], via_prop5)
    # Proposition 5 says the values lie in [0, 1]; that holds from L = 3 on (and for rho1 >= 0),
    # but at L = 2 strongly anti-correlated inputs give a negative value (min -0.068 near rho1 = -0.79).
    assert ((stack >= -1e-15) & (stack <= 1 + 1e-15))[2:].all()
    assert ((stack >= -1e-15) & (stack <= 1 + 1e-15))[1:, RHOS >= 0].all()
    assert normalized_kernel_recurrence(-0.79, 2) == pytest.approx(-0.0684, abs=1e-4)


@pytest.mark.parametrize("sigma_w2,input_scale", [(1.0, "fan_in"), (2.0, "fan_in"), (0.7, "embedding"), (1.3, 0.05)])
def test_sphere_paths_equal_literal_theorem_1(sigma_w2, input_scale):
    """The table and the layer recursion on the sphere against Theorem 1 with per-point variances."""
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(23, 11, dtype=torch.float64, generator=g) * 3, torch.randn(9, 11, dtype=torch.float64, generator=g)
    x[4] = 0.0  # a zero input: its row is 0
    for zz in (None, z):
        b = relu_kernels(x, zz, 6, sigma_w2=sigma_w2, input_scale=input_scale, method="theorem1", block_size=7)
        for method in ("table", "sphere"):
            a = relu_kernels(x, zz, 6, sigma_w2=sigma_w2, input_scale=input_scale, method=method, block_size=5)
            for key in ("nngp", "ntk"):
                torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-300)
            assert (a["ntk"][4] == 0).all()


DEPTH_GRID = [1, 2, 3, 5, 10, 30, 100, 300, 1000]


@pytest.mark.parametrize("sigma_w2,input_scale", [(1.0, "fan_in"), (2.0, "fan_in"), (0.7, "embedding"), (1.3, 0.05)])
def test_table_within_1e10_of_the_recursion_on_random_inputs(sigma_w2, input_scale):
    """Issue 14: the table path within 1e-10 of the layer recursion it replaced, L = 1 to 1000.

    The recursion is the reference only up to its own error: near rho^(l) -> 1 each layer's arccos
    amplifies the rounding of rho^(l) (measured: 7e-13 at L = 300 on n = 2000 random inputs,
    ~1e-11 at L = 1000), while the table is within 1e-15 of the 50-digit value (test above).
    1e-10 is the issue's bound and 10x the recursion's drift at L = 1000.
    """
    g = torch.Generator().manual_seed(11)
    x, z = torch.randn(19, 16, dtype=torch.float64, generator=g) * 2, torch.randn(7, 16, dtype=torch.float64, generator=g)
    for zz in (None, z):
        want = ("nngp", "ntk", "ntk_bar")
        a = relu_kernels(x, zz, DEPTH_GRID, sigma_w2=sigma_w2, input_scale=input_scale, want=want, block_size=6)
        b = relu_kernels(x, zz, DEPTH_GRID, sigma_w2=sigma_w2, input_scale=input_scale, want=want, method="sphere")
        for key in want:
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=0)


def test_duplicates_antipodes_and_orthogonal_axes():
    """Adversarial cosines against exact values: duplicates (x against x and 2x, with z given, so
    the cosine is whatever the GEMM rounds |x/|x||^2 to) give Proposition 1; antipodes (-x, -4x)
    give the 50-digit value at cosine -1; axes against axes are orthogonal (cosine 0 exactly).

    Scaling by powers of two and negation are exact, so the unit vectors of a duplicate (antipode)
    are bitwise equal (opposite): their angle is exactly 0 (pi), and only the norms' product and
    the scale round, a few ulps (rtol 1e-14).
    """
    g = torch.Generator().manual_seed(12)
    n0 = 16
    base = torch.randn(3, n0, dtype=torch.float64, generator=g)
    axes = torch.eye(n0, dtype=torch.float64)[:3] * torch.tensor([[1.0], [0.5], [4.0]], dtype=torch.float64)
    x = torch.cat([base, axes])
    z = torch.cat([base, 2 * base, -base, -4 * base, axes])
    norms = torch.outer(x.norm(dim=1), z.norm(dim=1))
    # the exact cosine of every pair by construction: +1, -1, 0 (axes), or None (random pairs)
    cos = np.full((len(x), len(z)), np.nan)
    for i in range(3):
        cos[i, [i, 3 + i]] = 1.0
        cos[i, [6 + i, 9 + i]] = -1.0
    cos[3:, 12:] = np.where(np.eye(3), 1.0, 0.0)
    for depth in (1, 2, 3, 30, 300):
        ref = {c: normalized_mpmath(c, [depth])[depth] for c in (-1.0, 0.0, 1.0)}
        scale = 1 / (n0 * 2 ** (depth - 1))
        k = relu_kernels(x, z, depth, want=("ntk", "nngp"))
        rec = relu_kernels(x, z, depth, want=("ntk", "nngp"), method="sphere")
        for q, key in enumerate(("ntk", "nngp")):
            for c in (-1.0, 0.0, 1.0):
                mask = torch.as_tensor(cos == c)
                expected = float(ref[c][q]) * scale * norms[mask]
                torch.testing.assert_close(k[key][mask], expected, rtol=1e-14, atol=0)
            random = torch.as_tensor(np.isnan(cos))
            torch.testing.assert_close(k[key][random], rec[key][random], rtol=1e-10, atol=0)


def test_depth_lists_stack_the_single_depth_results():
    g = torch.Generator().manual_seed(13)
    x, z = torch.randn(9, 7, dtype=torch.float64, generator=g), torch.randn(5, 7, dtype=torch.float64, generator=g)
    depths = [30, 1, 2, 7, 100]
    for method, beta in (("table", 0.0), ("sphere", 0.0), ("theorem1", 0.2)):
        want = ("nngp", "ntk") + (("ntk_bar",) if beta == 0 else ())
        stack = relu_kernels(x, z, depths, beta=beta, method=method, want=want)
        for i, depth in enumerate(depths):
            single = relu_kernels(x, z, depth, beta=beta, method=method, want=want)
            for key in want:
                assert stack[key].shape == (len(depths), 9, 5)
                if method == "table":
                    # one grid for the list (its spacing set by L = 100) against one per depth:
                    # two interpolants of the same function, each within ~1e-15 of it
                    torch.testing.assert_close(stack[key][i], single[key], rtol=1e-14, atol=1e-300)
                else:  # the same operations in the same order
                    assert torch.equal(stack[key][i], single[key])
    assert relu_ntk(x, depth=[4]).shape == (1, 9, 9)
    for bad in ([], [0], [3, 2.5], [True]):
        with pytest.raises(ValueError, match="depth"):
            relu_ntk(x, depth=bad)


def test_biases_take_the_literal_recursion():
    """With beta > 0 the kernel is not a function of the cosine: 'auto' runs Theorem 1 literally."""
    x = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    auto = relu_kernels(x, depth=6, beta=0.3)
    literal = relu_kernels(x, depth=6, beta=0.3, method="theorem1")
    for key in ("nngp", "ntk"):
        assert torch.equal(auto[key], literal[key])
    for method in ("table", "sphere"):
        with pytest.raises(ValueError, match="beta"):
            relu_kernels(x, depth=6, beta=0.3, method=method)


@pytest.mark.parametrize("depth", [3, 30, 300])
def test_table_reproduces_its_extended_precision_recursion_between_nodes(depth):
    """The piecewise polynomials against the recursion they were built from, at angles that are
    not nodes (dense, and geometric towards 0 where the grid is graded).  Both ends are exact:
    theta = 0 is the first piece's s = 0, where Horner returns the constant coefficient.
    With numpy's 80-bit longdouble the fit is at float64 rounding (measured <= 7.6e-16);
    without extended precision the build points carry ~L ulps, hence the looser bound."""
    from lazydrift.kernel_table import angle_recursion, depth_table
    table = depth_table((depth,))
    theta = np.concatenate([np.linspace(0, np.pi, 1201)[1:], np.geomspace(1e-12, 1, 300)])
    exact = angle_recursion(theta.astype(np.longdouble), [depth])[depth]
    idx, s = table.locate(torch.tensor(theta))
    bound = 2e-15 if np.finfo(np.longdouble).eps < 1e-18 else 1e-13
    for q in (0, 1):
        ours = table.evaluate(0, q, idx, s).numpy()
        rel = np.abs(ours - exact[q].astype(np.float64)) / np.abs(exact[q].astype(np.float64))
        assert rel.max() <= bound, (q, rel.max())
    zero = table.locate(torch.zeros(1, dtype=torch.float64))
    assert table.evaluate(0, 0, *zero).item() == depth and table.evaluate(0, 1, *zero).item() == 1.0


def test_symmetric_tiles_equal_full_computation_and_are_exactly_symmetric():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(37, 6, dtype=torch.float64, generator=g)
    full = relu_ntk(x, x.clone(), depth=9)  # z given: every entry computed directly
    for bs in (1, 4, 10, 37, 100):
        sym = relu_ntk(x, depth=9, block_size=bs)
        assert torch.equal(sym, sym.T)
        # with z given, x_i against itself is a pair at distance 0: angle 0 exactly, like z=None
        torch.testing.assert_close(sym, full, rtol=1e-14, atol=0)
        torch.testing.assert_close(sym.diagonal(), 9 * x.norm(dim=1) ** 2 / (6 * 2 ** 8), rtol=1e-14, atol=0)
    assert (normalized_kernel(x, depth=9).diagonal() == 1).all()


def test_homogeneity_proposition_2():
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(6, 8, dtype=torch.float64, generator=g), torch.randn(5, 8, dtype=torch.float64, generator=g)
    torch.testing.assert_close(relu_ntk(3 * x, 0.5 * z, depth=7), 1.5 * relu_ntk(x, z, depth=7), rtol=1e-13, atol=0)
    # the normalized kernel only sees directions
    torch.testing.assert_close(normalized_kernel(3 * x, z, depth=7), normalized_kernel(x, 2 * z, depth=7),
                               rtol=1e-13, atol=0)


def test_float32_option_and_validation():
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(6))
    k64 = relu_ntk(x, depth=4)
    for method in ("table", "sphere"):
        k32 = relu_ntk(x, depth=4, dtype=torch.float32, method=method)
        assert k32.dtype == torch.float32 and k64.dtype == torch.float64
        torch.testing.assert_close(k32.double(), k64, rtol=1e-4, atol=1e-7)
    # colinear inputs in float32 too: the angle from the vectors' distance is at most (n0 + 6)
    # float32 ulps of 1/2, 6.6e-7 for n0 = 5, so by test_proposition_1's bound (L - 1) theta / (2 pi)
    # the kernel is off by at most 3e-6 at L = 30 (plus a few float32 roundings of the product)
    pts = torch.cat([x[:1], 2.5 * x[:1], 0.3 * x[:1]])
    norms = pts.double().norm(dim=1)
    colinear = relu_ntk(pts, depth=30, dtype=torch.float32).double()
    torch.testing.assert_close(colinear, 30 * torch.outer(norms, norms) / (5 * 2 ** 29), rtol=4e-6, atol=0)
    with pytest.raises(ValueError, match="depth"):
        relu_ntk(x, depth=0)
    with pytest.raises(ValueError, match="columns"):
        relu_ntk(x, torch.randn(3, 4), depth=2)
    with pytest.raises(ValueError, match="beta"):
        relu_kernels(x, depth=2, beta=0.1, method="sphere")
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x\[3\] contains NaN"):
        relu_ntk(bad, depth=3)
    with pytest.raises(ValueError, match=r"z\[3\] contains NaN"):
        relu_ntk(x, bad, depth=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(300, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x[7] = -2 * x[3]  # an antipode: the near-parallel path runs on the device too
    for method in ("table", "sphere"):
        torch.testing.assert_close(relu_ntk(x.cuda(), depth=20, method=method).cpu(), relu_ntk(x, depth=20, method=method),
                                   rtol=1e-12, atol=0)
    stack = relu_kernels(x.cuda(), x[:40].cuda(), [1, 2, 30], want=("nngp", "ntk_bar"))
    cpu = relu_kernels(x, x[:40], [1, 2, 30], want=("nngp", "ntk_bar"))
    for key in cpu:
        torch.testing.assert_close(stack[key].cpu(), cpu[key], rtol=1e-12, atol=0)


# -- depth limits ---------------------------------------------------------------------------------
def test_lemma_1_and_theorem_2_limit_one_quarter():
    """rho^(L) -> 1 (Lemma 1) and the normalized off-diagonal entries -> 1/4 (Theorem 2)."""
    rhos = np.array([-0.99, -0.5, 0.0, 0.5, 0.9, 0.99])
    stack = normalized_kernel_recurrence(rhos, 3000, all_depths=True)
    assert np.all(1 - correlations(rhos, 3000)[-1] < 1e-5)
    dist = np.abs(stack - 0.25)
    assert dist[-1].max() < 0.02  # rho = 0.99 is the slowest (Corollary 1: needs L >> 1/sqrt(1 - rho^(2)))
    assert dist[-1, :4].max() < 2e-3


def log_rate(depths, excess):
    """Least-squares coefficient A of log L in L (Theta-bar^(L) - 1/4) = A log L + B + C log(L)/L
    + D/L (the 1/L corrections of the expansion in kernel_table's docstring)."""
    L = np.asarray(depths, dtype=np.float64)
    design = np.stack([np.log(L), np.ones_like(L), np.log(L) / L, 1 / L], axis=1)
    return np.linalg.lstsq(design, np.asarray(excess, dtype=np.float64), rcond=None)[0][0]


def test_theorem_2_rate_is_three_eighths_log_L():
    """L (Theta-bar^(L) - 1/4) = (3/8) log L + B(rho^(1)) + o(1) (derivation: kernel_table's
    docstring), not O(1): the coefficient of log L fitted over L = 300..20000 is 3/8 to 1e-3 for
    separated pairs.  This is the angle recursion in float64 (a few ulps per layer: T^(L) off by
    ~L^2 1e-16 < 1e-7 at L = 2e4, far below the 1e-3 asked); the 50-digit check is the slow test
    below."""
    from lazydrift.kernel_table import angle_recursion
    rhos = np.array([-0.5, 0.0, 0.5])
    depths = np.unique(np.geomspace(300, 20000, 40).astype(int))
    res = angle_recursion(np.arccos(rhos), depths, dtype=np.float64)
    for i, rho in enumerate(rhos):
        excess = [res[L][0][i] - L / 4 for L in depths]
        assert log_rate(depths, excess) == pytest.approx(3 / 8, abs=1e-3), rho


@pytest.mark.slow
def test_theorem_2_rate_against_50_digit_proposition_5():
    """The same coefficient from Proposition 5 run in 50-digit mpmath to L = 1e5 (~7 s), fitted
    over L = 1000..1e5: 3/8 to 1e-3 (measured 0.37498)."""
    depths = np.unique(np.geomspace(1000, 100000, 30).astype(int)).tolist()
    res = normalized_mpmath(0.0, depths)
    assert log_rate(depths, [float(res[L][0] - L / 4) for L in depths]) == pytest.approx(3 / 8, abs=1e-3)


# -- Monte Carlo over a finite network ------------------------------------------------------------
def hidden_outputs(model, x):
    from lazydrift import extract_features  # imported here: this section is the only user

    feats = extract_features(model, x, [f"hidden.{k}" for k in range(model.hidden_layers)])
    return {k: feats[f"hidden.{k}"] for k in range(model.hidden_layers)}


def test_nngp_monte_carlo_one_hidden_layer():
    """Sigma^(2)(x, x') = E_readout[f(x) f(x')] = E[h(x).h(x')] / width over the hidden units.

    Given the hidden layer, Cov(f(x), f(x')) = h(x).h(x') / w exactly; the units are i.i.d., and
    Var[relu(u) relu(u')] <= E[relu(u)^4]^(1/2) E[relu(u')^4]^(1/2) = 3/2 q q', so the estimate's
    s.d. is at most sqrt(1.5 / w) sqrt(q q'); we allow 5 s.d.
    """
    n0, width = 16, 1 << 16
    model = NTKMLP(n0, width, 1, hidden_layers=1, seed=0, dtype=torch.float64)
    x = torch.randn(6, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    feats = hidden_outputs(model, x)[0]
    estimate = feats @ feats.T / width
    q = x.norm(dim=1) ** 2 / n0
    tol = 5 * math.sqrt(1.5 / width) * torch.sqrt(torch.outer(q, q))
    err = (estimate - relu_nngp(x, depth=2)).abs()
    assert (err <= tol).all(), (err / tol).max()


def test_feature_cosines_monte_carlo_deep_network():
    """Post-ReLU cosines at hidden.k of a wide NTKMLP match feature_cosine(rho1, k).

    Finite-width fluctuations are O(1/sqrt(width)) per layer and add up over layers; with
    width 4096 we allow 4/sqrt(width) = 0.0625, less than half the gap between consecutive
    layers' predictions for these inputs (so an off-by-one layer index would fail).
    Includes one-hot inputs (rho1 = 0, footnote 5) with input_scale="embedding".
    """
    width, hidden_layers = 4096, 3
    n0 = 24
    g = torch.Generator().manual_seed(9)
    base = torch.randn(1, n0, dtype=torch.float64, generator=g)
    x = torch.cat([base, base + 0.8 * torch.randn(1, n0, dtype=torch.float64, generator=g),
                   torch.randn(2, n0, dtype=torch.float64, generator=g)])
    xu = x / x.norm(dim=1, keepdim=True)
    rho1 = (xu @ xu.T).clamp(-1, 1).numpy()
    model = NTKMLP(n0, width, 1, hidden_layers=hidden_layers, seed=1, dtype=torch.float64)
    feats = hidden_outputs(model, x)
    onehot = NTKMLP(50, width, 1, hidden_layers=hidden_layers, input_scale="embedding", seed=2, dtype=torch.float64)
    feats_1h = hidden_outputs(onehot, torch.tensor([3, 17, 40]))
    tol = 4 / math.sqrt(width)
    iu = np.triu_indices(len(x), 1)
    for k in range(hidden_layers):
        f = feats[k] / feats[k].norm(dim=1, keepdim=True)
        measured = (f @ f.T).numpy()[iu]
        predicted = feature_cosine(rho1[iu], k)
        assert np.abs(measured - predicted).max() < tol, (k, measured, predicted)
        f1 = feats_1h[k] / feats_1h[k].norm(dim=1, keepdim=True)
        m1 = (f1 @ f1.T).numpy()[np.triu_indices(3, 1)]
        assert np.abs(m1 - feature_cosine(0.0, k)).max() < tol, (k, m1)
        # the pre-activation correlation h^k(rho1) is not what the post-ReLU features show
        assert np.abs(m1 - feature_cosine(0.0, k, post_activation=False)).min() > tol


# -- optional oracle: neural-tangents in its own venv -------------------------------------------
NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"
NT_CASES = [(3, 0.0), (12, 0.0), (5, 0.4)]  # (depth, beta); W_std = 1.3
NT_SNIPPET = r"""
import sys, numpy as np, jax
jax.config.update("jax_enable_x64", True)
from neural_tangents import stax
x, z = np.load(sys.argv[1]), np.load(sys.argv[2])
out = []
for L, b in %r:
    layers = []
    for _ in range(L - 1):
        layers += [stax.Dense(64, W_std=1.3, b_std=b or None, parameterization="ntk"), stax.Relu()]
    layers += [stax.Dense(1, W_std=1.3, b_std=b or None, parameterization="ntk")]
    k = stax.serial(*layers)[2](x, z, ("nngp", "ntk"))
    out.append(np.stack([np.asarray(k.nngp), np.asarray(k.ntk)]))
np.save(sys.argv[3], np.stack(out))
""" % (NT_CASES,)


@pytest.fixture(scope="module")
def nt_kernels(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nt")
    rng = np.random.default_rng(10)
    x, z = rng.standard_normal((7, 30)), rng.standard_normal((5, 30))
    np.save(tmp / "x.npy", x)
    np.save(tmp / "z.npy", z)
    subprocess.run([str(NT_PYTHON), "-c", NT_SNIPPET, str(tmp / "x.npy"), str(tmp / "z.npy"), str(tmp / "k.npy")],
                   check=True, capture_output=True)
    return x, z, np.load(tmp / "k.npy")


@pytest.mark.skipif(not NT_PYTHON.exists(), reason="neural-tangents oracle not installed in .venv-nt")
@pytest.mark.parametrize("case", range(len(NT_CASES)))
def test_agrees_with_neural_tangents(nt_kernels, case):
    """stax: L Dense layers (W_std^2 = sigma_w2, b_std = beta, 'ntk') = the paper's depth L."""
    x, z, ref = nt_kernels
    depth, beta = NT_CASES[case]
    ours = relu_kernels(x, z, depth, sigma_w2=1.3 ** 2, beta=beta)
    np.testing.assert_allclose(ours["nngp"].numpy(), ref[case, 0], rtol=1e-10)
    np.testing.assert_allclose(ours["ntk"].numpy(), ref[case, 1], rtol=1e-10)


# -- the figures' numbers (small sizes) -----------------------------------------------------------
@pytest.mark.slow
def test_figure_numbers_against_direct_computations(tmp_path):
    import pandas as pd

    from lazydrift import figures
    from lazydrift.regression import gradient_descent_mse

    # Figure 7 (the tabulated matrix route) against the elementwise Proposition 5 recurrence on the
    # cosines: entries agree to ~1e-15, so eigenvalues to n * 1e-15 (Weyl)
    figures.figure7(tmp_path, [20, 40], n0=8, max_depth=5)
    f7 = pd.read_csv(tmp_path / "figure7.csv")
    for n in (20, 40):
        X = figures.uniform_sphere(n, 8, n)
        cos = (X @ X.T).clamp(-1, 1).numpy()
        np.fill_diagonal(cos, 1.0)
        for L in (1, 2, 5):
            lam = np.linalg.eigvalsh(normalized_kernel_recurrence(cos, L))[0]
            assert f7[(f7.n == n) & (f7.depth == L)].lambda_min.item() == pytest.approx(lam, abs=1e-12)
    assert (f7.groupby("n").lambda_min.diff().dropna() > 0).all()  # increases with depth (section 6.4)

    # Figure 8: brute-force maximum cosine and Definition 5 written out
    figures.figure8(tmp_path, [16, 64], n0=8, seeds=(0,))
    f8 = pd.read_csv(tmp_path / "figure8.csv")
    for _, row in f8.iterrows():
        X = figures.uniform_sphere(int(row.n), 8, int(row.n)).numpy()
        c = (X @ X.T)[~np.eye(len(X), dtype=bool)].max()
        hc = c * np.arcsin(c) / np.pi + np.sqrt(1 - c * c) / np.pi + c / 2
        assert row.depth_bound == pytest.approx(1 / np.sqrt(1 - hc), rel=1e-12)

    # Figure 6: t = 0 gives 0; the norm at t_max is the row norm of the projection operator
    X, Xt = figures.uniform_sphere(30, 8, 1), figures.uniform_sphere(5, 8, 2)
    y = torch.sign(torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    figures.figure6(tmp_path, {"synthetic": (X, y, Xt)}, [30], depths=[2, 4])
    f6 = pd.read_csv(tmp_path / "figure6.csv")
    assert (f6[f6.t == 0].operator_norm == 0).all()
    last = f6[(f6.depth == 4) & (f6.t == f6.t_max)].iloc[0]
    K, k = normalized_kernel(X, depth=4), normalized_kernel(Xt, X, depth=4)
    assert last.t_max == math.ceil(1 / torch.linalg.eigvalsh(K)[0].item())
    # the operator and the term by plain linear algebra: K^-1 (exp(-tK) - I) via torch's matrix_exp
    # (K's condition number is ~1e2 here, so a solve keeps ~1e-13; rel 1e-8 leaves room for expm)
    t = float(last.t_max)
    op = k @ torch.linalg.solve(K, torch.linalg.matrix_exp(-t * K) - torch.eye(30, dtype=K.dtype))
    assert last.operator_norm == pytest.approx(op.norm(dim=1).mean().item(), rel=1e-8)
    assert last.term_norm == pytest.approx((op @ -y).abs().mean().item(), rel=1e-8)
    assert gradient_descent_mse(K, y).projection_norm(k, [t])[0].mean().item() == pytest.approx(last.operator_norm)

    # Figures 2, 4 and Theorem 2's table: shapes and the first depth equal to the input cosine
    figures.figure2(tmp_path, max_depth=20)
    f2 = pd.read_csv(tmp_path / "figure2.csv")
    np.testing.assert_allclose(f2[f2.depth == 1].theta_bar, [0.0, 0.5, 0.9, 0.99])
    figures.figure4_5(tmp_path, X[:6], Xt[0], "synthetic", max_depth=7)
    f4 = pd.read_csv(tmp_path / "figure4.csv")
    assert len(f4) == 3 * (15 + 6) * 7
    # the kernels of the pairs against Proposition 5 and h iterated, on the same cosines
    pairs = f4[(f4.pairs == "X-X") & (f4.depth == 7)].sort_values(["i", "j"])
    cos = (X[:6] @ X[:6].T).clamp(-1, 1).numpy()[pairs.i[pairs.kernel == "theta_bar"], pairs.j[pairs.kernel == "theta_bar"]]
    np.testing.assert_allclose(pairs[pairs.kernel == "theta_bar"].value, normalized_kernel_recurrence(cos, 7), atol=1e-13)
    np.testing.assert_allclose(pairs[pairs.kernel == "rho"].value, correlations(cos, 7)[-1], atol=1e-13)
    figures.theorem2_rate(tmp_path, max_depth=300)
    # the PNGs: decodable, of the size asked for (inches x dpi 150), and not blank
    import matplotlib.image
    for name, size in (("figure2", (7.2, 2.0)), ("figure4", (7.2, 6.0)), ("figure6", (7.2, 2.9)),
                       ("figure7", (7.2, 2.6)), ("theorem2_rate", (7.2, 2.6))):
        img = matplotlib.image.imread(tmp_path / f"{name}.png")
        assert img.shape[:2] == (round(size[1] * 150), round(size[0] * 150)), (name, img.shape)
        assert img[..., :3].std() > 0.05, name


def test_eta_kernel_converges_to_the_fixed_point_of_g():
    from lazydrift.kernels import eta_recurrence
    # the fixed point of g(z) = (1 + e^-z)^-2 by bisection (g(z) - z changes sign on [0, 1])
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 + math.exp(-mid)) ** -2 > mid else (lo, mid)
    np.testing.assert_allclose(eta_recurrence(np.array([-1.0, 0.0, 0.7, 1.0]), 60), lo, atol=1e-12)
