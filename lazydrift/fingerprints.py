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
