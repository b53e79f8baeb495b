"""Propositions 3 and 6 against a plain solve, a matrix exponential, an ODE solver and a trained
finite network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy import linalg as scipy_linalg

from lazydrift import NTKMLP
from lazydrift.empirical import empirical_ntk
from lazydrift.kernels import normalized_kernel
from lazydrift.regression import KernelPredictor, gradient_descent_mse, paper_time


def sphere(n, n0, seed):
    x = torch.randn(n, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.fixture
def problem():
    x, xt = sphere(15, 6, 0), sphere(4, 6, 1)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(15, 3, dtype=torch.float64, generator=g)
    f0, f0t = 0.1 * torch.randn(15, 3, dtype=torch.float64, generator=g), 0.1 * torch.randn(4, 3, dtype=torch.float64, generator=g)
    return normalized_kernel(x, depth=4), normalized_kernel(xt, x, depth=4), y, f0, f0t


def test_t_zero_is_f0_and_large_t_is_proposition_3(problem):
    """Error bounds: K's condition number here is ~1e3, so solves carry ~1e-13 relative error."""
    K, k, y, f0, f0t = problem
    predictor = gradient_descent_mse(K, y)
    torch.testing.assert_close(predictor.predict(k, 0.0, f0, f0t), f0t, rtol=0, atol=1e-14)
    lam_min = torch.linalg.eigvalsh(K)[0].item()
    late = predictor.predict(k, 60 / lam_min, f0, f0t)        # exp(-60) ~ 1e-26 of the start left
    prop3 = predictor.predict(k, None, f0, f0t)                # Cholesky
    torch.testing.assert_close(late, prop3, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(predictor.predict(k, math.inf, f0, f0t), prop3, rtol=0, atol=0)
    # Proposition 3 by a plain LU solve; at the training points it interpolates y
    torch.testing.assert_close(prop3, f0t + k @ torch.linalg.solve(K, y - f0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(predictor.predict(K, None, f0, f0), y, rtol=1e-9, atol=1e-10)
    # a list of times stacks them, each as computed alone
    stack = predictor.predict(k, [0.0, 1.5, 60 / lam_min], f0, f0t)
    assert stack.shape == (3, 4, 3)
    torch.testing.assert_close(stack[1], predictor.predict(k, 1.5, f0, f0t), rtol=1e-13, atol=1e-15)


def test_factorizations_are_computed_once_and_reused(problem, monkeypatch):
    K, k, y, f0, f0t = problem
    calls = {"cholesky": 0, "eigh": 0}
    cholesky_ex, eigh = torch.linalg.cholesky_ex, torch.linalg.eigh

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting("cholesky", cholesky_ex))
    monkeypatch.setattr(torch.linalg, "eigh", counting("eigh", eigh))
    predictor = gradient_descent_mse(K, y)
    for _ in range(3):
        predictor.predict(k)
        predictor.solve(k.T)
        predictor.predict(k, 2.0)
        predictor.projection_norm(k, [1.0, 2.0])
    assert calls == {"cholesky": 1, "eigh": 1}


def test_diag_reg_is_ridge_regression(problem):
    """diag_reg adds diag_reg mean(diag K) to the diagonal (neural-tangents' default scaling):
    Proposition 3 becomes kernel ridge regression, checked against a plain solve."""
    K, k, y, *_ = problem
    ridge = 0.3 * K.diagonal().mean()
    expected = k @ torch.linalg.solve(K + ridge * torch.eye(len(K), dtype=K.dtype), y)
    torch.testing.assert_close(gradient_descent_mse(K, y, diag_reg=0.3).predict(k), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gradient_descent_mse(K, y, diag_reg=float(ridge), diag_reg_absolute_scale=True).predict(k),
                               expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="rows"):
        gradient_descent_mse(K, y[:5])


def test_projection_matrix_against_matrix_exponential(problem):
    K, k, y, *_ = problem
    t = 3.7
    Kn = K.numpy()
    expected = np.linalg.solve(Kn, scipy_linalg.expm(-t * Kn) - np.eye(len(Kn)))
    predictor = KernelPredictor(K, y)
    np.testing.assert_allclose(predictor.projection_matrix(t).numpy(), expected, rtol=1e-9, atol=1e-12)
    # its eigenvalues are (exp(-t lambda_k) - 1) / lambda_k (Proposition 6)
    lam = np.linalg.eigvalsh(Kn)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(expected)), np.sort((np.exp(-t * lam) - 1) / lam), rtol=1e-9)
    # the operator and its row norms
    op = predictor.projection_operator(k, t)
    np.testing.assert_allclose(op.numpy(), k.numpy() @ expected, rtol=1e-9, atol=1e-12)
    norms = predictor.projection_norm(k, [0.0, t, 10.0])
    np.testing.assert_allclose(norms[1].numpy(), np.linalg.norm(k.numpy() @ expected, axis=1), rtol=1e-9)
    assert torch.all(norms[0] == 0)
    # the projection term is f_t - f_0: the operator applied to f_0(X) - y
    np.testing.assert_allclose(predictor.predict(k, t).numpy(), op.numpy() @ (-y.numpy()), rtol=1e-9, atol=1e-12)


