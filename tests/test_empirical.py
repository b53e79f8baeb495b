"""empirical_ntk: exact for a one-hidden-layer net (hand formula), and -> relu_ntk as width grows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lazydrift import NTKMLP
from lazydrift.empirical import empirical_ntk
from lazydrift.kernels import relu_ntk


def mnist_like(n: int, seed: int) -> torch.Tensor:
    """Non-negative, mostly-zero 784-dim vectors on the unit sphere, like normalized MNIST digits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g) * (torch.rand(n, 784, generator=g) < 0.2)
    return x / x.norm(dim=1, keepdim=True)


def test_one_hidden_layer_equals_hand_formula():
    """f(x) = v.relu(W x / sqrt(n0)) / sqrt(w): Theta = [relu(u).relu(u') + (x.x'/n0) sum_i v_i^2 1{u_i>0} 1{u'_i>0}] / w."""
    n0, w = 7, 50
    model = NTKMLP(n0, w, 1, depth=1, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(5, n0, dtype=torch.float64, generator=g), torch.randn(3, n0, dtype=torch.float64, generator=g)
    W = model.hidden[0][0].weight  # (n0, w): u = x W / sqrt(n0)
    v = model.readout.weight[0]
    ux, uz = x @ W / math.sqrt(n0), z @ W / math.sqrt(n0)
    expected = (ux.relu() @ uz.relu().T + (x @ z.T / n0) * (((ux > 0).double() * v ** 2) @ (uz > 0).double().T)) / w
    torch.testing.assert_close(empirical_ntk(model, x, z, batch_size=2), expected.detach(), rtol=1e-12, atol=1e-14)


def test_symmetric_batches_and_output_index():
    model = NTKMLP(6, 20, 3, depth=2, seed=2, dtype=torch.float64)
    x = torch.randn(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    full = empirical_ntk(model, x, x.clone(), output=1, batch_size=9)
    for bs in (1, 4, 20):
        sym = empirical_ntk(model, x, output=1, batch_size=bs)
        assert torch.equal(sym, sym.T)
        torch.testing.assert_close(sym, full, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="output"):
        empirical_ntk(model, x)


def test_any_module_with_a_scalar_output():
    """A plain nn.Linear(bias) model: Theta(x, x') = x.x' + 1 exactly."""
    lin = nn.Linear(4, 1).double()
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(empirical_ntk(lin, x), x @ x.T + 1, rtol=1e-12, atol=1e-14)


def test_converges_to_relu_ntk_like_inverse_sqrt_width():
    """Relative Frobenius error of NTKMLP's NTK at init vs Theta_inf^(3), over widths 128..2048.

    The NTK's fluctuations have s.d. proportional to 1/sqrt(width) (bias O(1/width)), so the
    log-log slope of the mean error should be -1/2.  Averaging 4 seeds x 8 inputs leaves ~15%
    scatter per width, i.e. about 0.08 s.d. on a slope fitted over a 16x range; we accept
    [-0.8, -0.25] (> 3 s.d.) and require the widest net to be within 10%.
    """
    x = mnist_like(8, seed=5)
    ref = relu_ntk(x, depth=3).float()
    widths = [128, 256, 512, 1024, 2048]
    errors = []
    for w in widths:
        errs = [((empirical_ntk(NTKMLP(784, w, 1, depth=2, seed=s), x, batch_size=8) - ref).norm() / ref.norm()).item()
                for s in range(4)]
        errors.append(np.mean(errs))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -0.8 < slope < -0.25, (slope, errors)
    assert errors[-1] < 0.1, errors
