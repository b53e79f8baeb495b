"""empirical_ntk: the structured route equals the Jacobian route, a hand formula and the one-hot
computation; it refuses models whose outputs mix probes; the kernel -> relu_ntk as width grows."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from lazydrift import NTKMLP, fused_sgd
from lazydrift.empirical import (StructureError, empirical_ntk, jacobian_ntk, random_output_vector,
                                 structured_ntk)


F64 = torch.float64


def assert_same_kernel(a: torch.Tensor, b: torch.Tensor) -> None:
    """The two routes add the same float64 products in different orders: with P <= 1e4
    parameters the rounding is < P eps ~ 2e-12 of the largest entry, so 1e-10 has margin."""
    assert a.shape == b.shape
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err < 1e-10, err


def mnist_like(n: int, seed: int) -> torch.Tensor:
    """Non-negative, mostly-zero 784-dim vectors on the unit sphere, like normalized MNIST digits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g) * (torch.rand(n, 784, generator=g) < 0.2)
    return x / x.norm(dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------------
# Equality with the Jacobian route (the target: 1e-10 in float64)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parameterization", ["ntk", "mup", "standard"])
@pytest.mark.parametrize("hidden_layers", [1, 2, 3, 4])
def test_structured_equals_jacobian_on_ntkmlp(parameterization, hidden_layers):
    g = torch.Generator().manual_seed(hidden_layers)
    for input_scale, x in (("embedding", torch.tensor([0, 3, 5, 3, 8, 1])),            # token ids, a repeat
                           ("fan_in", torch.randn(6, 9, dtype=F64, generator=g))):     # float inputs
        model = NTKMLP(9, 12, 4, hidden_layers=hidden_layers, parameterization=parameterization, input_scale=input_scale,
                       seed=hidden_layers, dtype=F64)
        assert_same_kernel(structured_ntk(model, x, output="random"), jacobian_ntk(model, x, output="random"))
        x2 = x[:4].flip(0)
        assert_same_kernel(structured_ntk(model, x, x2, output=-1), jacobian_ntk(model, x, x2, output=-1))


def test_structured_equals_jacobian_on_linear_sequential_with_biases():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    model[2].bias.requires_grad_(False)  # a frozen bias is no parameter of the NTK
    x = torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    for output in (0, "random"):
        assert_same_kernel(empirical_ntk(model, x, output=output), jacobian_ntk(model, x, output=output))
    single = nn.Sequential(nn.Linear(5, 6, bias=False), nn.ReLU(), nn.Linear(6, 1)).double()
    assert_same_kernel(empirical_ntk(single, x), jacobian_ntk(single, x))


class TokenSequenceNet(nn.Module):
    """nn.Embedding with padding over a sequence, a Linear applied at every position and called
    twice, a LayerNorm called twice (no structured rule: per-module VJPs) and a parameter of the
    model itself."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6, padding_idx=0)
        self.mix = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.readout = nn.Linear(6, 3)
        self.gain = nn.Parameter(torch.tensor(0.7))

    def forward(self, ids):
        h = self.norm(torch.relu(self.mix(self.embed(ids))))  # (n, T, 6)
        h = torch.relu(self.mix(h))                           # the same weights again
        return self.readout(self.norm(h.mean(1))) * self.gain


def test_structured_equals_jacobian_on_embeddings_positions_and_other_modules():
    model = TokenSequenceNet().double()
    ids = torch.randint(11, (6, 4), generator=torch.Generator().manual_seed(1))
    ids[0, 1], ids[2] = 0, ids[1]  # a padding position and a repeated sequence
    assert_same_kernel(empirical_ntk(model, ids, output="random"), jacobian_ntk(model, ids, output="random"))
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(48, 2)).double()
    x = torch.randn(5, 1, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert_same_kernel(empirical_ntk(conv, x, output=1), jacobian_ntk(conv, x, output=1))


def test_batchnorm_with_running_statistics_is_per_probe():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
    with torch.no_grad():  # running statistics away from (0, 1)
        model(torch.randn(32, 4, dtype=F64, generator=torch.Generator().manual_seed(3)) * 3 + 1)
    x = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    assert_same_kernel(empirical_ntk(model, x, output=0), jacobian_ntk(model, x, output=0))
    assert model.training  # flags restored


# ------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------
def test_one_hidden_layer_equals_hand_formula():
    """f(x) = v.relu(W x / sqrt(n0)) / sqrt(w): Theta = [relu(u).relu(u') + (x.x'/n0) sum_i v_i^2 1{u_i>0} 1{u'_i>0}] / w."""
    n0, w = 7, 50
    model = NTKMLP(n0, w, 1, hidden_layers=1, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(5, n0, dtype=F64, generator=g), torch.randn(3, n0, dtype=F64, generator=g)
    W = model.hidden[0][0].weight  # (n0, w): u = x W / sqrt(n0)
    v = model.readout.weight[0]
    ux, uz = x @ W / math.sqrt(n0), z @ W / math.sqrt(n0)
    expected = (ux.relu() @ uz.relu().T + (x @ z.T / n0) * (((ux > 0).double() * v ** 2) @ (uz > 0).double().T)) / w
    for method in ("structured", "jacobian"):
        torch.testing.assert_close(empirical_ntk(model, x, z, method=method, batch_size=2), expected.detach(),
                                   rtol=1e-12, atol=1e-14)


def test_token_ids_equal_their_one_hot_rows():
    """The lookup's Gram [id == id'] against the dense product with one-hot rows (float inputs)."""
    model = NTKMLP(8, 16, 3, hidden_layers=2, input_scale="embedding", seed=5, dtype=F64)
    ids = torch.tensor([1, 4, 4, 7, 0])
    one_hot = torch.eye(8, dtype=F64)[ids]
    for output in (0, "random"):
        torch.testing.assert_close(empirical_ntk(model, ids, output=output), empirical_ntk(model, one_hot, output=output),
                                   rtol=1e-12, atol=1e-14)


def test_linear_model_is_gram_plus_one():
    """A plain nn.Linear(bias) model: Theta(x, x') = x.x' + 1 exactly."""
    lin = nn.Linear(4, 1).double()
    x = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(empirical_ntk(lin, x), x @ x.T + 1, rtol=1e-12, atol=1e-14)


def test_random_output_is_the_quadratic_form_of_the_output_kernels():
    """Theta_v = sum_kl v_k v_l Theta_kl, with Theta_kl(x, x') = <df_k(x)/dtheta, df_l(x')/dtheta>;
    the cross-output kernels come from the polarization Theta_(e_k + e_l) = Theta_kk + 2 Theta_kl + Theta_ll
    computed by the Jacobian route on a model with a summed readout column."""
    model = NTKMLP(5, 10, 3, hidden_layers=2, seed=6, dtype=F64)
    x = torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(7))
    v = random_output_vector(3, seed=11)
    assert abs(v.norm().item() - 1) < 1e-15 and torch.equal(v, random_output_vector(3, seed=11))

    class Pair(nn.Module):  # f_k + f_l as a single output
        def __init__(self, k, l):
            super().__init__()
            self.net, self.k, self.l = model, k, l

        def forward(self, x):
            out = self.net(x)
            return out[:, self.k] + out[:, self.l]

    diag = [jacobian_ntk(model, x, output=k) for k in range(3)]
    expected = sum(v[k] ** 2 * diag[k] for k in range(3))
    for k in range(3):
        for l in range(k + 1, 3):
            cross = (jacobian_ntk(Pair(k, l), x) - diag[k] - diag[l]) / 2
            expected = expected + 2 * v[k] * v[l] * cross
    assert_same_kernel(empirical_ntk(model, x, output="random", seed=11), expected)


# ------------------------------------------------------------------------------------------------
# What the structured route refuses, and what it leaves as it was
# ------------------------------------------------------------------------------------------------
def test_refuses_batch_statistics_and_batch_mixing():
    x = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(8))
    no_stats = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 1)).double()
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d with track_running_stats=False\)"):
        empirical_ntk(no_stats, x)

    class Centre(nn.Module):  # subtracts the batch mean: probe i's output depends on the others
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x - x.mean(0))

    with pytest.raises(ValueError, match="depend on the other probes"):
        empirical_ntk(Centre().double(), x)


