"""The paper's Table 1 fingerprints, computed from per-probe drift rows, beside the paper's values.

Table 1 reports, for the last hidden layer at widths 10K and 30K, the mean (s.d.) over inputs
of l2 = ||h_t - h_0||_2, linf = max_i |h_t,i - h_0,i| and ratio = l2 / linf.  Three
fingerprints of *how* the features moved follow from these numbers, whatever the learning
rate or step count:

1. **flatness** = mean ratio / sqrt(width), in (0, 1]: 1 when every neuron moves by the same
   amount, about sqrt(1 / (2 ln n)) (0.23 at n = 10^4) for Gaussian deviations.  Paper: 0.51, 0.44.
2. **width exponents**: the slopes alpha of mean measure ~ width^alpha.  Paper (two widths):
   l2 0.70, linf 0.33, ratio 0.37; lazy (NTK) training predicts 0, -1/2, 1/2.
3. **spread across inputs**: the coefficient of variation (s.d. / mean over probes) of
   l2, linf and ratio.  Paper: about 0.21, 0.20 and 0.016-0.020.  Whether the paper's average
   counts each word once or each occurrence is not said; ``weights`` computes the latter.

Each function is pure: rows in, numbers out.  The comparison with the paper
(:func:`compare_to_paper`) needs several seeds: a candidate protocol is *consistent* with a
fingerprint when the paper's value lies inside the interval in which one run of that protocol
would fall (a prediction interval over seeds, Student t), and *ruled out* otherwise.  Our
widths are smaller than the paper's, so flatness and the CVs are carried to 10K and 30K along
each seed's log-log fit over width (the fit is extrapolation; FINDINGS says how far).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .scaling import fit_loglog

MEASURES = ("l2", "linf", "ratio")
PAPER_WIDTHS = (10000, 30000)
PAPER_TABLE1 = {  # paper Table 1: measure -> ((mean, s.d.) at 10K, (mean, s.d.) at 30K), over inputs
    "l2": ((4.8989, 1.0250), (10.5614, 2.3419)),
    "linf": ((0.0955, 0.0189), (0.1375, 0.0286)),
    "ratio": ((51.1774, 0.7959), (76.5406, 1.5052)),
}
FINGERPRINTS = ("flatness", "cv_l2", "cv_linf", "cv_ratio")


def relative_change(h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Per probe ||h_t - h_0||_2 / ||h_0||_2, how far the features moved against their own size: a
    laziness indicator (small in the kernel regime).  The recorder's ``rel_l2`` column
    (``DriftRecorder(stats={"rel_l2": relative_change})``, drift.csv)."""
    return torch.linalg.vector_norm((h - h0).flatten(1), dim=1) / torch.linalg.vector_norm(h0.flatten(1), dim=1)


def probe_fingerprint(l2, linf, ratio, width: int, weights=None) -> dict:
    """One run's fingerprints from per-probe values of l2, linf and ratio at one step.

    Returns the mean and s.d. over probes of each measure, ``flatness`` = mean(ratio) /
    sqrt(width) and ``cv_<measure>`` = s.d. / mean.  Probes whose values are not finite
    (h_t = h_0 gives ratio NaN) are left out of that measure.

    Without ``weights`` every probe counts once and the s.d. is the sample s.d. (ddof = 1).
    ``weights`` (e.g. each probe word's count in the corpus) make these the averages over
    the dataset's inputs with repetition, one reading of Table 1's "we average over inputs in
    the dataset": weighted mean sum w v / sum w and s.d. sqrt(sum w (v - mean)^2 / sum w).
    """
    out: dict = {"width": int(width)}
    for name, values in (("l2", l2), ("linf", linf), ("ratio", ratio)):
        v = np.asarray(values, dtype=float)
        w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
        keep = np.isfinite(v)
        v, w = v[keep], w[keep]
        if weights is None:
            mean = float(v.mean()) if v.size else math.nan
            sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        else:
            mean = float((w * v).sum() / w.sum()) if v.size else math.nan
            sd = float(np.sqrt((w * (v - mean) ** 2).sum() / w.sum())) if v.size > 1 else math.nan
        out[f"{name}_mean"], out[f"{name}_sd"] = mean, sd
        out[f"cv_{name}"] = sd / mean if mean > 0 else math.nan
    out["n_probes"] = int(np.isfinite(np.asarray(ratio, dtype=float)).sum())
    out["flatness"] = out["ratio_mean"] / math.sqrt(width)
    return out


