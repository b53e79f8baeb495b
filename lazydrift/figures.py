"""Figures 2 and 4-8 of section 6, and a check of Theorem 2's rate: a CSV and a PNG for each.

    python -m lazydrift.figures --out results/figures            # minutes: Figures 6 and 7 are eigendecompositions
    python -m lazydrift.figures --out /tmp/figs --quick          # seconds (smaller sizes)

Sizes (full / quick):

* Figure 2: Theta-bar^(L) for rho^(1) in {0, 0.5, 0.9, 0.99}, L = 1..100 (Proposition 5).
* Figures 4 / 5: |X| = 20 points and one extra point x (uniform on S^127; MNIST: 20 training
  images and one test image), L = 1..30.  Rows: Theta-bar, rho^(L) and eta (section 6.4, eta^(1) =
  x^T x', eta^(L+1) = g(eta^(L)), g(z) = (1 + e^-z)^-2).  Columns: the pairs within X, the pairs
  (x, x_i), and the change |kappa^(L+1) - kappa^(L)| of all of them (the convergence rate).
* Figure 6: n in {50, 100, 200, 500, 1000, 2000} (quick: {50, 100, 200}); for each n the depth
  rule L(n) = ceil(max_{i != j} 1 / sqrt(1 - h(x_i^T x_j))) (section 6.4; rounded up to an
  integer) and also L in {2, 3, 4, 6, 8, 12, 16, 20, 30}; stopping times t = 0, 1, ...,
  ceil(1/lambda_n) with lambda_n the smallest eigenvalue of Theta-bar^(L)(X, X) (about 40 of
  them, log-spaced, when ceil(1/lambda_n) >= 40); the l2 norm of
  the projection operator Theta-bar(x, X) Theta-bar^-1 (exp(-t Theta-bar) - I) averaged over 100
  test points x, and the norm of the projection term (the operator applied to f_0(X) - f*(X) with
  f_0 = 0; f* one-hot labels for MNIST, random signs for the synthetic set).  Synthetic (uniform
  S^127) and MNIST.
* Figure 7: smallest eigenvalue of Theta-bar^(L)(X, X), L = 1..30, n in {100, 250, 500, 1000,
  2000} uniform on S^127 (quick: n <= 250).
* Figure 8: the depth bound max_{i != j} 1/sqrt(1 - h(x_i^T x_j)) for n = 2^4 .. 2^14 points
  uniform on S^127 (3 seeds; quick: up to 2^10, 2 seeds), beside Example 2's estimates
  1/sqrt(delta) and 1/sqrt(1 - h(1 - delta)) with delta = C(n, 2)^(-1/(n0 - 1)), and
  1/sqrt(1 - h(cos delta)): Proposition 7's proof bounds the *angle* (theta <= delta), so the
  cosine it controls is cos(delta), not 1 - delta; the measured bound lies between the two.
* Theorem 2: L |Theta-bar^(L) - 1/4| for L = 1..3000 and several rho^(1), by Proposition 5 on
  the six cosines (float64; beyond L ~ 1e4 arccos near 1 loses digits).

Kernel matrices (Figures 4 to 7) come from the tabulated kernels of :mod:`lazydrift.kernels`,
all depths of a sweep in one call; Figure 6's operators from one
:func:`lazydrift.regression.gradient_descent_mse` predictor per kernel.  This module only
assembles the numbers each figure shows and draws them; importing it changes no global state
(matplotlib is imported, and STYLE applied, inside each figure).  MNIST panels are skipped, with
a message, when MNIST cannot be found.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lazydrift import mnist
from lazydrift.export import write_csv, write_figure
from lazydrift.kernels import (correlations, depth_rule, eta_recurrence, max_offdiag_cosine, normalized_kernel,
                               normalized_kernel_recurrence, relu_kernels)
from lazydrift.regression import gradient_descent_mse

__all__ = ["uniform_sphere", "figure2", "figure4_5", "figure6", "figure7", "figure8", "theorem2_rate",
           "make_figures", "main"]

# Applied around each figure (a context, not at import: importing this module changes no global state).
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": 150}


def uniform_sphere(n: int, n0: int, seed: int) -> torch.Tensor:
    """n points uniform on S^(n0-1) (normalized Gaussians), float64."""
    x = torch.randn(n, n0, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


# -- plotting helpers ---------------------------------------------------------------------------
@contextlib.contextmanager
def _pyplot():
    """matplotlib's pyplot with this module's STYLE, imported on first use (matplotlib picks a
    non-interactive backend by itself where there is no display)."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield plt