def test_tied_weights_and_foreign_layouts_fall_back_to_the_jacobian_route():
    x = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(9))
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).double()
    tied[2].weight = tied[0].weight
    with pytest.raises(StructureError, match=r"shared by modules \['0', '2'\]"):
        empirical_ntk(tied, x, output=1, method="structured")
    with pytest.warns(UserWarning, match="tied weights"):
        assert_same_kernel(empirical_ntk(tied, x, output=1), jacobian_ntk(tied, x, output=1))

    class SequenceFirst(nn.Module):  # the Linear sees (T, n, d): rows are not probes
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x.transpose(0, 1)).sum(0)

    model = SequenceFirst().double()
    xs = torch.randn(5, 7, 4, dtype=F64, generator=torch.Generator().manual_seed(10))
    with pytest.warns(UserWarning, match="module 'lin' sees tensors of shapes"):
        assert_same_kernel(empirical_ntk(model, xs, output=2), jacobian_ntk(model, xs, output=2))


def test_inside_fused_sgd_nothing_is_updated_and_modes_are_restored():
    model = NTKMLP(6, 16, 2, hidden_layers=2, seed=12, dtype=F64)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(6, (5,))
    model.train()
    model.readout.eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with fused_sgd(model, lr=0.5), torch.no_grad():
            k_fused = empirical_ntk(model, x, output="random")
            assert model.readout.sgd_lr == 0.5
        assert torch.backends.cuda.matmul.allow_tf32

        class Spy(nn.Linear):  # sees the TF32 switch while the kernel is computed
            def forward(self, x):
                seen.append(torch.backends.cuda.matmul.allow_tf32)
                return super().forward(x)

        seen = []
        empirical_ntk(Spy(3, 1), torch.zeros(2, 3))
        assert seen and not any(seen) and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.training and model.hidden[0].training and not model.readout.training
    torch.testing.assert_close(k_fused, jacobian_ntk(model, x, output="random"), rtol=1e-12, atol=1e-14)


