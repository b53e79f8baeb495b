"""Figures from a results folder: ``lazydrift plot RESULTS_DIR`` writes PNGs beside the CSVs.

* ``drift.png``: mean l2 and linf (with +-1 s.d. bands over probes) against the training step,
  one line per width, log-log axes;
* ``gram.png``: a few pairs' inner products <h_t(x_i), h_t(x_j)> against the step, with the
  infinite-width prediction at t = 0 (``init_theory.csv``) as a dashed line;
* ``neurons.png``: the distribution over neurons of the mean |h_t,i - h_0,i| at the last step;
* ``kernel.png`` (runs with ``[record] ntk``): the relative change of the network's empirical NTK,
  ||Theta_t - Theta_0||_F / ||Theta_0||_F, against the step, one line per width, and the same
  times the width (the lines coincide where the change is O(1/n)).

Sized for a paper column (3.4 in wide panels) with labelled axes and the widths in the legend.
Each figure shows one layer: the last recorded one, from the folder's stored layer order
(:func:`lazydrift.rundir.stored_layers`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .export import write_figure
from .rundir import stored_layers

PANEL = (3.4, 2.6)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7, "figure.dpi": 150})
    return plt


def _one_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Sweeps over seeds are summarized elsewhere (scaling.csv); the trajectories show the first seed."""
    return frame[frame.seed == frame.seed.min()] if "seed" in frame.columns else frame


