"""lazydrift.kernels against independent references.

References: closed forms (Proposition 1, Sheppard's orthant formula, h(0) = 1/pi), numerical
integration of Definition 1's Gaussian expectations, a 50-digit mpmath run of Theorem 1, the
elementwise Proposition 5 recurrence, Monte Carlo over a wide NTKMLP, and (optionally)
neural-tangents.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lazydrift import NTKMLP
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
    integrate = pytest.importorskip("scipy.integrate")
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
    """Colinear x, x' = a x: Sigma^(L) = |x||x'| / (n0 2^(L-1)), Theta^(L) = L |x||x'| / (n0 2^(L-1))."""
    n0 = 13
    x = torch.randn(1, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pts = torch.cat([x, 2.5 * x, 0.3 * x])
    norms = pts.norm(dim=1)
    expected_nngp = torch.outer(norms, norms) / (n0 * 2 ** (depth - 1))
    torch.testing.assert_close(relu_nngp(pts, depth=depth), expected_nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(relu_ntk(pts, depth=depth), depth * expected_nngp, rtol=1e-13, atol=0)
    # Definition 4 then gives exactly 1
    torch.testing.assert_close(normalized_kernel(pts, depth=depth), torch.ones(3, 3, dtype=torch.float64),
                               rtol=0, atol=1e-14)


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
    mpmath = pytest.importorskip("mpmath")
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


# -- the two routes, options, blocks --------------------------------------------------------------
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
def test_sphere_fast_path_equals_literal_theorem_1(sigma_w2, input_scale):
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(23, 11, dtype=torch.float64, generator=g) * 3, torch.randn(9, 11, dtype=torch.float64, generator=g)
    x[4] = 0.0  # a zero input: its row is 0
    for zz in (None, z):
        a = relu_kernels(x, zz, 6, sigma_w2=sigma_w2, input_scale=input_scale, method="sphere", block_size=5)
        b = relu_kernels(x, zz, 6, sigma_w2=sigma_w2, input_scale=input_scale, method="theorem1", block_size=7)
        for key in ("nngp", "ntk"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-300)
        assert (a["ntk"][4] == 0).all()


def test_symmetric_blocks_equal_full_computation_and_are_exactly_symmetric():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(37, 6, dtype=torch.float64, generator=g)
    full = relu_ntk(x, x.clone(), depth=9)  # z given: every entry computed directly
    off = ~torch.eye(37, dtype=torch.bool)
    for bs in (1, 4, 10, 37, 100):
        sym = relu_ntk(x, depth=9, block_size=bs)
        assert torch.equal(sym, sym.T)
        torch.testing.assert_close(sym[off], full[off], rtol=1e-13, atol=0)
        # with z given, x_i against itself has cosine 1 - 2^-52 at worst, whose arccos is 2.1e-8:
        # each layer then loses up to 2.1e-8/pi (as in neural-tangents), 8 layers ~5e-8;
        # z=None knows the diagonal and sets it to exactly 1
        torch.testing.assert_close(sym.diagonal(), full.diagonal(), rtol=1e-7, atol=0)
        torch.testing.assert_close(sym.diagonal(), 9 * x.norm(dim=1) ** 2 / (6 * 2 ** 8), rtol=1e-14, atol=0)


def test_homogeneity_proposition_2():
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(6, 8, dtype=torch.float64, generator=g), torch.randn(5, 8, dtype=torch.float64, generator=g)
    torch.testing.assert_close(relu_ntk(3 * x, 0.5 * z, depth=7), 1.5 * relu_ntk(x, z, depth=7), rtol=1e-13, atol=0)
    # the normalized kernel only sees directions
    torch.testing.assert_close(normalized_kernel(3 * x, z, depth=7), normalized_kernel(x, 2 * z, depth=7),
                               rtol=1e-13, atol=0)


def test_float32_option_and_validation():
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(6))
    k32 = relu_ntk(x, depth=4, dtype=torch.float32)
    k64 = relu_ntk(x, depth=4)
    assert k32.dtype == torch.float32 and k64.dtype == torch.float64
    torch.testing.assert_close(k32.double(), k64, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="depth"):
        relu_ntk(x, depth=0)
    with pytest.raises(ValueError, match="columns"):
        relu_ntk(x, torch.randn(3, 4), depth=2)
    with pytest.raises(ValueError, match="beta"):
        relu_kernels(x, depth=2, beta=0.1, method="sphere")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(300, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(relu_ntk(x.cuda(), depth=20).cpu(), relu_ntk(x, depth=20), rtol=1e-12, atol=0)


# -- depth limits ---------------------------------------------------------------------------------
def test_lemma_1_and_theorem_2_limit_one_quarter():
    """rho^(L) -> 1 (Lemma 1) and the normalized off-diagonal entries -> 1/4 (Theorem 2)."""
    rhos = np.array([-0.99, -0.5, 0.0, 0.5, 0.9, 0.99])
    depths = np.arange(1, 3001)
    stack = normalized_kernel_recurrence(rhos, 3000, all_depths=True)
    assert np.all(1 - correlations(rhos, 3000)[-1] < 1e-5)
    dist = np.abs(stack - 0.25)
    assert dist[-1].max() < 0.02  # rho = 0.99 is the slowest (Corollary 1: needs L >> 1/sqrt(1 - rho^(2)))
    assert dist[-1, :4].max() < 2e-3
    # the rate: L |Theta-bar - 1/4| is not bounded but grows like c log L (measured c ~ 0.38, the
    # same for every rho), i.e. the distance is Theta(log L / L), not O(1/L) as Theorem 2 states.
    scaled = depths[:, None] * dist
    slope = (scaled[2999] - scaled[999]) / math.log(3)
    assert np.all((slope > 0.3) & (slope < 0.45)), slope
    assert np.ptp(slope[:5]) < 0.02  # the same c for all separated pairs
    # L |.| / log L decreases from L = 300 on (towards c), so C(rho) log L / L bounds the distance
    ratio = scaled[1:] / np.log(depths[1:, None])
    assert np.all(ratio[-1] < ratio[298])


# -- Monte Carlo over a finite network ------------------------------------------------------------
def hidden_outputs(model, x):
    from lazydrift import extract_features  # imported here: this section is the only user

    feats = extract_features(model, x, [f"hidden.{k}" for k in range(model.depth)])
    return {k: feats[f"hidden.{k}"] for k in range(model.depth)}


def test_nngp_monte_carlo_one_hidden_layer():
    """Sigma^(2)(x, x') = E_readout[f(x) f(x')] = E[h(x).h(x')] / width over the hidden units.

    Given the hidden layer, Cov(f(x), f(x')) = h(x).h(x') / w exactly; the units are i.i.d., and
    Var[relu(u) relu(u')] <= E[relu(u)^4]^(1/2) E[relu(u')^4]^(1/2) = 3/2 q q', so the estimate's
    s.d. is at most sqrt(1.5 / w) sqrt(q q'); we allow 5 s.d.
    """
    n0, width = 16, 1 << 16
    model = NTKMLP(n0, width, 1, depth=1, seed=0, dtype=torch.float64)
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
    width, depth = 4096, 3
    n0 = 24
    g = torch.Generator().manual_seed(9)
    base = torch.randn(1, n0, dtype=torch.float64, generator=g)
    x = torch.cat([base, base + 0.8 * torch.randn(1, n0, dtype=torch.float64, generator=g),
                   torch.randn(2, n0, dtype=torch.float64, generator=g)])
    xu = x / x.norm(dim=1, keepdim=True)
    rho1 = (xu @ xu.T).clamp(-1, 1).numpy()
    model = NTKMLP(n0, width, 1, depth=depth, seed=1, dtype=torch.float64)
    feats = hidden_outputs(model, x)
    onehot = NTKMLP(50, width, 1, depth=depth, input_scale="embedding", seed=2, dtype=torch.float64)
    feats_1h = hidden_outputs(onehot, torch.tensor([3, 17, 40]))
    tol = 4 / math.sqrt(width)
    iu = np.triu_indices(len(x), 1)
    for k in range(depth):
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
def test_figure_numbers_against_direct_computations(tmp_path):
    import pandas as pd

    from lazydrift import figures
    from lazydrift.regression import projection_operator

    # Figure 7: the elementwise Proposition 5 route vs eigenvalues of the matrix route
    figures.figure7(tmp_path, [20, 40], n0=8, max_depth=5)
    f7 = pd.read_csv(tmp_path / "figure7.csv")
    for n in (20, 40):
        X = figures.uniform_sphere(n, 8, n)
        for L in (2, 5):
            lam = torch.linalg.eigvalsh(normalized_kernel(X, depth=L))[0].item()
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
    op = projection_operator(K, k, last.t_max)
    assert last.operator_norm == pytest.approx(op.norm(dim=1).mean().item(), rel=1e-10)
    assert last.term_norm == pytest.approx((op @ -y).abs().mean().item(), rel=1e-10)

    # Figures 2, 4 and Theorem 2's table: shapes and the first depth equal to the input cosine
    figures.figure2(tmp_path, max_depth=20)
    f2 = pd.read_csv(tmp_path / "figure2.csv")
    np.testing.assert_allclose(f2[f2.depth == 1].theta_bar, [0.0, 0.5, 0.9, 0.99])
    figures.figure4_5(tmp_path, X[:6], Xt[0], "synthetic", max_depth=7)
    f4 = pd.read_csv(tmp_path / "figure4.csv")
    assert len(f4) == 3 * (15 + 6) * 7
    figures.theorem2_rate(tmp_path, max_depth=300)
    assert (tmp_path / "theorem2_rate.png").stat().st_size > 0


def test_eta_kernel_converges_to_the_fixed_point_of_g():
    from lazydrift.figures import eta_recurrence
    # the fixed point of g(z) = (1 + e^-z)^-2 by bisection (g(z) - z changes sign on [0, 1])
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 + math.exp(-mid)) ** -2 > mid else (lo, mid)
    np.testing.assert_allclose(eta_recurrence(np.array([-1.0, 0.0, 0.7, 1.0]), 60), lo, atol=1e-12)
