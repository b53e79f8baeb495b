"""Optimizers (lazydrift.optimizers) and losses (lazydrift.losses) against independent references.

References:
* a hand computation: the forward and backward pass of the 2-hidden-layer ReLU network and
  the update rules of SGD, heavy-ball momentum and Adam written out in numpy float64, two steps;
* torch.optim (SGD, SGD with momentum, Adam; its for-loop implementation) on an identical copy
  trained with plain autograd, and torch.nn.functional for the losses;
* Tensor Programs V's muP for Adam in its own form (weights drawn at the target variance, no
  multipliers, per-layer Adam learning rates of TP5 Table 3): the same network function step
  by step as NTKMLP(mup) with adam_lr_factors;
* what a PyTorch user writes: nn.Linear layers trained by torch.optim, step by step the same
  as NTKMLP(pytorch).

Tolerances: everything runs in float64 on a handful of numbers; two implementations of the same
arithmetic differ by summation order, a few ulps (1e-16) per operation over ~10 operations per
value, amplified at most by Adam's division by sqrt(v) ~ |g| (relative error of the quotient
~ relative error of g).  rtol 1e-10 leaves a factor 10^5 of headroom and still fails on any
wrong factor, sign or bias correction (those change values at the 1e-2 level or more).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lazydrift import NTKMLP
from lazydrift.model import PARAMETERIZATIONS
from lazydrift.losses import LOSSES, cross_entropy, loss_function
from lazydrift.optimizers import OPTIMIZERS, Optimizer, adam_lr_factors, hyperparameters, lr_factors, param_groups
from lazydrift.train import mse_loss

RTOL, ATOL = 1e-10, 1e-13
D, N, K, B = 3, 4, 2, 5  # input dim, width, outputs, batch of the hand-computed model
LRS = {"sgd": 0.3, "momentum": 0.05, "adam": 0.01}


# -- the hand computation ------------------------------------------------------------------------
def relu(z):
    return np.maximum(z, 0.0)


def hand_grads(ws, ms, x, y, loss):
    """Gradients of the loss for NTKMLP's layout (input weight (d, n), others (out, in)), by hand."""
    w1, w2, w3 = ws
    m1, m2, m3 = ms
    z1 = m1 * x @ w1
    h1 = relu(z1)
    z2 = m2 * h1 @ w2.T
    h2 = relu(z2)
    f = m3 * h2 @ w3.T
    if loss == "mse":  # (1/2B) sum ||f - y||^2 -> (f - y) / B
        gf = (f - y) / len(x)
    else:  # mean cross-entropy -> (softmax(f) - y) / B
        e = np.exp(f - f.max(axis=1, keepdims=True))
        gf = (e / e.sum(axis=1, keepdims=True) - y) / len(x)
    g3 = m3 * gf.T @ h2
    gz2 = (m3 * gf @ w3) * (z2 > 0)
    g2 = m2 * gz2.T @ h1
    gz1 = (m2 * gz2 @ w2) * (z1 > 0)
    g1 = m1 * x.T @ gz1
    return [g1, g2, g3]


def hand_steps(ws, ms, factors, batches, optimizer, lr, loss, mu=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """Apply len(batches) updates by the textbook rules; returns the weights."""
    ws = [w.copy() for w in ws]
    state = [dict(buf=None, m=np.zeros_like(w), v=np.zeros_like(w)) for w in ws]
    for t, (x, y) in enumerate(batches, start=1):
        grads = hand_grads(ws, ms, x, y, loss)
        for w, g, c, s in zip(ws, grads, factors, state):
            if optimizer == "sgd":
                w -= lr * c * g
            elif optimizer == "momentum":  # PyTorch's heavy ball: b_1 = g_1, b_t = mu b_{t-1} + g_t
                s["buf"] = g.copy() if s["buf"] is None else mu * s["buf"] + g
                w -= lr * c * s["buf"]
            else:  # Adam with bias correction
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                mhat, vhat = s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)
                w -= lr * c * mhat / (np.sqrt(vhat) + eps)
    return ws