def plot_drift(summary: pd.DataFrame, path: Path, layer: str) -> Path:
    """Mean l2 and linf of ``layer`` against the step, one line per width; a row of panels per parameterization."""
    plt = _pyplot()
    summary = _one_seed(summary)
    s = summary[(summary.layer == layer) & (summary.step > 0)]
    groups = list(s.groupby("parameterization")) if "parameterization" in s.columns else [(None, s)]
    fig, axes = plt.subplots(len(groups), 2, figsize=(2 * PANEL[0], PANEL[1] * len(groups)), squeeze=False)
    for row, (param, sp) in zip(axes, groups):
        for ax, measure, label in ((row[0], "l2", r"$\|h_t - h_0\|_2$"),
                                   (row[1], "linf", r"$\max_i |h_{t,i} - h_{0,i}|$")):
            for width, g in sp[sp.measure == measure].groupby("width"):
                g = g.sort_values("step")
                line, = ax.plot(g.step, g["mean"], marker=".", ms=3, label=f"width {width}")
                sd = g["std"].fillna(0)
                ax.fill_between(g.step, (g["mean"] - sd).clip(lower=1e-12), g["mean"] + sd,
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training step t")
            ax.set_ylabel(label)
            ax.set_title(f"{param + ': ' if param else ''}{layer}, mean ± s.d. over probes")
            ax.legend()
    return write_figure(fig, path, bbox_inches="tight")


def plot_gram(gram: pd.DataFrame, theory: pd.DataFrame | None, path: Path, layer: str, n_pairs: int = 4) -> Path:
    """Cosines of the ``n_pairs`` pairs of ``layer`` that moved most, against the step, one panel per width."""
    plt = _pyplot()
    gram = _one_seed(gram)
    if "parameterization" in gram.columns:  # one parameterization per figure keeps it readable
        gram = gram[gram.parameterization == sorted(gram.parameterization.unique())[0]]
        theory = None if theory is None else theory[theory.parameterization.isin(gram.parameterization.unique())]
    widths = sorted(gram.width.unique())
    g = gram[gram.layer == layer]
    # the pairs whose inner product changed most at the largest width, for visibility
    last = g[(g.width == widths[-1]) & (g.step == g[g.width == widths[-1]].step.max())]
    pick = last.assign(change=(last.inner - last.inner0).abs()).nlargest(n_pairs, "change")[["i", "j"]]
    fig, axes = plt.subplots(1, len(widths), figsize=(PANEL[0] * len(widths), PANEL[1]), squeeze=False)
    for ax, width in zip(axes[0], widths):
        gw = g[g.width == width]
        for _, (i, j) in pick.iterrows():
            traj = gw[(gw.i == i) & (gw.j == j)].sort_values("step")
            line, = ax.plot(traj.step.clip(lower=0.5), traj.cosine, marker=".", ms=3, label=f"pair ({i}, {j})")
            if theory is not None and len(theory):
                t = theory[(theory.width == width) & (theory.layer == layer) & (theory.i == i) & (theory.j == j)]
                if len(t):
                    ax.axhline(float(t.predicted.iloc[0]), color=line.get_color(), ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step t (0 drawn at 0.5)")
        ax.set_ylabel(r"cosine of $h_t(x_i), h_t(x_j)$")
        ax.set_title(f"{layer}, width {width} (dashed: theory at t = 0)")
        ax.legend()
    return write_figure(fig, path, bbox_inches="tight")


def plot_neurons(neurons: pd.DataFrame, path: Path, layer: str) -> Path:
    """Histogram over the neurons of ``layer`` of the mean |h_t,i - h_0,i| at the last step; a panel per
    parameterization."""
    plt = _pyplot()
    neurons = _one_seed(neurons)
    n = neurons[neurons.layer == layer]
    groups = list(n.groupby("parameterization")) if "parameterization" in n.columns else [(None, n)]
    fig, axes = plt.subplots(1, len(groups), figsize=(PANEL[0] * len(groups), PANEL[1]), squeeze=False)
    positive = n.mean_abs_dev[n.mean_abs_dev > 0]
    bins = np.geomspace(positive.min(), positive.max(), 50) if len(positive) else 20
    for ax, (param, g) in zip(axes[0], groups):
        for width, gw in g.groupby("width"):
            ax.hist(gw.mean_abs_dev, bins=bins, histtype="step", density=True, label=f"width {width}")
        ax.set_xscale("log")
        ax.set_xlabel(r"mean over probes of $|h_{t,i} - h_{0,i}|$ (last step)")
        ax.set_ylabel("density over neurons i")
        ax.set_title(f"{param + ': ' if param else ''}{layer}")
        ax.legend()
    return write_figure(fig, path, bbox_inches="tight")


def plot_kernel(ntk: pd.DataFrame, path: Path) -> Path:
    """The kernel's relative change against the step (log-log), one line per width; a row of panels per
    parameterization, the right panel multiplied by the width."""
    from matplotlib import ticker

    plt = _pyplot()
    k = _one_seed(ntk)
    k = k[k.step > 0]
    groups = list(k.groupby("parameterization")) if "parameterization" in k.columns else [(None, k)]
    fig, axes = plt.subplots(len(groups), 2, figsize=(2 * PANEL[0], PANEL[1] * len(groups)), squeeze=False)
    for row, (param, kp) in zip(axes, groups):
        for width, g in kp.groupby("width"):
            g = g.sort_values("step")
            row[0].plot(g.step, g.rel_change, marker=".", ms=3, label=f"width {width}")
            row[1].plot(g.step, g.rel_change * width, marker=".", ms=3, label=f"width {width}")
        for ax, label in ((row[0], r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$"),
                          (row[1], r"width $\times$ relative change")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())  # a label at every minor tick crowds the axis
            ax.set_xlabel("training step t")
            ax.set_ylabel(label)
            ax.legend()
        title = f"{param + ': ' if param else ''}empirical NTK"
        row[0].set_title(title)
        row[1].set_title(title + " (lines coincide if O(1/n))")
    return write_figure(fig, path, bbox_inches="tight")


def plot_results(results_dir: str | Path) -> list[Path]:
    """Write every figure the folder's CSVs allow; returns the paths written."""
    d = Path(results_dir)
    if not (d / "summary.csv").is_file():
        raise FileNotFoundError(f"{d}: no summary.csv here; run `lazydrift run RECIPE --out {d}` first")
    summary = pd.read_csv(d / "summary.csv")
    layer = stored_layers(d, summary.layer.unique())[-1]
    written = [plot_drift(summary, d / "drift.png", layer)]
    if (d / "gram.csv").is_file():
        theory = pd.read_csv(d / "init_theory.csv") if (d / "init_theory.csv").is_file() else None
        written.append(plot_gram(pd.read_csv(d / "gram.csv"), theory, d / "gram.png", layer))
    if (d / "neurons.csv").is_file():
        written.append(plot_neurons(pd.read_csv(d / "neurons.csv"), d / "neurons.png", layer))
    if (d / "ntk.csv").is_file():
        written.append(plot_kernel(pd.read_csv(d / "ntk.csv"), d / "kernel.png"))
    return written