def test_solves_the_gradient_flow_ode(problem):
    """f_t against scipy's ODE solver on df/dt = -K(x, X)(f(X) - y), train and test points together."""
    K, k, y, f0, f0t = problem
    Kn, kn, yn = K.numpy(), k.numpy(), y.numpy()
    n = len(Kn)

    def rhs(_, state):
        f = state.reshape(-1, 3)
        resid = f[:n] - yn
        return np.concatenate([-Kn @ resid, -kn @ resid]).ravel()
    sol = integrate.solve_ivp(rhs, (0, 2.5), np.concatenate([f0.numpy(), f0t.numpy()]).ravel(),
                              rtol=1e-11, atol=1e-13, method="DOP853")
    end = sol.y[:, -1].reshape(-1, 3)
    predictor = gradient_descent_mse(K, y)
    np.testing.assert_allclose(predictor.predict(K, 2.5, f0, f0).numpy(), end[:n], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(predictor.predict(k, 2.5, f0, f0t).numpy(), end[n:], rtol=1e-7, atol=1e-9)


def test_time_conventions(problem):
    K, k, y, f0, f0t = problem
    n = K.shape[0]
    assert paper_time(100, lr=0.5) == 50.0
    assert paper_time(100, lr=0.5, n=n, mean_loss=True) == pytest.approx(50.0 / n)
    a = gradient_descent_mse(K, y, lr=0.5, mean_loss=True).predict(k, 100, f0, f0t)
    b = gradient_descent_mse(K, y).predict(k, 50.0 / n, f0, f0t)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # single-output targets work too
    torch.testing.assert_close(gradient_descent_mse(K, y[:, 0]).predict(k, 1.0, f0[:, 0], f0t[:, 0]),
                               gradient_descent_mse(K, y).predict(k, 1.0, f0, f0t)[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_finite_width_gradient_descent_tracks_f_t():
    """Full-batch GD on NTKMLP (width 2048, 2 hidden layers, i.e. L = 3) follows Proposition 6 early on.

    Loss: the mean 1/(2n) sum_i (f(x_i) - y_i)^2, torch.optim.SGD with lr = 1 for 60 steps, so
    the paper's time is t = lr * steps / n (Remark 1).  With the empirical NTK at init the
    prediction is exact up to the kernel's drift and the step size (a few 1e-3 of the move
    f_t - f_0); with Theta_inf it is off by the O(1/sqrt(width)) ~ 2% finite-width fluctuation
    of the kernel, so we allow 4/sqrt(width) ~ 9% of the move there.
    """
    n, n0, width, lr, steps = 12, 10, 2048, 1.0, 60
    x = sphere(n, n0, 3) * math.sqrt(n0)  # |x|^2 = n0 keeps Theta_inf O(1) (Proposition 1)
    xt = sphere(5, n0, 4) * math.sqrt(n0)
    y = torch.sign(torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    model = NTKMLP(n0, width, 1, hidden_layers=2, seed=6, dtype=torch.float64)
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    k_emp = empirical_ntk(model, torch.cat([x, xt]))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ft, ftt = model(x), model(xt)
    t = paper_time(steps, lr, n, mean_loss=True)
    move = torch.cat([ft - f0, ftt - f0t]).norm()
    assert move > 0.3 * torch.cat([f0 - y]).norm()  # training went somewhere

    def predicted(K):
        predictor = gradient_descent_mse(K[:n, :n], y)
        return torch.cat([predictor.predict(K[:n, :n], t, f0, f0), predictor.predict(K[n:, :n], t, f0, f0t)])
    actual = torch.cat([ft, ftt])
    err_emp = (predicted(k_emp) - actual).norm() / move
    err_inf = (predicted(model.limit_kernels(torch.cat([x, xt]), want=("ntk",))["ntk"]) - actual).norm() / move
    assert err_emp < 0.02, err_emp
    assert err_inf < 4 / math.sqrt(width), err_inf


def test_f1_macro_hand_computation():
    from lazydrift.table2 import f1_macro
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 0]
    # class 0: TP 2, FP 2, FN 1 -> 4/7; class 1: TP 1, FP 1, FN 1 -> 1/2;
    # class 2: TP 3, FP 1, FN 1 -> 3/4; class 3: TP 0 -> 0
    assert f1_macro(y_true, y_pred) == pytest.approx((4 / 7 + 1 / 2 + 3 / 4 + 0) / 4)
    assert f1_macro([1, 1], [1, 1], num_classes=3) == pytest.approx(1 / 3)  # unseen classes count as 0
    assert f1_macro(y_true, y_true) == 1.0