# Each layer's factor written out from the tables in model.layer_scalings / optimizers.adam_lr_factors.
HAND_FACTORS = {
    ("ntk", "sgd"): [1, 1, 1], ("ntk", "adam"): [1, 1, 1],
    ("mup", "sgd"): [N, N, N], ("mup", "adam"): [1, 1 / math.sqrt(N), 1],
    ("standard", "sgd"): [1 / N, 1 / N, 1 / N], ("standard", "adam"): [1, 1, 1],
    ("pytorch", "sgd"): [1, 1, 1], ("pytorch", "adam"): [1, 1, 1],
}
HAND_MULTIPLIERS = {"ntk": [1 / math.sqrt(D), 1 / math.sqrt(N), 1 / math.sqrt(N)],
                    "mup": [1 / math.sqrt(D), 1 / math.sqrt(N), 1 / N],
                    "standard": [1, 1, 1], "pytorch": [1, 1, 1]}


def batches(n_steps, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        x = rng.standard_normal((B, D))
        labels = rng.integers(0, K, B)
        out.append((x, np.eye(K)[labels], labels))
    return out


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_two_steps_match_hand_computation(parameterization, optimizer, loss):
    model = NTKMLP(D, N, K, hidden_layers=2, parameterization=parameterization, input_scale="fan_in",
                   seed=3, dtype=torch.float64)
    ws0 = [layer.weight.detach().numpy().copy() for layer in model.linear_layers()]
    family = "adam" if optimizer == "adam" else "sgd"
    data = batches(2)
    expected = hand_steps(ws0, HAND_MULTIPLIERS[parameterization], HAND_FACTORS[(parameterization, family)],
                          [(x, y) for x, y, _ in data], optimizer, LRS[optimizer], loss)
    opt = Optimizer(model, optimizer, LRS[optimizer])
    fn = loss_function(loss)
    for x, y, labels in data:
        with opt.step():
            fn(model(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
    for layer, w_hand, w0 in zip(model.linear_layers(), expected, ws0):
        got = layer.weight.detach().numpy()
        assert np.abs(got - w0).max() > 1e-6  # the step really moved this layer
        np.testing.assert_allclose(got, w_hand, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_matches_torch_optim_on_token_ids(parameterization, optimizer, loss):
    """Token-id inputs (the lookup path, sparse rows in the input layer's gradient), 4 steps,
    against torch.optim's for-loop implementation over param_groups after a plain backward."""
    V, n = 7, 16
    model = NTKMLP(V, n, V, hidden_layers=2, parameterization=parameterization, input_scale="embedding", seed=0,
                   dtype=torch.float64)
    ref = copy.deepcopy(model)
    lr = LRS[optimizer]
    opt = Optimizer(model, optimizer, lr)
    ref_opt = _reference_optimizer(optimizer, ref, lr)
    fn = loss_function(loss)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randint(V, (6,), generator=g), torch.randint(V, (6,), generator=g)
        with opt.step():
            fn(model(x), y).backward()
        ref_opt.zero_grad()
        fn(ref(x), y).backward()
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        assert a.grad is None  # the in-backward steps leave no gradient behind


def _reference_optimizer(name, model, lr):
    groups = param_groups(model, name, lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=False)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9 if name == "momentum" else 0.0, foreach=False)


def test_mup_adam_is_tensor_programs_v_table_3():
    """NTKMLP(mup) + adam_lr_factors computes the same function, step by step, as TP5 Table 3's muP
    for Adam written in its own form: input W1 ~ N(0, 1) (embedding: fan_in 1), hidden
    W2 ~ N(0, 1/n), output W3 ~ N(0, 1/n^2), no multipliers, Adam LR eta, eta/n, eta/n."""
    V, n, lr = 6, 64, 0.02
    model = NTKMLP(V, n, V, hidden_layers=2, parameterization="mup", input_scale="embedding", seed=2, dtype=torch.float64)
    w1, w2, w3 = (layer.weight.detach().clone() for layer in model.linear_layers())
    tp5 = [nn.Parameter(w1.clone()), nn.Parameter(w2 / math.sqrt(n)), nn.Parameter(w3 / n)]
    eps = 1e-30  # Adam's eps breaks the scale invariance the rewrite uses; make it negligible in both
    tp5_opt = torch.optim.Adam([{"params": [tp5[0]], "lr": lr}, {"params": [tp5[1]], "lr": lr / n},
                                {"params": [tp5[2]], "lr": lr / n}], lr=lr, eps=eps, foreach=False)
    opt = Optimizer(model, "adam", lr, eps=eps)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randint(V, (8,), generator=g), torch.randint(V, (8,), generator=g)
        out_tp5 = F.relu(F.relu(F.embedding(x, tp5[0])) @ tp5[1].T) @ tp5[2].T
        with opt.step():
            out = model(x)
            mse_loss(out, y).backward()
        torch.testing.assert_close(out, out_tp5, rtol=RTOL, atol=ATOL)
        tp5_opt.zero_grad()
        mse_loss(out_tp5, y).backward()
        tp5_opt.step()
    effective = [layer.multiplier * layer.weight for layer in model.linear_layers()]
    for ours, theirs in zip(effective, tp5):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_pytorch_parameterization_is_nn_linear_with_torch_optim(optimizer):
    """NTKMLP(pytorch, fan_in) trains exactly like nn.Linear layers (no bias) fed one-hot vectors."""
    V, n, lr = 9, 32, LRS[optimizer]
    model = NTKMLP(V, n, V, hidden_layers=2, parameterization="pytorch", input_scale="fan_in", seed=4, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(V, n, bias=False), nn.ReLU(), nn.Linear(n, n, bias=False), nn.ReLU(),
                        nn.Linear(n, V, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(model.linear_layers()[0].weight.T)
        net[2].weight.copy_(model.linear_layers()[1].weight)
        net[4].weight.copy_(model.linear_layers()[2].weight)
    ref = (torch.optim.Adam(net.parameters(), lr=lr, foreach=False) if optimizer == "adam" else
           torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9 if optimizer == "momentum" else 0.0, foreach=False))
    opt = Optimizer(model, optimizer, lr)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x, y = torch.randint(V, (7,), generator=g), torch.randint(V, (7,), generator=g)
        with opt.step():
            cross_entropy(model(x), y).backward()
        ref.zero_grad()
        F.cross_entropy(net(F.one_hot(x, V).double()), y).backward()
        ref.step()
    torch.testing.assert_close(model.linear_layers()[0].weight, net[0].weight.T, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(model.linear_layers()[2].weight, net[4].weight, rtol=RTOL, atol=ATOL)


def test_pytorch_init_is_nn_linear_default():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform_, a = sqrt(5)); nn.Embedding's N(0, 1) at embedding scale."""
    V, n = 50, 400
    model = NTKMLP(V, n, V, hidden_layers=2, parameterization="pytorch", input_scale="fan_in", seed=0)
    g = torch.Generator().manual_seed(0)
    first = torch.empty(n, V)  # the same draws, through PyTorch's own initializer
    nn.init.kaiming_uniform_(first, a=math.sqrt(5), generator=g)
    # Same generator stream, same uniform_ kernel; the bounds may differ in the last bit.
    torch.testing.assert_close(model.linear_layers()[0].weight, first.view(V, n), rtol=1e-6, atol=0)
    hidden = model.linear_layers()[1].weight.detach()
    assert float(hidden.detach().abs().max()) <= 1 / math.sqrt(n)
    # variance 1/(3n): 160000 draws of U(-b, b) give a relative s.e. of sqrt(0.8/160000) = 0.22%; allow 1.5%
    assert float(hidden.var()) == pytest.approx(1 / (3 * n), rel=0.015)
    emb = NTKMLP(V, n, V, hidden_layers=2, parameterization="pytorch", input_scale="embedding", seed=0)
    w = emb.linear_layers()[0].weight.detach()
    assert float(w.var()) == pytest.approx(1.0, rel=0.02)  # 20000 N(0,1) draws: s.e. 1%
    assert float(w.abs().max()) > 2.0  # Gaussian tails, not a uniform(-1, 1)


def test_lr_factors_follow_the_tables():
    m = NTKMLP(5, 100, 5, hidden_layers=3, parameterization="mup", seed=0)
    assert lr_factors(m, "sgd") == [100.0] * 4 and lr_factors(m, "momentum") == [100.0] * 4
    assert lr_factors(m, "adam") == pytest.approx([1.0, 0.1, 0.1, 1.0])
    assert adam_lr_factors("ntk", 100, 2) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="parameterization"):
        adam_lr_factors("nope", 100, 2)


def test_steps_only_inside_the_block_with_one_reused_gradient_buffer():
    model = NTKMLP(6, 8, 6, hidden_layers=2, seed=0, dtype=torch.float64)
    opt = Optimizer(model, "adam", 0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.arange(6), torch.arange(6)
    mse_loss(model(x), y).backward()  # outside step(): an ordinary backward
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    pointers = set()
    for _ in range(3):
        with opt.step():
            mse_loss(model(x), y).backward()
        pointers.add(opt._step.scratch.data_ptr())
    assert not any(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())  # no gradient tensor is left behind
    # one scratch buffer, the size of the largest weight, allocated once and reused every step
    assert opt._step.scratch.numel() == max(p.numel() for p in model.parameters())
    assert len(pointers) == 1


def test_state_dict_resumes_bit_for_bit():
    def make():
        m = NTKMLP(6, 8, 6, hidden_layers=2, seed=0)
        return m, Optimizer(m, "adam", 0.01)

    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(6, (4,), generator=g), torch.randint(6, (4,), generator=g)) for _ in range(4)]
    a, opt_a = make()
    for x, y in data:
        with opt_a.step():
            mse_loss(a(x), y).backward()
    b, opt_b = make()
    for x, y in data[:2]:
        with opt_b.step():
            mse_loss(b(x), y).backward()
    c, opt_c = make()
    c.load_state_dict(b.state_dict())
    opt_c.load_state_dict(opt_b.state_dict())
    for x, y in data[2:]:
        with opt_c.step():
            mse_loss(c(x), y).backward()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))  # same process, same kernels
    with pytest.raises(ValueError, match="saved with"):
        Optimizer(c, "adam", 0.02).load_state_dict(opt_b.state_dict())