def _save(fig, path: Path) -> Path:
    return write_figure(fig, path, dpi=150)


# -- Figure 2 -----------------------------------------------------------------------------------
def figure2(out: Path, max_depth: int = 100) -> list[Path]:
    rhos = [0.0, 0.5, 0.9, 0.99]
    depths = np.arange(1, max_depth + 1)
    tb = normalized_kernel_recurrence(np.array(rhos), max_depth, all_depths=True)
    rl = correlations(np.array(rhos), max_depth)
    frame = pd.DataFrame([{"rho1": r, "depth": int(L), "theta_bar": tb[L - 1, i], "rho_L": rl[L - 1, i]}
                          for i, r in enumerate(rhos) for L in depths])
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.0), sharey=True)
        for i, (ax, r) in enumerate(zip(axes, rhos)):
            ax.plot(depths, tb[:, i], color="tab:blue", lw=1.2, label=r"$\bar\Theta^{(L)}(x,x')$")
            ax.axhline(0.25, color="tab:red", lw=1, ls="--", label="1/4")
            ax.set_title(f"{'abcd'[i]}) " + r"$\rho^{(1)}=$" + f"{r}")
            ax.set_xlabel("depth L")
        axes[0].set_ylabel(r"normalized NTK $\bar\Theta^{(L)}$")
        axes[0].legend(loc="upper right")
        return [write_csv(frame, out / "figure2.csv"), _save(fig, out / "figure2.png")]


# -- Figures 4 and 5 ----------------------------------------------------------------------------
def figure4_5(out: Path, X: torch.Tensor, x: torch.Tensor, name: str, max_depth: int = 30) -> list[Path]:
    """Convergence of Theta-bar, rho and eta on the pairs of X and the pairs (x, x_i)."""
    n = len(X)
    iu = np.triu_indices(n, 1)
    depths = np.arange(1, max_depth + 1)
    # Theta-bar^(L) and rho^(L) for L = 1..max_depth at once (the tabulated kernels)
    within = relu_kernels(X, None, depths.tolist(), want=("ntk_bar", "rho"))
    against = relu_kernels(x[None, :], X, depths.tolist(), want=("ntk_bar", "rho"))
    cos_xx = (X @ X.T).clamp(-1, 1).numpy()[iu]
    cos_x = (X @ x).clamp(-1, 1).numpy()
    values = {
        "theta_bar": (within["ntk_bar"].numpy()[:, iu[0], iu[1]], against["ntk_bar"].numpy()[:, 0, :]),
        "rho": (within["rho"].numpy()[:, iu[0], iu[1]], against["rho"].numpy()[:, 0, :]),
        "eta": (eta_recurrence(cos_xx, max_depth, all_depths=True), eta_recurrence(cos_x, max_depth, all_depths=True)),
    }
    labels = {"theta_bar": r"$\bar\Theta^{(L)}$", "rho": r"$\rho^{(L)}$", "eta": r"$\eta^{(L)}$"}
    rows = []
    for kname, (vals_xx, vals_x) in values.items():
        # i = -1 stands for the extra point x
        for label, ii, jj, vals in (("X-X", iu[0], iu[1], vals_xx), ("x-X", np.full(n, -1), np.arange(n), vals_x)):
            rows.append(pd.DataFrame({"kernel": kname, "pairs": label, "i": np.tile(ii, max_depth),
                                      "j": np.tile(jj, max_depth), "depth": np.repeat(depths, len(ii)),
                                      "value": vals.ravel()}))
    stem = "figure4" if name.startswith("synthetic") else "figure5"
    with _pyplot() as plt:
        fig, axes = plt.subplots(3, 3, figsize=(7.2, 6.0))
        for r_i, (kname, (vals_xx, vals_x)) in enumerate(values.items()):
            axes[r_i, 0].plot(depths, vals_xx, lw=0.5, alpha=0.6)
            axes[r_i, 1].plot(depths, vals_x, lw=0.7, alpha=0.8)
            both = np.concatenate([vals_xx, vals_x], axis=1)
            change = np.abs(np.diff(both, axis=0)).clip(min=1e-17)
            axes[r_i, 2].semilogy(depths[1:], change, lw=0.5, alpha=0.6)
            if kname == "theta_bar":
                for c in (0, 1):
                    axes[r_i, c].axhline(0.25, color="tab:red", lw=1, ls="--")
            axes[r_i, 0].set_ylabel(labels[kname])
        for c, title in enumerate([r"pairs $(x_i, x_j)$ in X", r"pairs $(x, x_i)$",
                                   r"change $|\kappa^{(L+1)}-\kappa^{(L)}|$"]):
            axes[0, c].set_title(title)
            axes[2, c].set_xlabel("depth L")
        fig.suptitle(f"{name}: |X| = {n}, n0 = {X.shape[1]}", fontsize=9)
        return [write_csv(pd.concat(rows, ignore_index=True), out / f"{stem}.csv"), _save(fig, out / f"{stem}.png")]


