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
(:func:`lazydrift.rundir.stored_layers`).  A folder written by ``DriftRecorder.to_csv`` (one
recorder: no width column, no stored order) is plotted too, its layers in the recorder's order.
A figure with nothing to draw (a run of 0 steps) is skipped with the reason; a file that cannot
be read is one line (:class:`PlotError`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
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


def _by_width(frame: pd.DataFrame):
    """(width, label, rows) per width; one group labelled "" for a folder of one recorder
    (``DriftRecorder.to_csv`` writes no width column)."""
    if "width" not in frame.columns:
        return [(None, "", frame)]
    return [(width, f"width {width}", g) for width, g in frame.groupby("width")]


def _legend(ax) -> None:
    if any(not label.startswith("_") for label in ax.get_legend_handles_labels()[1]):
        ax.legend()


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
            for _, width_label, g in _by_width(sp[sp.measure == measure]):
                g = g.sort_values("step")
                line, = ax.plot(g.step, g["mean"], marker=".", ms=3, label=width_label or None)
                sd = g["std"].fillna(0)
                ax.fill_between(g.step, (g["mean"] - sd).clip(lower=1e-12), g["mean"] + sd,
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training step t")
            ax.set_ylabel(label)
            ax.set_title(f"{param + ': ' if param else ''}{layer}, mean ± s.d. over probes")
            _legend(ax)
    return write_figure(fig, path, bbox_inches="tight")


def plot_gram(gram: pd.DataFrame, theory: pd.DataFrame | None, path: Path, layer: str, n_pairs: int = 4) -> Path:
    """Cosines of the ``n_pairs`` pairs of ``layer`` that moved most, against the step, one panel per width."""
    plt = _pyplot()
    gram = _one_seed(gram)
    if "parameterization" in gram.columns:  # one parameterization per figure keeps it readable
        gram = gram[gram.parameterization == sorted(gram.parameterization.unique())[0]]
        theory = None if theory is None else theory[theory.parameterization.isin(gram.parameterization.unique())]
    groups = _by_width(gram[gram.layer == layer])
    # the pairs whose inner product changed most at the largest width, for visibility
    widest = groups[-1][2]
    last = widest[widest.step == widest.step.max()]
    pick = last.assign(change=(last.inner - last.inner0).abs()).nlargest(n_pairs, "change")[["i", "j"]]
    fig, axes = plt.subplots(1, len(groups), figsize=(PANEL[0] * len(groups), PANEL[1]), squeeze=False)
    for ax, (width, label, gw) in zip(axes[0], groups):
        for _, (i, j) in pick.iterrows():
            traj = gw[(gw.i == i) & (gw.j == j)].sort_values("step")
            line, = ax.plot(traj.step.clip(lower=0.5), traj.cosine, marker=".", ms=3, label=f"pair ({i}, {j})")
            if theory is not None and len(theory) and width is not None:
                t = theory[(theory.width == width) & (theory.layer == layer) & (theory.i == i) & (theory.j == j)]
                if len(t):
                    ax.axhline(float(t.predicted.iloc[0]), color=line.get_color(), ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step t (0 drawn at 0.5)")
        ax.set_ylabel(r"cosine of $h_t(x_i), h_t(x_j)$")
        ax.set_title(f"{layer}{', ' + label if label else ''}" + (" (dashed: theory at t = 0)" if theory is not None else ""))
        _legend(ax)
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
        for _, label, gw in _by_width(g):
            ax.hist(gw.mean_abs_dev, bins=bins, histtype="step", density=True, label=label or None)
        ax.set_xscale("log")
        ax.set_xlabel(r"mean over probes of $|h_{t,i} - h_{0,i}|$ (last step)")
        ax.set_ylabel("density over neurons i")
        ax.set_title(f"{param + ': ' if param else ''}{layer}")
        _legend(ax)
    return write_figure(fig, path, bbox_inches="tight")


def plot_kernel(ntk: pd.DataFrame, path: Path) -> Path:
    """The kernel's relative change against the step (log-log), one line per width; a row of panels per
    parameterization, the right panel multiplied by the width (only the left one for a folder of one
    recorder, which has no width column)."""
    from matplotlib import ticker

    plt = _pyplot()
    k = _one_seed(ntk)
    k = k[k.step > 0]
    groups = list(k.groupby("parameterization")) if "parameterization" in k.columns else [(None, k)]
    columns = 2 if "width" in k.columns else 1
    fig, axes = plt.subplots(len(groups), columns, figsize=(columns * PANEL[0], PANEL[1] * len(groups)),
                             squeeze=False)
    for row, (param, kp) in zip(axes, groups):
        for width, label, g in _by_width(kp):
            g = g.sort_values("step")
            row[0].plot(g.step, g.rel_change, marker=".", ms=3, label=label or None)
            if width is not None:
                row[1].plot(g.step, g.rel_change * width, marker=".", ms=3, label=label)
        title = f"{param + ': ' if param else ''}empirical NTK"
        for ax, label, suffix in zip(row, (r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$", r"width $\times$ relative change"),
                                     ("", " (lines coincide if O(1/n))")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            if high > 10 * low:  # a label at every minor tick crowds an axis of several decades; within
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())  # one decade they are its only labels
            ax.set_xlabel("training step t")
            ax.set_ylabel(label)
            ax.set_title(title + suffix)
            _legend(ax)
    return write_figure(fig, path, bbox_inches="tight")


class PlotError(UserError):
    """The folder holds nothing ``lazydrift plot`` can read; the message says what and why."""


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV with at least ``columns``, or a one-line :class:`PlotError` naming the file."""
    try:
        frame = pd.read_csv(path, dtype={"layer": str})  # nn.Sequential's layers are named "0", "1", ...
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PlotError(f"{path} cannot be read ({type(e).__name__}: {e}); rerun the run that wrote it") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PlotError(f"{path} has no column {', '.join(missing)}: it was not written by lazydrift "
                        "(lazydrift run, DriftRecorder.to_csv)")
    return frame


def _layer_order(d: Path, summary: pd.DataFrame) -> list[str]:
    """The folder's stored layer order; for a folder of one recorder (no run.json, no cells), the
    order of drift.csv's rows, which is the recorder's (summary.csv sorts names as strings)."""
    present = summary.layer.unique()
    if (d / "drift.csv").is_file():
        present = _read(d / "drift.csv", ("layer",)).layer.unique()
    return stored_layers(d, present)


def plot_results(results_dir: str | Path, skipped: list[str] | None = None) -> list[Path]:
    """Write every figure the folder's CSVs allow; returns the paths written.  A figure with nothing
    to draw (a run of 0 steps) is left out, with the reason appended to ``skipped``."""
    d = Path(results_dir)
    skipped = [] if skipped is None else skipped
    if not (d / "summary.csv").is_file():
        if any(d.glob("cells/*/summary.csv")):  # shards write their cells only
            raise PlotError(f"{d}: its cells are not combined yet (no summary.csv); run `lazydrift merge {d}` first")
        raise PlotError(f"{d}: no summary.csv here; run `lazydrift run RECIPE --out {d}` first")
    summary = _read(d / "summary.csv", ("layer", "step", "measure", "mean", "std"))
    layer = _layer_order(d, summary)[-1]
    trained = (summary.step > 0).any()
    written = []
    if trained:
        written.append(plot_drift(summary, d / "drift.png", layer))
    else:
        skipped.append("drift.png: no step after 0 was recorded")
    if (d / "gram.csv").is_file():
        theory = _read(d / "init_theory.csv", ("layer", "i", "j", "predicted")) if (d / "init_theory.csv").is_file() else None
        written.append(plot_gram(_read(d / "gram.csv", ("step", "layer", "i", "j", "inner", "inner0", "cosine")),
                                 theory, d / "gram.png", layer))
    if (d / "neurons.csv").is_file():
        if trained:
            written.append(plot_neurons(_read(d / "neurons.csv", ("layer", "mean_abs_dev")), d / "neurons.png", layer))
        else:
            skipped.append("neurons.png: no step after 0 was recorded")
    if (d / "ntk.csv").is_file():
        ntk = _read(d / "ntk.csv", ("step", "rel_change"))
        if (ntk.step > 0).any():
            written.append(plot_kernel(ntk, d / "kernel.png"))
        else:
            skipped.append("kernel.png: no step after 0 was recorded")
    return written