def test_bad_arguments_name_what_to_fix():
    m = NTKMLP(4, 8, 4, hidden_layers=2, seed=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Optimizer(m, "rmsprop", 0.1)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        Optimizer(m, "sgd", 0.0)
    with pytest.raises(ValueError, match="no hyperparameter"):
        Optimizer(m, "sgd", 0.1, momentum=0.9)
    assert hyperparameters("adam", beta2=0.99) == {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8}
    with pytest.raises(ValueError, match="loss must be one of"):
        loss_function("hinge")


# -- losses ----------------------------------------------------------------------------------------
def test_losses_against_torch_functional_and_numpy():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(5, (6,), generator=g)
    onehot = F.one_hot(labels, 5).double()
    # mse: (1/2B) sum ||f - y||^2, class ids standing for one-hot rows
    want = float(F.mse_loss(out, onehot, reduction="sum")) / (2 * 6)
    assert float(loss_function("mse")(out, labels)) == pytest.approx(want, rel=1e-14)
    assert float(loss_function("mse")(out, onehot)) == pytest.approx(want, rel=1e-14)
    # cross-entropy: numpy log-softmax by hand and F.cross_entropy
    o = out.numpy()
    logp = o - o.max(1, keepdims=True) - np.log(np.exp(o - o.max(1, keepdims=True)).sum(1, keepdims=True))
    hand = -logp[np.arange(6), labels.numpy()].mean()
    assert float(loss_function("cross_entropy")(out, labels)) == pytest.approx(hand, rel=1e-13)
    assert float(cross_entropy(out, onehot)) == pytest.approx(float(F.cross_entropy(out, labels)), rel=1e-14)
    with pytest.raises(ValueError, match="output must be"):
        cross_entropy(out[0], labels[:1])


def test_loss_gradients_against_hand_formulas():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])
    onehot = np.eye(3)[labels.numpy()]
    mse_loss(out, labels).backward()
    np.testing.assert_allclose(out.grad.numpy(), (out.detach().numpy() - onehot) / 4, rtol=1e-14)
    out.grad = None
    cross_entropy(out, labels).backward()
    e = np.exp(out.detach().numpy())
    np.testing.assert_allclose(out.grad.numpy(), (e / e.sum(1, keepdims=True) - onehot) / 4, rtol=1e-12)
