"""NTKMLP: lookup = dense one-hot product, init statistics vs closed forms, fused SGD = torch SGD."""

import math

import pytest
import torch
from torch.nn import functional as F

from lazydrift import NTKMLP, extract_features, fused_sgd, mse_loss
from lazydrift.kernels import INPUT_SCALES
from lazydrift.model import PARAMETERIZATIONS


@pytest.mark.parametrize("input_scale", INPUT_SCALES)
def test_token_lookup_equals_dense_one_hot_product(input_scale):
    model = NTKMLP(50, 64, 7, hidden_layers=2, input_scale=input_scale, seed=0, dtype=torch.float64)
    ids = torch.tensor([0, 3, 3, 49, 17])
    dense = F.one_hot(ids, 50).double()
    # the first layer alone: a row lookup vs the V-by-width product
    first = model.hidden[0][0]
    scale = 1.0 if input_scale == "embedding" else 1 / math.sqrt(50)
    torch.testing.assert_close(first(ids), dense @ first.weight * scale, rtol=0, atol=1e-14)
    torch.testing.assert_close(model(ids), model(dense), rtol=1e-12, atol=1e-12)


def test_module_names_and_last_hidden():
    model = NTKMLP(10, 8, 3, hidden_layers=3, seed=0)
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
    model = NTKMLP(n0, width, 1, hidden_layers=3, seed=0, dtype=torch.float64)
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
    a = NTKMLP(12, 32, 5, hidden_layers=2, parameterization=parameterization, input_scale="embedding", seed=1, dtype=torch.float64)
    b = NTKMLP(12, 32, 5, hidden_layers=2, parameterization=parameterization, input_scale="embedding", seed=1, dtype=torch.float64)
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
    init = NTKMLP(12, 32, 5, hidden_layers=2, parameterization=parameterization, input_scale="embedding", seed=1, dtype=torch.float64)
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


# -- the network's own limits (NTKMLP.limit_kernels) -------------------------------------------------
def _h(r):
    """Definition 5 written out: h(r) = (r arcsin r + sqrt(1 - r^2)) / pi + r / 2."""
    return (r * math.asin(r) + math.sqrt(1 - r * r)) / math.pi + r / 2


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("input_scale", INPUT_SCALES)
def test_limit_nngp_of_one_hidden_layer_by_hand(parameterization, input_scale):
    """One hidden layer (L = 2): u = m1 W1 x with W1 ~ (0, s1^2) has covariance (m1 s1)^2 x.z, so
    Sigma^(2) = (m2 s2)^2 n E[relu(u) relu(u')] = (m2 s2)^2 n sqrt(qx qz) h(rho) / 2."""
    d, n = 6, 64
    model = NTKMLP(d, n, 3, hidden_layers=1, parameterization=parameterization, input_scale=input_scale, seed=0)
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(3, d, generator=g, dtype=torch.float64), torch.randn(2, d, generator=g, dtype=torch.float64)
    (m1, s1), (m2, s2) = [(s.multiplier, s.init_std) for s in (model.hidden[0][0].scaling, model.readout.scaling)]
    got = model.limit_kernels(x, z, want=("nngp", "feature_cosine"))
    for i in range(3):
        for j in range(2):
            qx, qz = (m1 * s1) ** 2 * float(x[i] @ x[i]), (m1 * s1) ** 2 * float(z[j] @ z[j])
            rho = float(x[i] @ z[j]) / math.sqrt(float(x[i] @ x[i]) * float(z[j] @ z[j]))
            expected = (m2 * s2) ** 2 * n * math.sqrt(qx * qz) * _h(rho) / 2
            assert got["nngp"][i, j].item() == pytest.approx(expected, rel=1e-12)
            assert got["feature_cosine"][0, i, j].item() == pytest.approx(_h(rho), rel=1e-12)