# -- Figure 6 -----------------------------------------------------------------------------------
FIG6_DEPTHS = [2, 3, 4, 6, 8, 12, 16, 20, 30]


def stopping_times(t_max: int, most: int = 40) -> list[int]:
    """The integers 0..t_max, or about ``most`` of them (log-spaced, with 0 and t_max) when
    t_max is large (shallow kernels on near-duplicate MNIST images have lambda_n ~ 1e-4)."""
    if t_max < most:
        return list(range(t_max + 1))
    return sorted({0, t_max, *np.unique(np.round(np.geomspace(1, t_max, most - 1)).astype(int)).tolist()})


def projection_rows(X: torch.Tensor, targets: torch.Tensor, X_test: torch.Tensor, dataset: str,
                    depth: int | None = None) -> list[dict]:
    """Projection operator and term norms for t = 0..ceil(1/lambda_n) at one depth.

    ``depth=None`` uses the depth rule L(n) = ceil(max_{i != j} 1/sqrt(1 - h(x_i^T x_j))).  The
    term is the operator applied to f_0(X) - f*(X) with f_0 = 0, i.e. the prediction f_t itself.
    """
    n = len(X)
    max_cos = max_offdiag_cosine(X)
    rule = max(1, math.ceil(depth_rule(max_cos)))
    L = rule if depth is None else depth
    predictor = gradient_descent_mse(normalized_kernel(X, depth=L), targets)
    k = normalized_kernel(X_test, X, depth=L)
    lam = predictor.eigenvalues
    t_max = math.ceil(1.0 / float(lam[0]))
    ts = stopping_times(t_max)
    operator = predictor.projection_norm(k, ts)                       # |k(x) K^-1 (exp(-tK) - I)|
    term = predictor.predict(k, ts)                                   # f_t(x) - f_0(x), f_0 = 0
    term = (term if term.dim() == 3 else term[..., None]).norm(dim=-1)
    return [{"dataset": dataset, "n": n, "depth": L, "depth_rule": rule, "is_rule": L == rule,
             "max_cos": max_cos, "lambda_min": float(lam[0]), "lambda_max": float(lam[-1]),
             "t": t, "t_max": t_max, "operator_norm": float(operator[i].mean()),
             "operator_norm_max": float(operator[i].max()), "term_norm": float(term[i].mean())}
            for i, t in enumerate(ts)]