def test_symmetric_result_and_bad_arguments():
    model = NTKMLP(6, 20, 3, hidden_layers=2, seed=2, dtype=F64)
    x = torch.randn(9, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    for method in ("structured", "jacobian"):
        sym = empirical_ntk(model, x, output=1, method=method, batch_size=4)
        assert torch.equal(sym, sym.T)
        torch.testing.assert_close(sym, empirical_ntk(model, x, x.clone(), output=1, method=method),
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="has 3 outputs"):
        empirical_ntk(model, x)
    with pytest.raises(ValueError, match=r"output must be an integer in \[-3, 3\)"):
        empirical_ntk(model, x, output=3)
    with pytest.raises(ValueError, match="method must be one of"):
        empirical_ntk(model, x, output=0, method="fast")
    with pytest.raises(ValueError, match="x1 and x2 must be alike"):
        empirical_ntk(model, x, torch.tensor([0, 1]), output=0)


def _rss(key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_activations_not_n_by_p():
    """64 token probes at width 2048: an n x P float32 buffer would be 64 x 4.45M x 4 B = 1.1 GB; the
    structured route holds a few n x width activations (0.5 MB each).  The peak RSS added by a
    second call (the first loads code and warms the allocator) must stay under 32 MiB."""
    model = NTKMLP(64, 2048, 64, hidden_layers=2, input_scale="embedding", seed=0)
    probes = torch.arange(64)
    empirical_ntk(model, probes, output="random")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    base = _rss("VmRSS")
    empirical_ntk(model, probes, output="random")
    assert _rss("VmHWM") - base < 32 * 2 ** 20


# ------------------------------------------------------------------------------------------------
# Theorem 1
# ------------------------------------------------------------------------------------------------
def test_converges_to_relu_ntk_like_inverse_sqrt_width():
    """Relative Frobenius error of NTKMLP's NTK at init vs Theta_inf^(3), over widths 128..2048.

    The NTK's fluctuations have s.d. proportional to 1/sqrt(width) (bias O(1/width)), so the
    log-log slope of the mean error should be -1/2.  Averaging 4 seeds x 8 inputs leaves ~15%
    scatter per width, i.e. about 0.08 s.d. on a slope fitted over a 16x range; we accept
    [-0.8, -0.25] (> 3 s.d.) and require the widest net to be within 10%.
    """
    x = mnist_like(8, seed=5)
    ref = NTKMLP(784, 1, 1, hidden_layers=2).limit_kernels(x, want=("ntk",))["ntk"].float()  # Theta_inf^(3)
    widths = [128, 256, 512, 1024, 2048]
    errors = []
    for w in widths:
        errs = [((empirical_ntk(NTKMLP(784, w, 1, hidden_layers=2, seed=s), x) - ref).norm() / ref.norm()).item()
                for s in range(4)]
        errors.append(np.mean(errs))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -0.8 < slope < -0.25, (slope, errors)
    assert errors[-1] < 0.1, errors


def test_modules_vmap_cannot_batch_are_looped_not_refused():
    """nn.GRU's fused kernel has no vmap rule: the per-example gradients come from a plain loop,
    checked against autograd on one example at a time."""
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.out = nn.GRU(3, 5, batch_first=True), nn.Linear(5, 1)

        def forward(self, x):
            return self.out(self.gru(x)[0][:, -1])

    torch.manual_seed(0)
    model = Recurrent().double()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="Jacobian route"):
        kernel = empirical_ntk(model, x)
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        model(x[i:i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    jac = torch.stack(rows)
    torch.testing.assert_close(kernel, jac @ jac.T, rtol=1e-12, atol=1e-12)
