"""NTK regression (Proposition 3) and the gradient-flow predictor f_t (Proposition 6).

With K = K(X, X) = V diag(lambda) V^T and k(x) = K(x, X):

* Proposition 3 (t = inf):  f_inf(x) = f_0(x) + k(x) K^-1 (y - f_0(X)).
* Proposition 6:            f_t(x)  = f_0(x) + k(x) K^-1 (exp(-t K) - I) (f_0(X) - y),
  and K^-1 (exp(-t K) - I) = V diag((exp(-t lambda) - 1) / lambda) V^T.  The row vector
  k(x) K^-1 (exp(-t K) - I) is the paper's *projection operator* induced by x.

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

import math

import torch

__all__ = ["KernelFlow", "paper_time", "ntk_regression", "gradient_flow_predict",
           "projection_matrix", "projection_operator", "projection_norm"]


def paper_time(t, lr: float = 1.0, n: int | None = None, mean_loss: bool = False):
    """The paper's time for ``t`` steps (or flow time) at learning rate ``lr``: lr t, or lr t / n
    when the loss is the mean 1/(2n) sum_i |f(x_i) - y_i|^2 instead of the sum."""
    if mean_loss:
        if not n:
            raise ValueError("mean_loss=True needs the number of training points n")
        return lr * t / n
    return lr * t


class KernelFlow:
    """The eigendecomposition of K(X, X), reused for any stopping time t (Proposition 6).

    Args:
        k_train: symmetric (n, n) kernel matrix K(X, X); float64 recommended.
        lr, mean_loss: the time convention (see the module docstring); defaults = the paper's.
    """

    def __init__(self, k_train: torch.Tensor, lr: float = 1.0, mean_loss: bool = False):
        k_train = torch.as_tensor(k_train)
        if k_train.dim() != 2 or k_train.shape[0] != k_train.shape[1]:
            raise ValueError(f"k_train must be a square matrix, got shape {tuple(k_train.shape)}")
        self.n = k_train.shape[0]
        self.time_scale = paper_time(1.0, lr, self.n, mean_loss)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(k_train)

    def spectral_factor(self, t) -> torch.Tensor:
        """(exp(-t lambda_k) - 1) / lambda_k for each eigenvalue (Proposition 6); t = inf gives
        -1/lambda_k.  Uses expm1 so that small t lambda loses no digits; lambda -> 0 gives -t."""
        lam = self.eigenvalues
        if math.isinf(t):
            return -1.0 / lam
        tau = self.time_scale * float(t)
        tiny = lam.abs() < 1e-300
        safe = torch.where(tiny, torch.ones_like(lam), lam)
        return torch.where(tiny, torch.full_like(lam, -tau), torch.expm1(-tau * safe) / safe)

    def projection_matrix(self, t) -> torch.Tensor:
        """K^-1 (exp(-t K) - I) = V diag(spectral_factor(t)) V^T, (n, n)."""
        v = self.eigenvectors
        return (v * self.spectral_factor(t)) @ v.T

    def projection_operator(self, k_test_train: torch.Tensor, t) -> torch.Tensor:
        """K(x, X) K^-1 (exp(-t K) - I), one row per test point, (m, n)."""
        v = self.eigenvectors
        return ((torch.as_tensor(k_test_train, dtype=v.dtype) @ v) * self.spectral_factor(t)) @ v.T

    def projection_norm(self, k_test_train: torch.Tensor, ts) -> torch.Tensor:
        """l2 norm of each test point's projection operator for every t in ``ts``: (len(ts), m).

        V is orthogonal, so |k(x) V diag(s) V^T| = |(k(x) V) * s|: no (m, n) product per t.
        """
        a = torch.as_tensor(k_test_train, dtype=self.eigenvectors.dtype) @ self.eigenvectors
        return torch.stack([(a * self.spectral_factor(t)).norm(dim=-1) for t in ts])

    def predict(self, k_test_train: torch.Tensor, y_train: torch.Tensor, t=math.inf,
                f0_train: torch.Tensor | None = None, f0_test: torch.Tensor | None = None) -> torch.Tensor:
        """f_t at the test points (Proposition 6; t = inf gives Proposition 3).

        ``y_train`` is (n,) or (n, k); ``f0_*`` default to 0 (a network whose initial output is
        negligible, or the kernel predictor of a centred network).
        """
        v = self.eigenvectors
        y = torch.as_tensor(y_train, dtype=v.dtype)
        k = torch.as_tensor(k_test_train, dtype=v.dtype)
        f0_tr = torch.zeros_like(y) if f0_train is None else torch.as_tensor(f0_train, dtype=v.dtype)
        f0_te = (torch.zeros((k.shape[0],) + tuple(y.shape[1:]), dtype=v.dtype)
                 if f0_test is None else torch.as_tensor(f0_test, dtype=v.dtype))
        factor = self.spectral_factor(t)
        residual = v.T @ (f0_tr - y)
        coef = (factor[:, None] * residual) if residual.dim() == 2 else factor * residual
        return f0_te + (k @ v) @ coef


# -- one-shot wrappers ---------------------------------------------------------------------------
def ntk_regression(k_train, k_test_train, y_train, f0_train=None, f0_test=None) -> torch.Tensor:
    """Proposition 3: f_0(x) + K(x, X) K(X, X)^-1 (y - f_0(X)), by a Cholesky solve.

    Falls back to the eigendecomposition (:class:`KernelFlow`) if K is not numerically positive
    definite.
    """
    k_train = torch.as_tensor(k_train)
    y = torch.as_tensor(y_train, dtype=k_train.dtype)
    k = torch.as_tensor(k_test_train, dtype=k_train.dtype)
    f0_tr = torch.zeros_like(y) if f0_train is None else torch.as_tensor(f0_train, dtype=k_train.dtype)
    rhs = y - f0_tr
    chol, info = torch.linalg.cholesky_ex(k_train)
    if int(info) != 0:
        return KernelFlow(k_train).predict(k, y, math.inf, f0_train, f0_test)
    sol = torch.cholesky_solve(rhs[:, None] if rhs.dim() == 1 else rhs, chol)
    out = k @ (sol[:, 0] if rhs.dim() == 1 else sol)
    return out if f0_test is None else out + torch.as_tensor(f0_test, dtype=k_train.dtype)


def gradient_flow_predict(k_train, k_test_train, y_train, t, f0_train=None, f0_test=None,
                          lr: float = 1.0, mean_loss: bool = False) -> torch.Tensor:
    """Proposition 6: f_t at the test points; see :class:`KernelFlow` for the arguments."""
    return KernelFlow(k_train, lr, mean_loss).predict(k_test_train, y_train, t, f0_train, f0_test)


def projection_matrix(k_train, t, lr: float = 1.0, mean_loss: bool = False) -> torch.Tensor:
    """K^-1 (exp(-t K) - I), whose eigenvalues are (exp(-t lambda_k) - 1) / lambda_k."""
    return KernelFlow(k_train, lr, mean_loss).projection_matrix(t)


def projection_operator(k_train, k_test_train, t, lr: float = 1.0, mean_loss: bool = False) -> torch.Tensor:
    """The projection operator K(x, X) K^-1 (exp(-t K) - I) (section 6.1), (m, n)."""
    return KernelFlow(k_train, lr, mean_loss).projection_operator(k_test_train, t)


def projection_norm(k_train, k_test_train, ts, lr: float = 1.0, mean_loss: bool = False) -> torch.Tensor:
    """l2 norms of the projection operator rows for each t in ``ts``: (len(ts), m)."""
    return KernelFlow(k_train, lr, mean_loss).projection_norm(k_test_train, ts)