def figure6(out: Path, datasets: dict, sizes: list[int], n_test: int = 100, depths=FIG6_DEPTHS) -> list[Path]:
    """``datasets``: name -> (pool X, targets, test pool) tensors; X's first n rows are used.

    Columns: (a) norm at t = ceil(1/lambda_n) against depth for each n, the depth rule marked;
    (b) norm against t at the rule's depth; (c) norms at the rule's depth and t_max against n.
    """
    rows = []
    for name, (pool, targets, test) in datasets.items():
        for n in [m for m in sizes if m <= len(pool)]:
            rows += projection_rows(pool[:n], targets[:n], test[:n_test], name)
            rule = rows[-1]["depth"]
            for L in depths:
                if L != rule:
                    rows += projection_rows(pool[:n], targets[:n], test[:n_test], name, depth=L)
    frame = pd.DataFrame(rows)
    last = frame[frame.t == frame.t_max]
    with _pyplot() as plt:
        fig, axes = plt.subplots(len(datasets), 3, figsize=(7.2, 2.9 * len(datasets)), squeeze=False)
        for r, (name, d) in enumerate(last.groupby("dataset", sort=False)):
            ax = axes[r, 0]
            for n, dn in d.groupby("n"):
                dn = dn.sort_values("depth")
                line, = ax.plot(dn.depth, dn.operator_norm, "-", lw=1, label=f"n={n}")
                at = dn[dn.is_rule]
                ax.plot(at.depth, at.operator_norm, "o", color=line.get_color(), ms=4)
            ax.set_xlabel("depth L (dot: depth rule L(n))")
            ax.set_ylabel(r"operator norm, $t=\lceil 1/\lambda_n\rceil$")
            ax.set_title(f"{name}: norm vs depth")
            ax.legend(ncol=2, fontsize=6, framealpha=0.7, loc="upper right")
            ax = axes[r, 1]
            rule_rows = frame[(frame.dataset == name) & frame.is_rule]
            for n, dn in rule_rows.groupby("n"):
                ax.plot(dn.t, dn.operator_norm, "o-", ms=2.5, lw=1, label=f"n={n}, L={dn.depth.iloc[0]}")
            ax.set_xlabel(r"stopping time $t\in\{0,\dots,\lceil 1/\lambda_n\rceil\}$")
            ax.set_ylabel("operator norm at L(n)")
            ax.set_title(f"{name}: norm vs t at L(n)")
            ax.legend(fontsize=6, framealpha=0.7, loc="lower right")
            ax = axes[r, 2]
            at = d[d.is_rule].sort_values("n")
            ax.plot(at.n, at.operator_norm, "o-", ms=3, label="operator")
            ax.plot(at.n, at.term_norm, "s--", ms=3, label=r"term $(f_0-f^*)(X)$")
            for _, row in at.iterrows():
                ax.annotate(f"L={row.depth}", (row.n, row.operator_norm), fontsize=6, xytext=(0, 4),
                            textcoords="offset points", ha="center")
            ax.set_xscale("log")
            ax.set_xlabel("dataset size n")
            ax.set_ylabel("norm at L(n), t_max")
            ax.set_title(f"{name}: norm vs n")
            ax.legend(fontsize=6, framealpha=0.7)
        return [write_csv(frame, out / "figure6.csv"), _save(fig, out / "figure6.png")]


# -- Figure 7 -----------------------------------------------------------------------------------
def figure7(out: Path, sizes: list[int], n0: int = 128, max_depth: int = 30, seed: int = 0) -> list[Path]:
    """Smallest eigenvalue of Theta-bar^(L)(X, X) for L = 1..max_depth, ten depths per kernel call."""
    rows = []
    for n in sizes:
        X = uniform_sphere(n, n0, seed + n)
        for chunk in np.array_split(np.arange(1, max_depth + 1), math.ceil(max_depth / 10)):
            stack = normalized_kernel(X, depth=chunk.tolist())
            for L, K in zip(chunk.tolist(), stack):
                rows.append({"n": n, "n0": n0, "depth": L, "lambda_min": float(torch.linalg.eigvalsh(K)[0])})
    frame = pd.DataFrame(rows)
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6))
        for n, d in frame.groupby("n"):
            axes[0].semilogy(d.depth, d.lambda_min.clip(lower=1e-16), "o-", ms=2, lw=1, label=f"n={n}")
            d2 = d[d.depth >= 2]
            axes[1].plot(d2.depth, d2.lambda_min, "o-", ms=2, lw=1, label=f"n={n}")
        axes[0].set_title(f"uniform on $S^{{{n0 - 1}}}$; L = 1 has rank <= n0 (clipped at 1e-16)")
        axes[1].set_title("L >= 2, linear scale")
        for ax in axes:
            ax.set_xlabel("depth L")
            ax.set_ylabel(r"$\lambda_{\min}(\bar\Theta^{(L)}(XX^\top))$")
        axes[1].legend()
        return [write_csv(frame, out / "figure7.csv"), _save(fig, out / "figure7.png")]


