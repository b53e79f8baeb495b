"""Width sweeps: log-log slopes of the drift measures against width, and a coordinate-check plot.

For every (parameterization, layer, measure, step) the exponent ``alpha`` of ``measure ~ width^alpha``
is fitted by ordinary least squares of log(value) on log(width), pooling every cell (all
widths and all seeds: one point per cell), with a two-sided 95% confidence interval from
Student's t with ``n_points - 2`` degrees of freedom:

    slope +- t_{0.975, n-2} * s / sqrt(sum_k (x_k - mean x)^2),    s^2 = RSS / (n - 2).

Each point is one cell's value: for ``l2``, ``linf`` and ``ratio`` the mean over probes at that
step (``summary.csv``); for the Gram measures the per-cell summaries of ``gram_summary.csv``
at the cell's last recorded step: ``gram_max_change`` (median over probe pairs of
max_t |G_t - G_0|, G = <h(x_i), h(x_j)>) and ``gram_rel_change`` (median over pairs of
|G_T - G_0| / |G_0|).  With ``[record] ntk`` two measures of the network's empirical NTK Theta
(``ntk.csv``, layer ``network``) join them: ``ntk_rel_change``, ||Theta_t - Theta_0||_F /
||Theta_0||_F at every recorded step, and ``ntk_limit_distance``, ||Theta_0 - Theta_inf||_F /
||Theta_inf||_F at step 0 (NTK parameterization only: the closed form Theta_inf is its limit).
Points that are not positive and finite (step 0, where nothing has moved yet; a limit distance
without a closed form) are left out; a fit needs at least 3 points and 2 widths.

``theory`` is the infinite-width exponent at a fixed step t and base learning rate (Yang & Hu
2021, TP4; Jacot et al. 2018), for the last hidden layer's post-ReLU features h, whose
coordinates are O(1) at init in all three parameterizations:

* ntk: one SGD step moves each coordinate by ~ n^-1/2 (see tests/test_parameterizations.py),
  so ``linf`` ~ n^-1/2, ``l2`` = sqrt(sum of n such squares) ~ n^0, ``ratio`` ~ n^1/2.  The
  Gram entry G ~ n at init moves by <h_0(x), dh(x')> + <dh(x), h_0(x')> + <dh(x), dh(x')>: the
  cross terms are sums of n coherent terms of size n^-1/2 * n^-1/2 (paper section 5, Prop. 4:
  they tend to a finite limit) and the quadratic term is n * n^-1, so ``gram_max_change`` ~ n^0
  and ``gram_rel_change`` ~ n^-1.
* standard (lr eta/n, the kernel regime): TP4's symmetry (a, b, c) -> (a + 1/2, b - 1/2, c - 1)
  maps its hidden and readout layers onto ntk's, so the same exponents.
* mup: each coordinate moves by ~ n^0, so ``linf`` ~ n^0, ``l2`` ~ n^1/2, ``ratio`` ~ n^1/2;
  G changes by a fraction of order one: ``gram_max_change`` ~ n^1, ``gram_rel_change`` ~ n^0.

The kernel (Theorem 1; Jacot et al. 2018):

* ``ntk_limit_distance`` ~ n^-1/2 (ntk): Theta_0 is a sum over n neurons per layer, so it
  fluctuates around its limit by a relative n^-1/2 (central limit theorem).
* ``ntk_rel_change`` ~ n^-1 (ntk, standard): the kernel moves through its own derivative, the
  dNTK, which is O(1/n) (Dyer & Gur-Ari 2020; Roberts, Yaida & Hanin 2022, "The Principles of
  Deep Learning Theory", ch. 11), so at a fixed step ||Theta_t - Theta_0|| / ||Theta_0|| ~ 1/n.
  The n^-1/2 of Lee et al. 2019 (Theorem G.1: sup_t ||Theta_t - Theta_0||_F = O(n^-1/2)) is
  the rigorous upper bound, not the rate; the issue that asked for this measure (#15) quoted
  the bound.  Standard with lr eta/n is mapped onto ntk by TP4's symmetry (above): its tangent
  kernel weights the layers differently, but each layer's relative change is ntk's.
* ``ntk_rel_change`` ~ n^0 (mup): features move by O(1) (above), so the kernel built from them
  does too; that is feature learning.

``linf`` is a maximum over n coordinates: for roughly Gaussian coordinates it carries an extra
sqrt(2 log n), which adds about +0.09 to the fitted slope between widths 2^7 and 2^11 (and
-0.09 to ``ratio``'s); ``theory`` is the pure power.  All of these are asymptotic statements: at
small widths or large learning rates (the first steps move the features by O(1) at any
width) the measured exponents can differ, which is what the sweep shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .export import write_csv, write_figure, write_text
from .kernel_drift import NETWORK
from .model import PARAMETERIZATIONS

DRIFT_MEASURES = ("l2", "linf", "ratio")
GRAM_MEASURES = {"gram_max_change": "median_max_change", "gram_rel_change": "median_rel_change"}
KERNEL_MEASURES = {"ntk_rel_change": "rel_change", "ntk_limit_distance": "limit_distance"}  # ntk.csv columns
MEASURES = DRIFT_MEASURES + tuple(GRAM_MEASURES) + tuple(KERNEL_MEASURES)
THEORY = {
    "ntk": {"l2": 0.0, "linf": -0.5, "ratio": 0.5, "gram_max_change": 0.0, "gram_rel_change": -1.0,
            "ntk_rel_change": -1.0, "ntk_limit_distance": -0.5},
    "standard": {"l2": 0.0, "linf": -0.5, "ratio": 0.5, "gram_max_change": 0.0, "gram_rel_change": -1.0,
                 "ntk_rel_change": -1.0},
    "mup": {"l2": 0.5, "linf": 0.0, "ratio": 0.5, "gram_max_change": 1.0, "gram_rel_change": 0.0,
            "ntk_rel_change": 0.0},
}
COLUMNS = ["parameterization", "layer", "measure", "step", "slope", "ci_low", "ci_high", "stderr",
           "n_widths", "n_points", "theory", "theory_in_ci"]
MIN_WIDTHS = 3  # report.aggregate writes scaling.csv / scaling.png from this many widths on


def fit_loglog(width, value, level: float = 0.95) -> dict:
    """OLS fit of log(value) = a + slope * log(width) with a t-based ``level`` CI on the slope.

    Non-positive or non-finite values are dropped.  Returns slope, intercept, stderr, ci_low,
    ci_high, n_points and n_widths; the slope is NaN with fewer than 2 distinct widths and the
    CI is NaN with fewer than 3 points (no degrees of freedom left for the residual).
    """
    w = np.asarray(width, dtype=float)
    v = np.asarray(value, dtype=float)
    keep = np.isfinite(v) & (v > 0) & np.isfinite(w) & (w > 0)
    x, y = np.log(w[keep]), np.log(v[keep])
    n, n_widths = int(x.size), int(np.unique(x).size)
    out = {"slope": np.nan, "intercept": np.nan, "stderr": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "n_points": n, "n_widths": n_widths}
    if n_widths < 2:
        return out
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    out.update(slope=slope, intercept=intercept)
    if n >= 3:
        rss = float(((y - intercept - slope * x) ** 2).sum())
        se = float(np.sqrt(rss / (n - 2) / sxx))
        half = float(stats.t.ppf(0.5 + level / 2, n - 2)) * se
        out.update(stderr=se, ci_low=slope - half, ci_high=slope + half)
    return out


def points(summary: pd.DataFrame, gram_summary: pd.DataFrame | None = None,
           parameterization: str = "ntk", ntk: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (cell, layer, measure, step): parameterization, seed, width, layer, measure, step, value.

    ``summary``, ``gram_summary`` and ``ntk`` are the combined files of
    :func:`lazydrift.report.aggregate`; their ``parameterization`` / ``seed`` columns are absent
    when a run has only one, in which case ``parameterization`` names it.  The kernel's
    measures have layer ``network``: ``ntk_rel_change`` at every step of ntk.csv and
    ``ntk_limit_distance`` at each cell's first step.
    """
    def with_keys(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        if "parameterization" not in frame:
            frame["parameterization"] = parameterization
        if "seed" not in frame:
            frame["seed"] = 0
        return frame

    cols = ["parameterization", "seed", "width", "layer", "measure", "step", "value"]
    parts = []
    if summary is not None and len(summary):
        s = with_keys(summary)
        s = s[s.measure.isin(DRIFT_MEASURES)].rename(columns={"mean": "value"})
        parts.append(s[cols])
    if gram_summary is not None and len(gram_summary):
        g = with_keys(gram_summary)
        for measure, column in GRAM_MEASURES.items():
            parts.append(g.assign(measure=measure, value=g[column])[cols])
    if ntk is not None and len(ntk):
        k = with_keys(ntk).assign(layer=NETWORK)
        parts.append(k.assign(measure="ntk_rel_change", value=k[KERNEL_MEASURES["ntk_rel_change"]])[cols])
        first = k[k.step == k.groupby(["parameterization", "seed", "width"]).step.transform("min")]
        parts.append(first.assign(measure="ntk_limit_distance", value=first[KERNEL_MEASURES["ntk_limit_distance"]])[cols])
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)


