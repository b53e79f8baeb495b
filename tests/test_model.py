"""NTKMLP: lookup = dense one-hot product, init statistics vs closed forms, fused SGD = torch SGD."""

import math

import pytest
import torch
from torch.nn import functional as F

from lazydrift import NTKMLP, extract_features, fused_sgd, mse_loss


@pytest.mark.parametrize("input_scale", ["fan_in", "embedding"])
def test_token_lookup_equals_dense_one_hot_product(input_scale):
    model = NTKMLP(50, 64, 7, depth=2, input_scale=input_scale, seed=0, dtype=torch.float64)
    ids = torch.tensor([0, 3, 3, 49, 17])
    dense = F.one_hot(ids, 50).double()
    # the first layer alone: a row lookup vs the V-by-width product
    first = model.hidden[0][0]
    scale = 1.0 if input_scale == "embedding" else 1 / math.sqrt(50)
    torch.testing.assert_close(first(ids), dense @ first.weight * scale, rtol=0, atol=1e-14)
    torch.testing.assert_close(model(ids), model(dense), rtol=1e-12, atol=1e-12)


def test_module_names_and_last_hidden():
    model = NTKMLP(10, 8, 3, depth=3, seed=0)
    names = dict(model.named_modules())
    assert {"hidden.0", "hidden.1", "hidden.2", "readout"} <= names.keys()
    assert model.last_hidden == "hidden.2"
    # hidden.k's output is post-ReLU: non-negative, and zero exactly where its pre-activation is not positive
    feats = extract_features(model, torch.randn(5, 10), ["hidden.1.0", "hidden.1"])
    pre, post = feats["hidden.1.0"], feats["hidden.1"]
    assert (post >= 0).all() and (post > 0).any()
    assert torch.equal(post, pre.clamp(min=0))


def test_seed_reproducible_and_private():
    state = torch.random.get_rng_state()
    a = NTKMLP(20, 16, 4, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    b = NTKMLP(20, 16, 4, seed=3)
    c = NTKMLP(20, 16, 4, seed=4)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_init_preactivation_variance_matches_proposition_1():
    """Pre-activations at layer l have variance ||x||^2 / (n0 2^(l-1)) (Prop. 1, Definition 1).

    Each neuron's pre-activation is a sum over a width-n layer, so across n = 4000 neurons the
    sample variance has relative s.e. sqrt(2/n) ~ 2.2%; we allow 4 s.e. per layer and input.
    """
    n0, width = 30, 4000
    model = NTKMLP(n0, width, 1, depth=3, seed=0, dtype=torch.float64)
    x = torch.randn(4, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2.0
    feats = extract_features(model, x, [f"hidden.{k}.0" for k in range(3)])
    pre = {k: feats[f"hidden.{k}.0"] for k in range(3)}
    tol = 4 * math.sqrt(2 / width)
    for k in range(3):
        expected = (x.pow(2).sum(1) / (n0 * 2**k))
        var = pre[k].pow(2).mean(1)  # mean-zero Gaussian: E z^2 is the variance
        assert torch.all((var / expected - 1).abs() < tol), (k, var / expected)
        assert pre[k].mean(1).abs().max() < 4 * expected.sqrt().max() / math.sqrt(width)


def _sgd_pair(parameterization, inputs, targets, lr, steps=3):
    torch.manual_seed(0)
    a = NTKMLP(12, 32, 5, depth=2, parameterization=parameterization, input_scale="embedding", seed=1, dtype=torch.float64)
    b = NTKMLP(12, 32, 5, depth=2, parameterization=parameterization, input_scale="embedding", seed=1, dtype=torch.float64)
    opt = torch.optim.SGD(b.param_groups(lr), lr=lr)
    for _ in range(steps):
        with fused_sgd(a, lr):
            mse_loss(a(inputs), targets).backward()
        opt.zero_grad()
        mse_loss(b(inputs), targets).backward()
        opt.step()
    return a, b


@pytest.mark.parametrize("parameterization", ["ntk", "mup", "standard"])
@pytest.mark.parametrize("kind", ["ids", "dense"])
def test_fused_sgd_equals_torch_sgd(parameterization, kind):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(12, (9,), generator=g)
    inputs = ids if kind == "ids" else torch.randn(9, 12, generator=g, dtype=torch.float64)
    targets = torch.randint(5, (9,), generator=g)
    a, b = _sgd_pair(parameterization, inputs, targets, lr=0.3)
    moved = False
    init = NTKMLP(12, 32, 5, depth=2, parameterization=parameterization, input_scale="embedding", seed=1, dtype=torch.float64)
    for pa, pb, p0 in zip(a.parameters(), b.parameters(), init.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
        assert pa.grad is None  # fused: no gradient tensor
        moved |= not torch.equal(pa, p0)
    assert moved


def test_mse_loss_ids_equal_dense_one_hot():
    out = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 3, 3, 2, 0])
    dense = F.one_hot(y, 4).double()
    expected = 0.5 * ((out - dense) ** 2).sum(1).mean()
    torch.testing.assert_close(mse_loss(out, y), expected)
    torch.testing.assert_close(mse_loss(out, dense), expected)


def test_check_input_names_expected_shape():
    model = NTKMLP(10, 8, 3, seed=0)
    with pytest.raises(ValueError, match=r"\(batch, 10\)"):
        model.check_input(torch.randn(4, 11))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        model.check_input(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="dtype"):
        model.check_input(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="width"):
        NTKMLP(10, 0, 3)


def test_mse_loss_gradient_matches_autograd_of_the_formula():
    g = torch.Generator().manual_seed(3)
    out = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 5, 2, 2, 1])
    mse_loss(out, y).backward()
    ref = out.detach().clone().requires_grad_(True)
    (0.5 * ((ref - F.one_hot(y, 6).double()) ** 2).sum(1).mean()).backward()
    torch.testing.assert_close(out.grad, ref.grad)
    assert torch.autograd.gradcheck(lambda o: mse_loss(o, y), (ref.detach().clone().requires_grad_(True),))
