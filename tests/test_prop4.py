"""Proposition 4's objects on real networks: the expansion (1) adds up, and at initialization the
feature cosines follow the correlation recursion rho^(l+1) = h(rho^(l)) (Prop. 2, footnote 5)."""

import math

import numpy as np
import torch

from lazydrift import NTKMLP, DriftRecorder, fused_sgd, mse_loss
from lazydrift.kernels import feature_cosine


def test_expansion_adds_up_during_training():
    model = NTKMLP(40, 256, 40, input_scale="embedding", seed=0, dtype=torch.float64)
    rec = DriftRecorder(model, layers=["hidden.0", "hidden.1"], probes=torch.arange(12), pairs="all")
    g = torch.Generator().manual_seed(0)
    with rec:
        for step in range(1, 6):
            x, y = torch.randint(40, (16,), generator=g), torch.randint(40, (16,), generator=g)
            with fused_sgd(model, 1.0):
                mse_loss(model(x), y).backward()
            rec.record(step)
        h = rec.features()
    gram = rec.gram_frame()
    total = gram.inner0 + gram.cross + gram.quadratic
    np.testing.assert_allclose(total, gram.inner, rtol=1e-10)
    last = gram[(gram.step == 5) & (gram.layer == "hidden.1")]
    H = h["hidden.1"].numpy()
    np.testing.assert_allclose(last.inner, (H[last.i] * H[last.j]).sum(1), rtol=1e-10)  # a second route
    assert (last.quadratic.abs() > 0).all() and (last.cross.abs() > 0).all()


def _init_cosines(model, probes, layers):
    rec = DriftRecorder(model, layers=layers, probes=probes, pairs="all")
    with rec:
        rec.record(0)
    return rec.gram_frame()


def test_one_hot_cosines_at_init_match_the_recursion():
    """Distinct one-hot tokens: rho^(1) = 0, so hidden.k's cosine is h^(k+1)(0): 1/pi, 0.4937, 0.6048.

    At width n a cosine estimated from n neurons fluctuates by O(1/sqrt(n)) (each is an average
    of n products; the constant is below 1 here) and all pairs share the same random weights, so
    we bound the mean error by 3/sqrt(n) and every pair's error by 6/sqrt(n).
    """
    width = 4096
    model = NTKMLP(30, width, 1, hidden_layers=3, input_scale="embedding", seed=1, dtype=torch.float64)
    gram = _init_cosines(model, torch.arange(30), ["hidden.0", "hidden.1", "hidden.2"])
    # by hand: h(0) = 1/pi; h(1/pi) = (asin(1/pi)/pi + sqrt(1 - 1/pi^2)) / pi + 1/(2 pi) = 0.49373;
    # h(0.49373) = 0.49373 asin(0.49373)/pi + sqrt(1 - 0.49373^2)/pi + 0.49373/2 = 0.60483
    expected = {0: 1 / math.pi, 1: 0.49373, 2: 0.60483}
    for k in range(3):
        g = gram[gram.layer == f"hidden.{k}"]
        assert feature_cosine(0.0, k) == pytest_approx(expected[k])
        err = g.cosine.to_numpy() - expected[k]
        assert abs(err.mean()) < 3 / math.sqrt(width), (k, err.mean())
        assert np.abs(err).max() < 6 / math.sqrt(width), (k, np.abs(err).max())


def test_sphere_inputs_cosines_at_init_match_the_recursion():
    """Inputs on the sphere with cosines spread over (-1, 1): measured vs h^(k+1)(rho^(1))."""
    width = 4096
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 8, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    model = NTKMLP(8, width, 1, hidden_layers=2, seed=3, dtype=torch.float64)
    gram = _init_cosines(model, x, ["hidden.0", "hidden.1"])
    limit = model.limit_kernels(x, want=("feature_cosine",))["feature_cosine"].numpy()  # h^(k+1)(rho^(1))
    for k in range(2):
        gk = gram[gram.layer == f"hidden.{k}"]
        predicted = limit[k, gk.i, gk.j]
        err = gk.cosine.to_numpy() - predicted
        assert np.abs(err).max() < 6 / math.sqrt(width), (k, np.abs(err).max())
        assert np.ptp(predicted) > 0.3  # the check spans a real range of correlations


def pytest_approx(v):
    import pytest

    return pytest.approx(v, abs=5e-5)