# -- Figure 8 -----------------------------------------------------------------------------------
def figure8(out: Path, sizes: list[int], n0: int = 128, seeds=(0, 1, 2)) -> list[Path]:
    rows = []
    for n in sizes:
        for s in seeds:
            c = max_offdiag_cosine(uniform_sphere(n, n0, 1000 * s + n))
            delta = math.exp(-(math.lgamma(n + 1) - math.lgamma(n - 1) - math.log(2)) / (n0 - 1))
            rows.append({"n": n, "n0": n0, "seed": s, "max_cos": c, "depth_bound": depth_rule(c),
                         "example2_inv_sqrt_delta": 1 / math.sqrt(delta), "example2_h_rule": depth_rule(1 - delta),
                         "angle_reading": depth_rule(math.cos(delta))})
    frame = pd.DataFrame(rows)
    agg = frame.groupby("n").agg(mean=("depth_bound", "mean"), lo=("depth_bound", "min"), hi=("depth_bound", "max"),
                                 ex2=("example2_inv_sqrt_delta", "first"), ex2h=("example2_h_rule", "first"),
                                 angle=("angle_reading", "first"))
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(3.8, 3.9))
        ax.plot(agg.index, agg["mean"], "o-", ms=3, label=r"$\max_{i\neq j}1/\sqrt{1-h(x_i^\top x_j)}$")
        ax.fill_between(agg.index, agg.lo, agg.hi, alpha=0.3)
        ax.plot(agg.index, agg.ex2, "--", label=r"Example 2: $1/\sqrt{\delta}$, $\delta=\binom{n}{2}^{-1/(n_0-1)}$")
        ax.plot(agg.index, agg.ex2h, ":", label=r"$1/\sqrt{1-h(1-\delta)}$ (Example 2)")
        ax.plot(agg.index, agg.angle, "-.", label=r"$1/\sqrt{1-h(\cos\delta)}$ ($\delta$ as an angle, Prop. 7)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dataset size n")
        ax.set_ylabel("depth bound L")
        ax.set_title(f"uniform on $S^{{{n0 - 1}}}$, {len(seeds)} seeds (band: min-max)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=6)
        return [write_csv(frame, out / "figure8.csv"), _save(fig, out / "figure8.png")]


# -- Theorem 2's rate ---------------------------------------------------------------------------
def theorem2_rate(out: Path, max_depth: int = 3000) -> list[Path]:
    """L |Theta-bar^(L) - 1/4| for six input cosines: it grows like (3/8) log L (the derivation is
    in lazydrift.kernel_table's docstring), so the distance is Theta(log L / L)."""
    rhos = np.array([-0.9, -0.5, 0.0, 0.5, 0.9, 0.99])
    tb = normalized_kernel_recurrence(rhos, max_depth, all_depths=True)
    depths = np.arange(1, max_depth + 1)
    dist = np.abs(tb - 0.25)
    frame = pd.DataFrame({"depth": np.repeat(depths, len(rhos)), "rho1": np.tile(rhos, max_depth),
                          "theta_bar": tb.ravel(), "dist": dist.ravel(), "L_dist": (depths[:, None] * dist).ravel()})
    frame["L_dist_over_logL"] = frame.L_dist / np.log(frame.depth.where(frame.depth > 1))
    # slope of L |.| against log L between L/3 and L: ~constant c (log growth), not 0 (bounded)
    hi, lo = max_depth, max_depth // 3
    slopes = (hi * dist[hi - 1] - lo * dist[lo - 1]) / math.log(hi / lo)
    summary = pd.DataFrame({"rho1": rhos, "dist_at_max_depth": dist[-1], "L_dist_at_max_depth": max_depth * dist[-1],
                            f"slope_vs_logL_{lo}_{hi}": slopes})
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6))
        for i, r in enumerate(rhos):
            axes[0].plot(depths, depths * dist[:, i], lw=1, label=r"$\rho^{(1)}=$" + f"{r}")
            axes[1].loglog(depths, dist[:, i].clip(min=1e-17), lw=1)
        axes[1].loglog(depths, 1.0 / depths, "k--", lw=0.8, label="1/L")
        axes[1].loglog(depths[1:], np.log(depths[1:]) / depths[1:], "k:", lw=0.8, label="log(L)/L")
        axes[0].set_xscale("log")
        axes[0].set_xlabel("depth L")
        axes[0].set_ylabel(r"$L\,|\bar\Theta^{(L)}-1/4|$")
        axes[0].set_title("grows like (3/8) log L: not bounded")
        axes[0].legend(ncol=2)
        axes[1].set_xlabel("depth L")
        axes[1].set_ylabel(r"$|\bar\Theta^{(L)}-1/4|$")
        axes[1].set_title("distance to 1/4")
        axes[1].legend()
        return [write_csv(frame, out / "theorem2_rate.csv"), write_csv(summary, out / "theorem2_rate_summary.csv"),
                _save(fig, out / "theorem2_rate.png")]