def test_limit_ntk_equals_theorem_1_for_its_depth_and_scale():
    """NTK parameterization: Theta_inf^(L) with L = hidden_layers + 1 and the input layer's own scale;
    one-hot ids: Theorem 1 by hand for L = 3 on orthogonal unit inputs (rho^(1) = 0, c = 1)."""
    model = NTKMLP(5, 32, 2, hidden_layers=2, input_scale="embedding", seed=0)
    assert model.depth == 3
    theta = model.limit_kernels(torch.tensor([0, 1, 1]), want=("ntk",))["ntk"]
    # diagonal (Proposition 1): Theta^(L)(x, x) = L c |x|^2 / 2^(L-1) = 3/4 for L = 3, c = 1
    assert theta[0, 0].item() == pytest.approx(3 / 4, rel=1e-14)
    # off it, rho^(1) = 0: T^(1) = 0, T^(2) = h(0) = 1/pi = rho^(2), T^(3) = h'(rho^(2)) T^(2) + h(rho^(2)),
    # and Theta^(3) = c T^(3) / 2^(L-1) = T^(3) / 4
    r2 = 1 / math.pi
    t3 = (0.5 + math.asin(r2) / math.pi) * (1 / math.pi) + _h(r2)
    assert theta[0, 1].item() == pytest.approx(t3 / 4, rel=1e-13)
    assert theta[1, 2].item() == pytest.approx(3 / 4, rel=1e-14)  # the same word twice


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["ntk", "mup", "pytorch"])
def test_limit_nngp_matches_the_output_covariance_over_seeds(parameterization):
    """Monte Carlo: E[f_k(x) f_k(z)] over 150 seeds and 4 outputs of width-512 networks (600
    samples: a relative standard error of about 6% on the diagonal) against the limit."""
    d, n, seeds = 8, 512, 150
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    x[1] = 0.6 * x[0] + 0.8 * x[1]
    outs = []
    for s in range(seeds):
        model = NTKMLP(d, n, 4, hidden_layers=2, parameterization=parameterization, seed=s, dtype=torch.float64)
        with torch.no_grad():
            outs.append(model(x))
    f = torch.stack(outs)                                    # (seeds, 2, outputs)
    empirical = torch.einsum("sio,sjo->ij", f, f) / (seeds * 4)
    limit = NTKMLP(d, n, 4, hidden_layers=2, parameterization=parameterization).limit_kernels(x, want=("nngp",))["nngp"]
    torch.testing.assert_close(empirical, limit, rtol=0.25, atol=0)


def test_limits_that_do_not_exist_are_refused():
    from lazydrift.model import NoLimitError

    with pytest.raises(NoLimitError, match="mup"):
        NTKMLP(5, 8, 2, parameterization="mup").limit_kernels(torch.randn(2, 5))
    with pytest.raises(NoLimitError, match="uniform"):  # one-hot rows through nn.Linear's uniform init
        NTKMLP(5, 8, 2, parameterization="pytorch").limit_kernels(torch.tensor([0, 1]), want=("feature_cosine",))
    with pytest.raises(TypeError, match="hidden_layers"):
        NTKMLP(5, 8, 2, depth=2)


def test_input_cosine_is_the_inputs_cosine_in_every_parameterization():
    """rho^(1)(x, z) = x.z / (|x| |z|) (Definition 3), by hand in float64; for one-hot ids 1 for the
    same word and 0 otherwise, even where the uniform first layer has no Gaussian limit."""
    g = torch.Generator().manual_seed(4)
    x, z = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(2, 6, generator=g, dtype=torch.float64)
    by_hand = (x @ z.T) / torch.outer(x.norm(dim=1), z.norm(dim=1))
    for parameterization in PARAMETERIZATIONS:
        got = NTKMLP(6, 8, 2, parameterization=parameterization).limit_kernels(x, z, want=("input_cosine",))
        torch.testing.assert_close(got["input_cosine"], by_hand, rtol=0, atol=1e-15)
    ids = NTKMLP(5, 8, 2, parameterization="pytorch").limit_kernels(torch.tensor([0, 1, 1]), want=("input_cosine",))
    assert ids["input_cosine"].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