def scaling_table(pts: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Fit every (parameterization, layer, measure, step) of :func:`points`; see the module doc."""
    rows = []
    for (p, layer, measure, step), g in pts.groupby(["parameterization", "layer", "measure", "step"], sort=True):
        fit = fit_loglog(g.width, g.value, level)
        if fit["n_widths"] < 2:
            continue
        theory = THEORY.get(p, {}).get(measure, np.nan)
        in_ci = bool(fit["ci_low"] <= theory <= fit["ci_high"]) if np.isfinite(fit["ci_low"]) and np.isfinite(theory) else None
        rows.append({"parameterization": p, "layer": layer, "measure": measure, "step": int(step),
                     "slope": fit["slope"], "ci_low": fit["ci_low"], "ci_high": fit["ci_high"],
                     "stderr": fit["stderr"], "n_widths": fit["n_widths"], "n_points": fit["n_points"],
                     "theory": theory, "theory_in_ci": in_ci})
    order = {m: k for k, m in enumerate(MEASURES)}
    layers = {name: k for k, name in enumerate(dict.fromkeys(pts.layer))}  # as they appear: forward order, not strings
    table = pd.DataFrame(rows, columns=COLUMNS)
    if len(table):
        table = (table.assign(_m=table.measure.map(order), _l=table.layer.map(layers))
                 .sort_values(["parameterization", "_l", "_m", "step"]).drop(columns=["_m", "_l"])
                 .reset_index(drop=True))
    return table


def final_slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``scaling_table`` at each (parameterization, layer, measure)'s last fitted step."""
    if table.empty:
        return table
    last = table.groupby(["parameterization", "layer", "measure"]).step.transform("max")
    return table[table.step == last].reset_index(drop=True)


def pick_steps(steps, k: int = 8) -> list[int]:
    """About ``k`` steps spread evenly in log over the positive recorded steps (always the last)."""
    s = sorted({int(x) for x in steps if x > 0})
    if len(s) <= k:
        return s
    idx = np.unique(np.round(np.geomspace(1, len(s), k)).astype(int) - 1)
    return sorted({s[i] for i in idx} | {s[-1]})


def plot_scaling(pts: pd.DataFrame, table: pd.DataFrame, path: str | Path, layer: str, max_lines: int = 8) -> Path:
    """Measures against width on log-log axes, one line per recorded step (a coordinate check).

    One row of panels per parameterization, one column per measure; each line joins the
    seed-averaged values at one step, coloured from early (dark) to late (light), and each
    panel's title gives the fitted slope at the last step with its 95% CI and the theory value.
    """
    from matplotlib import ticker

    from .plots import _pyplot

    plt = _pyplot()
    pts = pts[pts.layer.isin([layer, NETWORK])]  # the kernel's measures are the network's
    params = [p for p in PARAMETERIZATIONS if p in set(pts.parameterization)]
    params += sorted(set(pts.parameterization) - set(params))
    measures = [m for m in MEASURES if m in set(pts.measure)]
    fig, axes = plt.subplots(len(params), len(measures), figsize=(2.3 * len(measures), 2.1 * len(params)),
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    for r, p in enumerate(params):
        for c, m in enumerate(measures):
            ax = axes[r][c]
            g = pts[(pts.parameterization == p) & (pts.measure == m) & (pts.value > 0)]
            if g.empty:  # e.g. ntk_limit_distance outside the NTK parameterization: no closed-form limit
                ax.set_axis_off()
                ax.set_title(f"{p}: {m}\n(no values)", fontsize=7)
                continue
            steps = pick_steps(g.step.unique(), max_lines) or sorted(set(g.step))  # the limit distance: t = 0
            for k, step in enumerate(steps):
                line = g[g.step == step].groupby("width").value.mean()
                ax.plot(line.index, line.values, marker="o", ms=2.5, lw=1,
                        color=cmap(k / max(1, len(steps) - 1)), label=f"t = {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_minor_locator(ticker.NullLocator())  # minor log ticks cost most of the drawing
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.tick_params(labelsize=6)
            t = table[(table.parameterization == p) & (table.measure == m)
                      & (table.layer == (NETWORK if m in KERNEL_MEASURES else layer))]
            title = f"{p}: {m}" + (" (last step)" if m in GRAM_MEASURES else " (t = 0)" if m == "ntk_limit_distance" else "")
            if len(t):
                last = t[t.step == t.step.max()].iloc[0]
                title += f"\nslope {last.slope:.2f} [{last.ci_low:.2f}, {last.ci_high:.2f}], theory {last.theory:g}"
            ax.set_title(title, fontsize=7)
            if r == len(params) - 1:
                ax.set_xlabel("width n")
            if c == 0:
                ax.set_ylabel(f"{layer}")
            if r == 0 and c == 0 and steps:
                ax.legend(fontsize=5, loc="best", ncol=2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.93, wspace=0.35, hspace=0.6)
    return write_figure(fig, path, tight=False)  # a fixed layout: tight_layout doubles the drawing time


def write_scaling(out: str | Path, summary: pd.DataFrame, gram_summary: pd.DataFrame | None, *, layer: str,
                  parameterization: str = "ntk", plot: bool = True, ntk: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write ``out/scaling.csv``, ``scaling.md`` (and the figures) when the cells span >= 3 widths.

    ``layer`` is the one the table and figures show (with the kernel's measures, layer
    ``network``): the last recorded layer, from the cells' stored layer order
    (:func:`lazydrift.rundir.layer_order`); scaling.csv fits every layer.
    """
    pts = points(summary, gram_summary, parameterization, ntk)
    if pts.empty or pts.width.nunique() < MIN_WIDTHS:
        return pd.DataFrame(columns=COLUMNS)
    table = scaling_table(pts)
    write_csv(table, Path(out) / "scaling.csv")
    if len(table):
        write_text("# Width exponents at the last step\n\n" + MD_NOTE + "\n\n" + scaling_markdown(table, layer),
                   Path(out) / "scaling.md")
    if plot and len(table):
        plot_scaling(pts, table, Path(out) / "scaling.png", layer)
        plot_slopes(table, Path(out) / "scaling_slopes.png", layer)
    return table


MD_NOTE = ("Fitted exponent alpha of measure ~ width^alpha (OLS on log-log over every cell, 95% t-interval) "
           "at each parameterization's last recorded step, for the last recorded layer, with the "
           "infinite-width theory value in brackets (the kernel's measures are the whole network's; "
           "ntk_limit_distance is at t = 0); lazydrift/scaling.py explains the theory and "
           "the measures.  All steps: scaling.csv; figures: scaling.png, scaling_slopes.png.")


def plot_slopes(table: pd.DataFrame, path: str | Path, layer: str) -> Path:
    """The fitted exponent of each drift measure against the training step, with its 95% CI band,
    one line per parameterization, theory dashed: how far the sweep is from the asymptotic regime."""
    from .plots import _pyplot

    plt = _pyplot()
    measures = DRIFT_MEASURES + (("ntk_rel_change",) if (table.measure == "ntk_rel_change").any() else ())
    t = table[((table.layer == layer) & table.measure.isin(DRIFT_MEASURES))
              | ((table.layer == NETWORK) & (table.measure == "ntk_rel_change"))]
    fig, axes = plt.subplots(1, len(measures), figsize=(2.6 * len(measures), 2.3), squeeze=False)
    for ax, m in zip(axes[0], measures):
        for k, (p, g) in enumerate(sorted(t[t.measure == m].groupby("parameterization"))):
            g = g.sort_values("step")
            color = plt.get_cmap("tab10")(k)
            ax.plot(g.step, g.slope, marker=".", ms=3, color=color, label=p)
            ax.fill_between(g.step, g.ci_low, g.ci_high, color=color, alpha=0.2, lw=0)
            if len(g) and np.isfinite(g.theory.iloc[0]):
                ax.axhline(g.theory.iloc[0], color=color, ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training step t")
        ax.set_title(f"{NETWORK if m in KERNEL_MEASURES else layer}: exponent of {m}\n(dashed: theory)", fontsize=7)
        ax.legend(fontsize=6)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.18, top=0.84, wspace=0.3)
    return write_figure(fig, path, tight=False)


def scaling_markdown(table: pd.DataFrame, layer: str) -> str:
    """The last step's slopes of ``layer`` as a Markdown table (slope [95% CI] beside theory)."""
    final = final_slopes(table)
    if len(final):
        final = final[(final.layer == layer) | ((final.layer == NETWORK) & final.measure.isin(list(KERNEL_MEASURES)))]
    if final.empty or not (final.layer == layer).any():
        return ""
    params = [p for p in PARAMETERIZATIONS if p in set(final.parameterization)]
    lines = [f"| {layer} | " + " | ".join(f"{p}: slope [95% CI] (theory)" for p in params) + " |",
             "|---|" + "---|" * len(params)]
    for m in MEASURES:
        cells = []
        for p in params:
            r = final[(final.parameterization == p) & (final.measure == m)]
            cells.append("–" if r.empty else
                         f"{r.slope.iloc[0]:.2f} [{r.ci_low.iloc[0]:.2f}, {r.ci_high.iloc[0]:.2f}] ({r.theory.iloc[0]:g})")
        if any(c != "–" for c in cells):
            lines.append(f"| {m}{' (network)' if m in KERNEL_MEASURES else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
