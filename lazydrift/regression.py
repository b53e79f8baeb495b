"""Kernel regression (Proposition 3) and the gradient-flow predictor f_t (Proposition 6): one
predictor per training set, with its factorizations cached.

With K = K(X, X) = V diag(lambda) V^T and k(x) = K(x, X):

* Proposition 3 (t = inf):  f_inf(x) = f_0(x) + k(x) K^-1 (y - f_0(X)),  by a Cholesky solve.
* Proposition 6:            f_t(x)  = f_0(x) + k(x) K^-1 (exp(-t K) - I) (f_0(X) - y),
  and K^-1 (exp(-t K) - I) = V diag((exp(-t lambda) - 1) / lambda) V^T, by the eigendecomposition.
  The row vector k(x) K^-1 (exp(-t K) - I) is the paper's *projection operator* induced by x.

:func:`gradient_descent_mse` builds a :class:`KernelPredictor` from K(X, X) and the targets, as
neural-tangents' ``predict.gradient_descent_mse`` does; the Cholesky factor (t = inf) and the
eigendecomposition (finite t) are computed on first use and reused for every test set, time and
right-hand side.  ``diag_reg`` adds ``diag_reg * mean(diag K)`` to the diagonal (neural-tangents'
default scaling; ``diag_reg_absolute_scale=True`` adds ``diag_reg`` itself).

Time convention.  The paper's t (Remark 1) has no 1/n in the exponent: f_t is the gradient flow
d f/dt = -K(x, X) (f(X) - y) of the *summed* loss 1/2 sum_i |f(x_i) - y_i|^2 with unit learning
rate; full-batch gradient descent with learning rate lr on that loss reaches t = lr * steps.  The
common convention (Jacot et al. 2018, Lee et al. 2019) uses the *mean* loss 1/(2n) sum_i ..., whose
flow is exp(-lr t K / n): pass ``lr`` and ``mean_loss=True`` and t counts steps (or time) in
that convention; :func:`paper_time` does the conversion.

The same formulas hold for any kernel; with the normalized kernel Theta-bar = c Theta (c =
n0 2^(L-1) / L on the sphere) Proposition 3 is unchanged (c cancels), while f_t with Theta-bar at
time t equals f_t with Theta at time c t.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

__all__ = ["KernelPredictor", "gradient_descent_mse", "paper_time"]


def paper_time(t, lr: float = 1.0, n: int | None = None, mean_loss: bool = False):
    """The paper's time for ``t`` steps (or flow time) at learning rate ``lr``: lr t, or lr t / n
    when the loss is the mean 1/(2n) sum_i |f(x_i) - y_i|^2 instead of the sum."""
    if mean_loss:
        if not n:
            raise ValueError("mean_loss=True needs the number of training points n")
        return lr * t / n
    return lr * t


def gradient_descent_mse(k_train_train, y_train, *, diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                         lr: float = 1.0, mean_loss: bool = False) -> "KernelPredictor":
    """The predictor of Propositions 3 and 6 for this training set (see :class:`KernelPredictor`)."""
    return KernelPredictor(k_train_train, y_train, diag_reg=diag_reg,
                           diag_reg_absolute_scale=diag_reg_absolute_scale, lr=lr, mean_loss=mean_loss)


class KernelPredictor:
    """f_t at any test points and times for one training set (Propositions 3 and 6).

    Args:
        k_train_train: symmetric (n, n) kernel matrix K(X, X); float64 recommended.
        y_train: (n,) or (n, k) targets f*(X).
        diag_reg, diag_reg_absolute_scale: K + diag_reg mean(diag K) I (or + diag_reg I).
        lr, mean_loss: the time convention (see the module docstring); defaults = the paper's.
    """

    def __init__(self, k_train_train, y_train, *, diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                 lr: float = 1.0, mean_loss: bool = False):
        k = torch.as_tensor(k_train_train)
        if k.dim() != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"k_train_train must be a square matrix, got shape {tuple(k.shape)}")
        y = torch.as_tensor(y_train, dtype=k.dtype, device=k.device)
        if y.shape[0] != k.shape[0]:
            raise ValueError(f"y_train has {y.shape[0]} rows for a {k.shape[0]} x {k.shape[0]} kernel")
        if diag_reg:
            reg = diag_reg if diag_reg_absolute_scale else diag_reg * float(k.diagonal().mean())
            k = k + reg * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
        self.k_train_train, self.y_train, self.n = k, y, k.shape[0]
        self.time_scale = paper_time(1.0, lr, self.n, mean_loss)

    # -- the two factorizations, computed on first use ---------------------------------------------
    @functools.cached_property
    def _cholesky(self) -> torch.Tensor | None:
        """Lower Cholesky factor of K, or None when K is not numerically positive definite."""
        chol, info = torch.linalg.cholesky_ex(self.k_train_train)
        return chol if int(info) == 0 else None

    @functools.cached_property
    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.linalg.eigh(self.k_train_train)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of K(X, X) (with the regularization), ascending."""
        return self._eigh[0]

    @property
    def eigenvectors(self) -> torch.Tensor:
        return self._eigh[1]

    def solve(self, rhs) -> torch.Tensor:
        """K^-1 rhs for an (n,) or (n, k) right-hand side: Cholesky, or the eigendecomposition
        when K is not numerically positive definite."""
        b = torch.as_tensor(rhs, dtype=self.k_train_train.dtype, device=self.k_train_train.device)
        col = b[:, None] if b.dim() == 1 else b
        if self._cholesky is not None:
            sol = torch.cholesky_solve(col, self._cholesky)
        else:
            lam, v = self._eigh
            sol = v @ ((v.T @ col) / lam[:, None])
        return sol[:, 0] if b.dim() == 1 else sol

    # -- Proposition 6 ---------------------------------------------------------------------------
    def spectral_factor(self, t) -> torch.Tensor:
        """(exp(-t lambda_k) - 1) / lambda_k for each eigenvalue (Proposition 6); t = inf gives
        -1/lambda_k.  Uses expm1 so that small t lambda loses no digits; lambda -> 0 gives -t."""
        lam = self.eigenvalues
        if t is None or math.isinf(float(t)):
            return -1.0 / lam
        tau = self.time_scale * float(t)
        tiny = lam.abs() < 1e-300
        safe = torch.where(tiny, torch.ones_like(lam), lam)
        return torch.where(tiny, torch.full_like(lam, -tau), torch.expm1(-tau * safe) / safe)

    def predict(self, k_test_train, t=None, f0_train=None, f0_test=None) -> torch.Tensor:
        """f_t at the test points (Proposition 6; t = None or inf: Proposition 3, by Cholesky).

        ``t`` may be a sequence of times: the result then has a leading axis, one prediction per
        time, at the cost of one (m, n) x (n, n) product.  ``f0_*`` default to 0 (a network whose
        initial output is negligible, or the kernel predictor of a centred network).
        """
        dtype, device = self.k_train_train.dtype, self.k_train_train.device
        k = torch.as_tensor(k_test_train, dtype=dtype, device=device)
        y = self.y_train
        f0_tr = torch.zeros_like(y) if f0_train is None else torch.as_tensor(f0_train, dtype=dtype, device=device)
        f0_te = (torch.zeros((k.shape[0],) + tuple(y.shape[1:]), dtype=dtype, device=device)
                 if f0_test is None else torch.as_tensor(f0_test, dtype=dtype, device=device))
        times = None if t is None or torch.as_tensor(t).dim() == 0 else torch.as_tensor(t).flatten().tolist()
        if times is None and (t is None or math.isinf(float(t))):
            return f0_te + k @ self.solve(y - f0_tr)
        v = self.eigenvectors
        residual = v.T @ (f0_tr - y)
        residual = residual[:, None] if residual.dim() == 1 else residual
        a = k @ v
        out = [f0_te + ((a * self.spectral_factor(s)) @ residual).reshape(f0_te.shape)
               for s in (times if times is not None else [t])]
        return torch.stack(out) if times is not None else out[0]

    def projection_operator(self, k_test_train, t) -> torch.Tensor:
        """K(x, X) K^-1 (exp(-t K) - I), one row per test point, (m, n) (section 6.1)."""
        v = self.eigenvectors
        return ((torch.as_tensor(k_test_train, dtype=v.dtype, device=v.device) @ v) * self.spectral_factor(t)) @ v.T

    def projection_matrix(self, t) -> torch.Tensor:
        """K^-1 (exp(-t K) - I) = V diag(spectral_factor(t)) V^T, (n, n)."""
        v = self.eigenvectors
        return (v * self.spectral_factor(t)) @ v.T

    def projection_norm(self, k_test_train, ts: Sequence[float]) -> torch.Tensor:
        """l2 norm of each test point's projection operator for every t in ``ts``: (len(ts), m).

        V is orthogonal, so |k(x) V diag(s) V^T| = |(k(x) V) * s|: no (m, n) product per t.
        """
        v = self.eigenvectors
        a = torch.as_tensor(k_test_train, dtype=v.dtype, device=v.device) @ v
        return torch.stack([(a * self.spectral_factor(t)).norm(dim=-1) for t in ts])