# -- all ----------------------------------------------------------------------------------------
def make_figures(out_dir: str | Path = "results/figures", root=None, data_dir: str | Path = "data",
                 download: bool = False, quick: bool = False, seed: int = 0, verbose: bool = True) -> dict[str, list[Path]]:
    """Write every figure's CSV and PNG into ``out_dir``; returns {figure: [paths]}."""
    out = Path(out_dir)
    n0 = 128
    made: dict[str, list[Path]] = {}

    def step(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        made[name] = fn(*args, **kwargs)
        if verbose:
            print(f"{name}: {time.perf_counter() - t0:.1f} s -> {', '.join(p.name for p in made[name])}")

    step("figure2", figure2, out)
    step("theorem2_rate", theorem2_rate, out, 600 if quick else 3000)
    synth = uniform_sphere(21, n0, seed)
    step("figure4", figure4_5, out, synth[:20], synth[20], f"synthetic (uniform on S^{n0 - 1})")
    try:
        x_tr, l_tr = mnist.load_mnist_sphere(True, root, data_dir, download, dtype=torch.float64)
        x_te, _ = mnist.load_mnist_sphere(False, root, data_dir, download, dtype=torch.float64)
    except mnist.DataNotFoundError as e:
        x_tr = None
        print(f"MNIST panels skipped (figure 5, MNIST part of figure 6): {e}")
    sizes6 = [50, 100, 200] if quick else [50, 100, 200, 500, 1000, 2000]
    g = torch.Generator().manual_seed(seed)
    datasets = {"synthetic": (uniform_sphere(max(sizes6), n0, seed + 1),
                              torch.sign(torch.randn(max(sizes6), dtype=torch.float64, generator=g)),
                              uniform_sphere(100, n0, seed + 2))}
    if x_tr is not None:
        idx = torch.as_tensor(mnist.sample_indices(len(x_tr), max(sizes6), seed))
        idx = idx[torch.randperm(len(idx), generator=g)]  # the first n rows are a random n-subset
        test_idx = torch.as_tensor(mnist.sample_indices(len(x_te), 101, seed))
        step("figure5", figure4_5, out, x_tr[idx[:20]], x_te[test_idx[0]], "MNIST")
        datasets["MNIST"] = (x_tr[idx], mnist.one_hot(l_tr[idx]), x_te[test_idx[1:]])
    step("figure6", figure6, out, datasets, sizes6)
    step("figure7", figure7, out, [100, 250] if quick else [100, 250, 500, 1000, 2000], n0)
    step("figure8", figure8, out, [2 ** k for k in range(4, 11 if quick else 15)], n0, (0, 1) if quick else (0, 1, 2))
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lazydrift.figures", description="Figures 2, 4-8 of section 6.")
    p.add_argument("--out", default="results/figures")
    p.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-root", default=None, help="folder with MNIST (default $LAZYDRIFT_MNIST_ROOT, then --data-dir)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true", help="download MNIST with torchvision if missing")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    make_figures(a.out, a.mnist_root, a.data_dir, a.download, a.quick, a.seed)
    print(f"total {time.perf_counter() - t0:.0f} s; outputs in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
