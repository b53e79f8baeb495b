"""Kernel drift: how far the empirical NTK Theta_t moves from Theta_0, and Theta_0 from Theta_inf.

Theorem 1 (Jacot et al. 2018): as the hidden widths grow, the empirical NTK at initialization
tends to the closed form Theta_inf (``lazydrift.kernels.relu_ntk``) and stays there during
training.  At finite width n both statements hold up to corrections: ||Theta_0 - Theta_inf||
/ ||Theta_inf|| ~ n^-1/2 at initialization (fluctuations of a sum of n terms), and at a fixed
step in the NTK parameterization ||Theta_t - Theta_0|| / ||Theta_0|| ~ n^-1 (the kernel's
change is driven by the dNTK, O(1/n): Dyer & Gur-Ari 2020, Roberts, Yaida & Hanin 2022), inside
the rigorous bound O(n^-1/2) of Lee et al. 2019.  The statistics here are pure functions of n x n
kernels (Frobenius norms, float64); :class:`KernelDriftTracker` is the thin piece that computes
Theta_t with :func:`lazydrift.empirical.empirical_ntk` at the steps a run records.

Columns of :meth:`KernelDriftTracker.frame` (``COLUMNS``), one row per recorded step:

* ``rel_change``: ||Theta_t - Theta_0||_F / ||Theta_0||_F;
* ``cosine``: <Theta_t, Theta_0>_F / (||Theta_t||_F ||Theta_0||_F), the kernels' cosine as matrices;
* ``eig_max``: the largest eigenvalue of Theta_t (sets SGD's stability edge 2 / eig_max for the
  batch-averaged square loss on these probes);
* ``target_alignment``: <Theta_t, Y Y^T>_F / (||Theta_t||_F ||Y Y^T||_F) (Cristianini et al.
  2002's uncentred kernel-target alignment), NaN without targets;
* ``limit_distance``: ||Theta_0 - Theta_inf||_F / ||Theta_inf||_F on the first row only (NaN
  elsewhere and where no closed form applies, see :func:`limit_ntk`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .empirical import empirical_ntk
from .export import write_csv
from .model import NTKMLP

__all__ = ["COLUMNS", "NETWORK", "relative_distance", "kernel_cosine", "largest_eigenvalue", "target_alignment",
           "limit_ntk", "kernel_drift_row", "KernelDriftTracker"]

COLUMNS = ["step", "rel_change", "cosine", "eig_max", "target_alignment", "limit_distance"]
NETWORK = "network"  # the ``layer`` of the kernel's rows in combined tables (noise_floor.csv, scaling.csv)


def _as_float64(a) -> torch.Tensor:
    return torch.as_tensor(a).detach().to(device="cpu", dtype=torch.float64)


def _check_square(theta: torch.Tensor, name: str) -> None:
    if theta.dim() != 2 or theta.shape[0] != theta.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) kernel matrix, got shape {tuple(theta.shape)}")


def relative_distance(a, reference) -> float:
    """||a - reference||_F / ||reference||_F (the relative kernel change when reference = Theta_0)."""
    a, reference = _as_float64(a), _as_float64(reference)
    if a.shape != reference.shape:
        raise ValueError(f"kernels must have the same shape, got {tuple(a.shape)} and {tuple(reference.shape)}")
    return ((a - reference).norm() / reference.norm()).item()


def kernel_cosine(a, b) -> float:
    """<a, b>_F / (||a||_F ||b||_F): 1 when the kernels are proportional."""
    a, b = _as_float64(a), _as_float64(b)
    if a.shape != b.shape:
        raise ValueError(f"kernels must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return ((a * b).sum() / (a.norm() * b.norm())).item()


def largest_eigenvalue(theta) -> float:
    """The largest eigenvalue of the symmetric part of ``theta`` (float64 ``eigvalsh``); NaN for a
    kernel with inf or NaN entries (a diverged network), where ``eigvalsh`` fails to converge."""
    theta = _as_float64(theta)
    _check_square(theta, "theta")
    if not torch.isfinite(theta).all():
        return math.nan
    return torch.linalg.eigvalsh((theta + theta.T) / 2)[-1].item()


def _target_gram(targets: torch.Tensor, n: int) -> torch.Tensor:
    """Y Y^T for targets (n,) or (n, k) floats, or (n,) integer class ids (one-hot rows)."""
    targets = torch.as_tensor(targets).detach().cpu()
    if targets.shape[0] != n or targets.dim() > 2:
        raise ValueError(f"targets must be (n,) or (n, k) with n = {n} probes, got shape {tuple(targets.shape)}")
    if not torch.is_floating_point(targets):
        if targets.dim() != 1:
            raise ValueError(f"integer targets must be (n,) class ids, got shape {tuple(targets.shape)}")
        return (targets[:, None] == targets[None, :]).to(torch.float64)
    y = targets.to(torch.float64).reshape(n, -1)
    return y @ y.T


def target_alignment(theta, targets) -> float:
    """Kernel-target alignment <Theta, Y Y^T>_F / (||Theta||_F ||Y Y^T||_F) (uncentred).

    For the NTK of one output g = v . f this is the alignment of the full kernel Theta (x) I with
    vec(Y) vec(Y)^T, since <Theta (x) I, vec(Y) vec(Y)^T> = <Theta, Y Y^T>.
    """
    theta = _as_float64(theta)
    _check_square(theta, "theta")
    yy = _target_gram(targets, theta.shape[0])
    return ((theta * yy).sum() / (theta.norm() * yy.norm())).item()


def limit_ntk(model: nn.Module, probes: torch.Tensor) -> torch.Tensor:
    """Theta_inf on ``probes`` (Theorem 1), float64 on the CPU: ``model.limit_kernels``'s ``"ntk"``.

    Defined for an :class:`~lazydrift.model.NTKMLP` in the NTK parameterization (its depth L =
    hidden_layers + 1 and its input layer's own scale, see :meth:`~lazydrift.model.NTKMLP.limit_kernels`);
    raises ValueError otherwise.  Token ids stand for one-hot rows.  Every scalar output (an output
    column, or v . f for a unit vector v) has this limit, since the infinite-width NTK is
    Theta_inf (x) I over the outputs.
    """
    if not isinstance(model, NTKMLP):
        raise ValueError(f"the closed-form limit is defined for NTKMLP, not {type(model).__name__}")
    model.check_input(probes)
    return model.limit_kernels(probes, want=("ntk",))["ntk"]


def kernel_drift_row(step: int, theta_t, theta_0, targets=None, limit=None) -> dict:
    """One row of ``COLUMNS``; ``limit`` is Theta_inf, given only on the row that should report
    ||Theta_t - Theta_inf|| / ||Theta_inf|| (the first record)."""
    theta_t, theta_0 = _as_float64(theta_t), _as_float64(theta_0)
    return {
        "step": int(step),
        "rel_change": relative_distance(theta_t, theta_0),
        "cosine": kernel_cosine(theta_t, theta_0),
        "eig_max": largest_eigenvalue(theta_t),
        "target_alignment": math.nan if targets is None else target_alignment(theta_t, targets),
        "limit_distance": math.nan if limit is None else relative_distance(theta_t, limit),
    }


class KernelDriftTracker:
    """Computes the empirical NTK on fixed probes at each recorded step and keeps drift rows.

    Theta_0 is the kernel when :meth:`capture` is called (``DriftRecorder`` calls it where it
    captures h_0), else at the first :meth:`record` (step 0 in a run).  With ``limit="auto"`` the
    first row also reports ||Theta_0 - Theta_inf|| / ||Theta_inf|| where :func:`limit_ntk` is
    defined.  Only Theta_0 (n x n, float64) and the rows are kept.

    Args:
        model: the live network (evaluated in eval mode; training flags are restored).
        probes: the fixed inputs (n, ...), e.g. the first ``ntk_probes`` probes of a run.
        output: which scalar output (see :func:`~lazydrift.empirical.empirical_ntk`);
            ``"random"`` by default, whose limit is Theta_inf.
        targets: optional (n,) / (n, k) targets or class ids for ``target_alignment``.
        seed: seeds v for ``output="random"``.
        limit: ``"auto"``, None (no limit distance) or a precomputed (n, n) Theta_inf.
        method: the route of :func:`~lazydrift.empirical.empirical_ntk` (``"auto"`` falls back to
            the Jacobian route with a warning; ``"structured"`` never does).
    """

    def __init__(self, model: nn.Module, probes: torch.Tensor, *, output: int | str | None = "random",
                 targets=None, seed: int = 0, limit="auto", method: str = "auto"):
        self.model, self.probes, self.output, self.seed, self.method = model, probes, output, seed, method
        self.targets = None if targets is None else torch.as_tensor(targets).detach().cpu()
        if self.targets is not None:
            _target_gram(self.targets, len(probes))  # fail now, not at the first record
        if isinstance(limit, str) and limit != "auto":
            raise ValueError(f"limit must be 'auto', None or a kernel matrix, got {limit!r}")
        self.limit = limit
        self.theta_0: torch.Tensor | None = None
        self.rows: list[dict] = []
        self.seconds = 0.0  # spent computing kernels (and Theta_inf)

    def kernel(self) -> torch.Tensor:
        """Theta_t on the probes now, float64 on the CPU."""
        if self.model is None:
            raise RuntimeError("this KernelDriftTracker's model was released")
        start = time.perf_counter()
        theta = _as_float64(empirical_ntk(self.model, self.probes, output=self.output, seed=self.seed,
                                          method=self.method))
        self.seconds += time.perf_counter() - start
        return theta

    def _limit(self) -> torch.Tensor | None:
        if isinstance(self.limit, str):  # "auto": where a closed form applies
            try:
                return limit_ntk(self.model, self.probes)
            except ValueError:
                return None
        return None if self.limit is None else _as_float64(self.limit)

    def capture(self) -> torch.Tensor:
        """Fix Theta_0 as the kernel now (rows recorded so far are kept)."""
        self.theta_0 = self.kernel()
        return self.theta_0

    def record(self, step: int) -> dict:
        theta = self.kernel()
        if self.theta_0 is None:
            self.theta_0 = theta
        row = kernel_drift_row(step, theta, self.theta_0, self.targets)
        if not self.rows:  # the first row carries Theta_0's distance to its limit
            limit = self._limit()
            row["limit_distance"] = math.nan if limit is None else relative_distance(self.theta_0, limit)
        self.rows.append(row)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def to_csv(self, directory: str | Path) -> Path:
        return write_csv(self.frame(), Path(directory) / "ntk.csv")

    def reset(self) -> None:
        """Forget Theta_0 and the rows."""
        self.theta_0, self.rows = None, []

    def release_model(self) -> None:
        """Drop the model, the probes and Theta_0; the rows stay."""
        self.model = self.probes = self.theta_0 = None

    def state_dict(self) -> dict:
        return {"theta_0": self.theta_0, "rows": [dict(r) for r in self.rows], "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        theta_0 = state["theta_0"]
        if theta_0 is not None and self.probes is not None and tuple(theta_0.shape) != (len(self.probes),) * 2:
            raise ValueError(f"load_state_dict(): the saved Theta_0 is {tuple(theta_0.shape)}, for "
                             f"{theta_0.shape[0]} probes; this tracker has {len(self.probes)}")
        self.theta_0 = theta_0
        self.rows = [dict(r) for r in state["rows"]]
        self.seconds = float(state.get("seconds", 0.0))