def cell_fingerprints(drift: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """:func:`probe_fingerprint` for every group of per-probe rows.

    ``drift`` has one row per probe (columns l2, linf, ratio, ``width`` and ``keys``, e.g. the
    rows of ``DriftRecorder.frame()`` with the cell's keys added); one row per group comes back.
    """
    group_keys = list(dict.fromkeys([*keys, "width"]))
    rows = []
    for key, g in drift.groupby(group_keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        fp = probe_fingerprint(g.l2, g.linf, g.ratio, int(g.width.iloc[0]))
        rows.append({**dict(zip(group_keys, key)), **{k: v for k, v in fp.items() if k != "width"}})
    return pd.DataFrame(rows)


def paper_fingerprints() -> dict:
    """The fingerprints implied by the paper's Table 1 (computed here, from the table)."""
    out: dict = {}
    for k, width in enumerate(PAPER_WIDTHS):
        (l2, l2_sd), (linf, linf_sd), (ratio, ratio_sd) = (PAPER_TABLE1[m][k] for m in MEASURES)
        out[width] = {"flatness": ratio / math.sqrt(width), "cv_l2": l2_sd / l2,
                      "cv_linf": linf_sd / linf, "cv_ratio": ratio_sd / ratio,
                      "l2_mean": l2, "linf_mean": linf, "ratio_mean": ratio}
    w0, w1 = PAPER_WIDTHS
    out["exponents"] = {m: math.log(PAPER_TABLE1[m][1][0] / PAPER_TABLE1[m][0][0]) / math.log(w1 / w0)
                        for m in MEASURES}
    return out


def width_exponents(cells: pd.DataFrame, by: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Fitted exponents of l2, linf, ratio (means over probes) against width, all seeds pooled.

    One point per cell (:func:`lazydrift.scaling.fit_loglog`: OLS of log value on log width,
    a Student-t ``level`` CI on the slope).  ``by`` groups the cells (e.g. candidate, step).
    """
    by = list(by or [])
    groups = cells.groupby(by, sort=True) if by else [((), cells)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in MEASURES:
            fit = fit_loglog(g.width, g[f"{m}_mean"], level=level)
            rows.append({**dict(zip(by, key)), "measure": m, **fit})
    return pd.DataFrame(rows)


def loglog_at(width, value, at: float) -> float:
    """The value at width ``at`` on the least-squares line of log value against log width."""
    fit = fit_loglog(width, value)
    if not np.isfinite(fit["slope"]):
        return math.nan
    return float(math.exp(fit["intercept"] + fit["slope"] * math.log(at)))


def prediction_interval(values, level: float = 0.95, extra_var: float = 0.0) -> tuple[float, float, float]:
    """(mean, low, high): where one more run is expected to fall, from k runs' ``values``.

    mean +- t_{(1+level)/2, k-1} * sqrt(s^2 (1 + 1/k) + extra_var), s the sample s.d. of the
    values.  ``extra_var`` adds a variance the new run has and these values do not (used for
    the paper's two-width exponent).  NaN bounds with fewer than 2 finite values.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * math.sqrt(v.var(ddof=1) * (1 + 1 / v.size) + extra_var)
    return mean, mean - half, mean + half


def verdict(paper_value: float, low: float, high: float) -> str:
    """``consistent`` when the paper's value lies in [low, high], ``ruled out`` when not,
    ``undetermined`` when the interval is not finite (fewer than two seeds or failed fits)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undetermined"
    return "consistent" if low <= paper_value <= high else "ruled out"


def compare_to_paper(cells: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Each fingerprint of one candidate (cells over seeds and >= 2 widths) beside the paper's.

    ``cells`` are :func:`cell_fingerprints` rows of one candidate at one step, with ``seed``
    and ``width`` columns.  Per seed: flatness and the CVs are carried to 10K and 30K along
    that seed's log-log fit over width, and the exponents are that seed's slopes.  Returns one
    row per (fingerprint, paper width): ours at our largest width (mean over seeds), the seed
    prediction interval at the paper's width, the paper's value, and the :func:`verdict`.

    The paper's exponents come from one run at two widths a factor 3 apart, so a run of
    this candidate measured that way has an exponent with the extra variance
    2 var(log value) / ln(3)^2 (var over seeds at our largest width, a proxy for the paper's
    seed noise at its widths); the interval includes it.
    """
    paper = paper_fingerprints()
    top = int(cells.width.max())
    at_top = cells[cells.width == top]
    rows = []
    per_seed = {s: g for s, g in cells.groupby("seed", sort=True)}
    for name in FINGERPRINTS:
        for width in PAPER_WIDTHS:
            carried = [loglog_at(g.width, g[name], width) for g in per_seed.values()]
            mean, low, high = prediction_interval(carried, level)
            rows.append({"fingerprint": name, "paper_width": width, "ours_at_top": float(at_top[name].mean()),
                         "top_width": top, "ours": mean, "low": low, "high": high,
                         "paper": paper[width][name], "verdict": verdict(paper[width][name], low, high)})
    for m in MEASURES:
        slopes = [fit_loglog(g.width, g[f"{m}_mean"])["slope"] for g in per_seed.values()]
        logs = np.log(at_top[f"{m}_mean"].to_numpy(dtype=float))
        logs = logs[np.isfinite(logs)]
        extra = 2 * logs.var(ddof=1) / math.log(3) ** 2 if logs.size > 1 else 0.0
        mean, low, high = prediction_interval(slopes, level, extra_var=extra)
        rows.append({"fingerprint": f"exponent_{m}", "paper_width": math.nan, "ours_at_top": math.nan,
                     "top_width": top, "ours": mean, "low": low, "high": high,
                     "paper": paper["exponents"][m], "verdict": verdict(paper["exponents"][m], low, high)})
    return pd.DataFrame(rows)


# -- fingerprints.csv: every run's fingerprints beside the paper's -----------------------------------
AVERAGING = ("word", "occurrence")  # each probe once | each probe weighted by its count in the corpus
CELL_FINGERPRINTS = ("l2_mean", "linf_mean", "ratio_mean", "flatness", "cv_l2", "cv_linf", "cv_ratio")
EXPONENTS = tuple(f"exponent_{m}" for m in MEASURES)
FINGERPRINT_COLUMNS = ["layer", "step", "averaging", "fingerprint", "value", "ci_low", "ci_high",
                       "paper_10k", "paper_30k", "paper_exponent"]


def run_fingerprints(drift: pd.DataFrame, keys: list[str], counts=None) -> pd.DataFrame:
    """:func:`probe_fingerprint` of every (cell, layer, recorded step > 0), one row each per averaging.

    ``drift`` holds drift.csv rows (``keys`` with ``width`` among them, layer, step, probe, l2,
    linf, ratio).  ``averaging`` is ``word`` (each probe once) and, when ``counts`` (each probe's
    count in the corpus, indexed by probe) is given, ``occurrence``: the average over the
    dataset's inputs with repetition.  Wide: one column per :func:`probe_fingerprint` output.
    """
    group = [*keys, "layer", "step"]
    counts = None if counts is None else np.asarray(counts, dtype=float)
    rows = []
    for key, g in drift[drift.step > 0].groupby(group, sort=False):
        base = dict(zip(group, key))
        width = int(base["width"])
        fp = probe_fingerprint(g.l2, g.linf, g.ratio, width)
        rows.append({**base, "averaging": "word", **{k: v for k, v in fp.items() if k != "width"}})
        if counts is not None:
            fp = probe_fingerprint(g.l2, g.linf, g.ratio, width, weights=counts[g.probe.to_numpy()])
            rows.append({**base, "averaging": "occurrence", **{k: v for k, v in fp.items() if k != "width"}})
    return pd.DataFrame(rows)


def fingerprint_table(wide: pd.DataFrame, keys: list[str], level: float = 0.95) -> pd.DataFrame:
    """fingerprints.csv: :func:`run_fingerprints` rows in long form beside the paper's values, and
    for every (protocol, layer, step, averaging) with >= 3 widths the fitted width exponents.

    Columns: ``keys``, layer, step, averaging, fingerprint, value, ci_low, ci_high, paper_10k,
    paper_30k, paper_exponent.  A per-cell row (fingerprint one of :data:`CELL_FINGERPRINTS`)
    has the paper's value at 10K and 30K; an exponent row (``exponent_l2`` ...) has seed and
    width empty, the OLS slope over every cell of that protocol (all seeds pooled,
    :func:`width_exponents`) with its ``level`` CI, and the paper's 10K -> 30K exponent.
    """
    if wide.empty:  # a run of 0 steps: nothing to fingerprint
        return pd.DataFrame(columns=[*keys, *FINGERPRINT_COLUMNS])
    paper = paper_fingerprints()
    cell_part = wide.melt(id_vars=[*keys, "layer", "step", "averaging"], value_vars=list(CELL_FINGERPRINTS),
                          var_name="fingerprint", value_name="value")
    cell_part = cell_part.assign(ci_low=np.nan, ci_high=np.nan,
                                 paper_10k=cell_part.fingerprint.map(lambda f: paper[PAPER_WIDTHS[0]][f]),
                                 paper_30k=cell_part.fingerprint.map(lambda f: paper[PAPER_WIDTHS[1]][f]),
                                 paper_exponent=np.nan)
    by = [k for k in keys if k not in ("seed", "width")] + ["layer", "step", "averaging"]
    parts = [cell_part]
    for key, g in wide.groupby(by, sort=False):
        if g.width.nunique() < 3:
            continue
        fits = width_exponents(g, level=level)
        parts.append(pd.DataFrame({**dict(zip(by, key)), "seed": np.nan, "width": np.nan,
                                   "fingerprint": [f"exponent_{m}" for m in fits.measure], "value": fits.slope,
                                   "ci_low": fits.ci_low, "ci_high": fits.ci_high, "paper_10k": np.nan,
                                   "paper_30k": np.nan,
                                   "paper_exponent": [paper["exponents"][m] for m in fits.measure]}))
    out = pd.concat(parts, ignore_index=True)[[*keys, *FINGERPRINT_COLUMNS]]
    return out.astype({k: "Int64" for k in ("seed", "width") if k in keys})  # exponent rows: empty


def wide_fingerprints(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The per-cell rows of a fingerprints.csv table back in wide form (one column per fingerprint)."""
    cells = table[table.fingerprint.isin(CELL_FINGERPRINTS)]
    index = [*keys, "layer", "step", "averaging"]
    wide = cells.set_index([*index, "fingerprint"]).value.unstack("fingerprint")
    return wide[[f for f in CELL_FINGERPRINTS if f in wide]].reset_index().rename_axis(columns=None)


# -- which of the paper's fingerprints a run shows (single runs: stated rules, no seed intervals) -----
SPREAD_FACTOR = 1.5  # CV of l2 and of linf within this factor of the paper's


def gaussian_flatness(width: int) -> float:
    """ratio / sqrt(width) for i.i.d. Gaussian deviations: l2 ~ s sqrt(n), linf ~ s sqrt(2 ln n)."""
    return 1 / math.sqrt(2 * math.log(width))


def shows_flatness(flatness: float, width: int) -> bool:
    """The paper's flat deviations (0.51, 0.44): ours nearer, in log, to the paper's mean flatness
    than to the Gaussian-like value :func:`gaussian_flatness` at our width."""
    paper = paper_fingerprints()
    target = math.sqrt(paper[PAPER_WIDTHS[0]]["flatness"] * paper[PAPER_WIDTHS[1]]["flatness"])
    return bool(np.isfinite(flatness) and flatness > math.sqrt(target * gaussian_flatness(width)))


def shows_width_trend(exponent_l2: float, exponent_linf: float) -> bool:
    """The paper's width trend (l2 and linf both grow with width: exponents 0.70 and 0.33, where lazy
    NTK training gives 0 and -1/2): both of ours positive."""
    return bool(exponent_l2 > 0 and exponent_linf > 0)


def shows_spread(cv_l2: float, cv_linf: float, cv_ratio: float) -> bool:
    """The paper's spread across inputs (CV of l2 and linf about 0.21, of the ratio 0.02: parallel
    deviations): CV of l2 and of linf within :data:`SPREAD_FACTOR` of the paper's at 10K, and CV of
    the ratio below a quarter of both."""
    paper = paper_fingerprints()[PAPER_WIDTHS[0]]
    near = all(paper[k] / SPREAD_FACTOR <= v <= paper[k] * SPREAD_FACTOR
               for k, v in (("cv_l2", cv_l2), ("cv_linf", cv_linf)))
    return bool(near and cv_ratio < min(cv_l2, cv_linf) / 4)
