"""Kernel-drift statistics against numpy and a hand-computed Theta_inf; the tracker's rows against
kernels from the independent Jacobian route; the drift's decay with width (Theorem 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lazydrift import NTKMLP, fused_sgd, mse_loss
from lazydrift.empirical import jacobian_ntk
from lazydrift.kernel_drift import (COLUMNS, KernelDriftTracker, kernel_cosine, kernel_drift_row,
                                    largest_eigenvalue, limit_ntk, relative_distance, target_alignment)

F64 = torch.float64


def spd(n: int, seed: int) -> torch.Tensor:
    a = torch.randn(n, n + 2, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return a @ a.T


def test_statistics_equal_numpy():
    a, b = spd(7, 0), spd(7, 1)
    A, B = a.numpy(), b.numpy()
    assert relative_distance(a, b) == pytest.approx(np.linalg.norm(A - B) / np.linalg.norm(B), rel=1e-13)
    assert kernel_cosine(a, b) == pytest.approx(np.trace(A.T @ B) / np.linalg.norm(A) / np.linalg.norm(B), rel=1e-13)
    assert largest_eigenvalue(a) == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-12)
    assert relative_distance(a, a) == 0 and kernel_cosine(a, 3 * a) == pytest.approx(1, abs=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        relative_distance(a, b[:3, :3])
    with pytest.raises(ValueError, match="square"):
        largest_eigenvalue(a[:3])


def test_target_alignment():
    a = spd(6, 2)
    A = a.numpy()
    y = np.random.default_rng(0).normal(size=(6, 3))
    yy = y @ y.T
    expected = np.sum(A * yy) / np.linalg.norm(A) / np.linalg.norm(yy)
    assert target_alignment(a, torch.from_numpy(y)) == pytest.approx(expected, rel=1e-13)
    ids = torch.tensor([0, 2, 2, 1, 0, 2])
    assert target_alignment(a, ids) == pytest.approx(target_alignment(a, torch.eye(3, dtype=F64)[ids]), rel=1e-14)
    assert target_alignment(torch.from_numpy(yy), torch.from_numpy(y)) == pytest.approx(1, abs=1e-14)
    with pytest.raises(ValueError, match="n = 6 probes"):
        target_alignment(a, ids[:4])


def relu_ntk_one_hot_by_hand(L: int, c: float) -> tuple[float, float]:
    """Theta_inf^(L) on the diagonal and between two distinct one-hot inputs, from Theorem 1 in
    normalized form: T^(1) = rho, T^(l+1) = h'(rho^(l)) T^(l) + h(rho^(l)), rho^(l+1) = h(rho^(l)),
    Theta = c (1/2)^(L-1) T^(L) (sigma_w = 1, |x| = 1); rho^(1) = 1 on the diagonal, 0 off it."""
    def h(z):
        return (z * math.asin(z) + math.sqrt(1 - z * z)) / math.pi + z / 2

    def hp(z):
        return 0.5 + math.asin(z) / math.pi

    t, rho = 0.0, 0.0
    for _ in range(L - 1):
        t, rho = hp(rho) * t + h(rho), h(rho)
    return c * L / 2 ** (L - 1), c * t / 2 ** (L - 1)


@pytest.mark.parametrize("hidden_layers,input_scale", [(1, "embedding"), (2, "embedding"), (3, "fan_in")])
def test_limit_ntk_of_token_probes_by_hand(hidden_layers, input_scale):
    V = 9
    model = NTKMLP(V, 8, 4, hidden_layers=hidden_layers, input_scale=input_scale, seed=0)
    ids = torch.tensor([0, 5, 5, 2])
    diag, off = relu_ntk_one_hot_by_hand(hidden_layers + 1, 1.0 if input_scale == "embedding" else 1 / V)
    same = (ids[:, None] == ids[None, :]).to(F64)
    torch.testing.assert_close(limit_ntk(model, ids), same * diag + (1 - same) * off, rtol=1e-13, atol=0)


def test_limit_ntk_refuses_what_has_no_closed_form():
    with pytest.raises(ValueError, match="the 'mup' parameterization has no Theorem-1 NTK limit"):
        limit_ntk(NTKMLP(4, 8, 2, parameterization="mup", seed=0), torch.arange(4))
    with pytest.raises(ValueError, match="defined for NTKMLP, not Linear"):
        limit_ntk(torch.nn.Linear(3, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="values in \\[0, 4\\)"):
        limit_ntk(NTKMLP(4, 8, 2, seed=0), torch.tensor([0, 7]))


def test_tracker_rows_against_the_jacobian_route():
    V = 12
    model = NTKMLP(V, 32, V, hidden_layers=2, input_scale="embedding", seed=3, dtype=F64)
    probes = torch.arange(V)
    targets = (probes + 1) % V
    tracker = KernelDriftTracker(model, probes, targets=targets)
    k0 = jacobian_ntk(model, probes, output="random").numpy()
    row0 = tracker.record(0)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        x = torch.randint(V, (16,), generator=g)
        with fused_sgd(model, 1.0):
            mse_loss(model(x), (x + 1) % V).backward()
    kt = jacobian_ntk(model, probes, output="random").numpy()
    row3 = tracker.record(3)

    assert list(tracker.frame().columns) == COLUMNS and list(tracker.frame().step) == [0, 3]
    assert row0["rel_change"] == 0 and row0["cosine"] == pytest.approx(1, abs=1e-14)
    diag, off = relu_ntk_one_hot_by_hand(3, 1.0)
    k_inf = np.full((V, V), off) + np.eye(V) * (diag - off)
    assert row0["limit_distance"] == pytest.approx(np.linalg.norm(k0 - k_inf) / np.linalg.norm(k_inf), rel=1e-9)
    assert math.isnan(row3["limit_distance"])
    # float64 kernels from two routes agree to ~1e-14; the statistics inherit that.
    assert row3["rel_change"] == pytest.approx(np.linalg.norm(kt - k0) / np.linalg.norm(k0), rel=1e-8)
    assert row3["rel_change"] > 1e-3  # training moved the kernel
    assert row3["cosine"] == pytest.approx(np.sum(kt * k0) / np.linalg.norm(kt) / np.linalg.norm(k0), rel=1e-12)
    assert row3["eig_max"] == pytest.approx(np.linalg.eigvalsh(kt)[-1], rel=1e-12)
    yy = np.eye(V)[targets.numpy()] @ np.eye(V)[targets.numpy()].T
    assert row3["target_alignment"] == pytest.approx(np.sum(kt * yy) / np.linalg.norm(kt) / np.linalg.norm(yy), rel=1e-12)

    resumed = KernelDriftTracker(model, probes, targets=targets)
    resumed.load_state_dict(tracker.state_dict())
    assert resumed.record(4)["rel_change"] == pytest.approx(row3["rel_change"], rel=1e-12)  # no step since 3
    assert list(resumed.frame().step) == [0, 3, 4]


def test_tracker_without_a_closed_form_and_bad_arguments():
    model = NTKMLP(5, 16, 3, parameterization="standard", seed=0, dtype=F64)
    tracker = KernelDriftTracker(model, torch.arange(5), output=1)
    assert math.isnan(tracker.record(0)["limit_distance"])
    with pytest.raises(ValueError, match="limit must be 'auto'"):
        KernelDriftTracker(model, torch.arange(5), limit="closed")
    with pytest.raises(ValueError, match="n = 5 probes"):
        KernelDriftTracker(model, torch.arange(5), targets=torch.zeros(4))
    row = kernel_drift_row(2, spd(3, 5), spd(3, 5))
    assert row["rel_change"] == 0 and math.isnan(row["target_alignment"]) and math.isnan(row["limit_distance"])


@pytest.mark.slow
def test_kernel_drift_shrinks_with_width():
    """Ten SGD steps (lr 1, NTK parameterization) move Theta by a relative amount that falls with
    width.  The change per step is the dNTK, O(1/n) (Dyer & Gur-Ari 2020; measured slope ~ -0.9
    here), and even Jacot et al.'s bound gives O(n^-1/2); so from width 128 to 2048 (16x) the
    3-seed mean must fall by at least 16^(1/2) / 1.5 ~ 2.7 (the 1.5 allows the ~15% seed scatter
    at each end)."""
    V = 16

    def drift(width: int, seed: int) -> float:
        model = NTKMLP(V, width, V, hidden_layers=2, input_scale="embedding", seed=seed)
        tracker = KernelDriftTracker(model, torch.arange(V))
        tracker.record(0)
        g = torch.Generator().manual_seed(seed)
        for _ in range(10):
            x = torch.randint(V, (32,), generator=g)
            with fused_sgd(model, 1.0):
                mse_loss(model(x), (x + 1) % V).backward()
        return tracker.record(10)["rel_change"]

    narrow, wide = (np.mean([drift(w, s) for s in range(3)]) for w in (128, 2048))
    assert narrow / wide > 16 ** 0.5 / 1.5, (narrow, wide)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_diverged_network_gives_nan_rows_not_an_error(value):
    # an inf or NaN weight makes the kernel non-finite: its statistics have no value (NaN), and the
    # network is not "mixing probes" (the batch check used to say so) nor breaks eigvalsh
    model = NTKMLP(10, 16, 10, hidden_layers=2, input_scale="embedding", seed=0)
    tracker = KernelDriftTracker(model, torch.arange(6))
    tracker.capture()
    with torch.no_grad():
        model.readout.weight[0, 0] = value
    row = tracker.record(1)
    assert all(math.isnan(row[k]) for k in ("rel_change", "cosine", "eig_max"))
    assert math.isnan(largest_eigenvalue(torch.tensor([[1.0, value], [value, 1.0]])))
    assert largest_eigenvalue(torch.tensor([[2.0, 1.0], [1.0, 2.0]])) == pytest.approx(3.0, rel=1e-15)  # 2 + 1
