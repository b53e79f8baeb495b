"""lazydrift.fingerprints against numpy / scipy computed independently and the paper's Table 1."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lazydrift import fingerprints as fp
from lazydrift.metrics import drift_norms


def test_probe_fingerprint_against_numpy():
    rng = np.random.default_rng(0)
    l2, linf = rng.uniform(3, 6, 40), rng.uniform(0.1, 0.2, 40)
    ratio = l2 / linf
    got = fp.probe_fingerprint(l2, linf, ratio, width=900)
    for name, v in (("l2", l2), ("linf", linf), ("ratio", ratio)):
        mean, sd = np.mean(v), np.sqrt(np.sum((v - np.mean(v)) ** 2) / (len(v) - 1))
        assert got[f"{name}_mean"] == pytest.approx(mean, rel=1e-14)
        assert got[f"{name}_sd"] == pytest.approx(sd, rel=1e-12)
        assert got[f"cv_{name}"] == pytest.approx(sd / mean, rel=1e-12)
    assert got["flatness"] == pytest.approx(np.mean(ratio) / 30.0, rel=1e-14)
    assert got["n_probes"] == 40


def test_weighted_fingerprint_is_the_average_over_repeated_inputs():
    """Integer weights: the same as listing each probe weight-many times (population s.d.)."""
    rng = np.random.default_rng(5)
    l2, linf = rng.uniform(3, 6, 12), rng.uniform(0.1, 0.2, 12)
    counts = rng.integers(1, 9, 12)
    got = fp.probe_fingerprint(l2, linf, l2 / linf, width=100, weights=counts)
    for name, v in (("l2", l2), ("linf", linf), ("ratio", l2 / linf)):
        rep = np.repeat(v, counts)
        assert got[f"{name}_mean"] == pytest.approx(rep.mean(), rel=1e-13)
        assert got[f"cv_{name}"] == pytest.approx(rep.std(ddof=0) / rep.mean(), rel=1e-11)
    assert got["flatness"] == pytest.approx(np.repeat(l2 / linf, counts).mean() / 10, rel=1e-13)


def test_flatness_closed_forms():
    """Every neuron moving by the same amount gives ratio = sqrt(n), flatness 1; one neuron, 1/sqrt(n)."""
    import torch

    n = 400
    h0 = torch.zeros(3, n, dtype=torch.float64)
    even = h0 + torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)[:, None]
    spike = h0.clone()
    spike[:, 7] = 2.0
    for h, flat in ((even, 1.0), (spike, 1 / math.sqrt(n))):
        l2, linf, ratio = (t.numpy() for t in drift_norms(h, h0))
        assert fp.probe_fingerprint(l2, linf, ratio, n)["flatness"] == pytest.approx(flat, rel=1e-12)


def test_probe_fingerprint_leaves_out_unmoved_probes():
    got = fp.probe_fingerprint([0.0, 2.0, 4.0], [0.0, 1.0, 1.0], [np.nan, 2.0, 4.0], width=4)
    assert got["ratio_mean"] == 3.0 and got["n_probes"] == 2 and got["flatness"] == 1.5


def test_paper_fingerprints_from_table_1():
    """Hand-computed from the paper's Table 1 (section 5)."""
    p = fp.paper_fingerprints()
    assert p[10000]["flatness"] == pytest.approx(51.1774 / 100, abs=1e-12)
    assert p[30000]["flatness"] == pytest.approx(0.4419, abs=5e-5)       # 76.5406 / 173.205
    assert p[10000]["cv_l2"] == pytest.approx(0.2092, abs=5e-5)          # 1.0250 / 4.8989
    assert p[30000]["cv_linf"] == pytest.approx(0.2080, abs=5e-5)        # 0.0286 / 0.1375
    assert p[10000]["cv_ratio"] == pytest.approx(0.01555, abs=5e-6)      # 0.7959 / 51.1774
    assert p["exponents"]["l2"] == pytest.approx(0.6995, abs=5e-4)       # ln(2.1559) / ln 3
    assert p["exponents"]["linf"] == pytest.approx(0.3318, abs=5e-4)     # ln(1.4398) / ln 3
    assert p["exponents"]["ratio"] == pytest.approx(0.3665, abs=5e-4)    # ln(1.4956) / ln 3


def cells_from_power_laws(seeds=(0, 1, 2), widths=(512, 1024, 2048, 4096), noise=0.0, rng=None, **laws):
    """Synthetic cells: each column c * w^alpha (times lognormal noise), per seed."""
    rows = []
    for s in seeds:
        for w in widths:
            row = {"seed": s, "width": w}
            for name, (c, alpha) in laws.items():
                e = rng.normal(0, noise) if noise else 0.0
                row[name] = c * w ** alpha * math.exp(e)
            rows.append(row)
    return pd.DataFrame(rows)


def test_width_exponents_recover_power_laws_and_match_scipy():
    rng = np.random.default_rng(1)
    laws = {"l2_mean": (0.3, 0.7), "linf_mean": (0.005, 0.33), "ratio_mean": (60.0, 0.37)}
    exact = fp.width_exponents(cells_from_power_laws(**laws)).set_index("measure")
    for m, (_, alpha) in zip(fp.MEASURES, laws.values()):
        assert exact.loc[m, "slope"] == pytest.approx(alpha, abs=1e-12)
    noisy_cells = cells_from_power_laws(noise=0.1, rng=rng, **laws)
    noisy = fp.width_exponents(noisy_cells, level=0.9).set_index("measure")
    for m in fp.MEASURES:
        ref = stats.linregress(np.log(noisy_cells.width), np.log(noisy_cells[f"{m}_mean"]))
        half = stats.t.ppf(0.95, len(noisy_cells) - 2) * ref.stderr
        assert noisy.loc[m, "slope"] == pytest.approx(ref.slope, rel=1e-10)
        assert noisy.loc[m, "ci_low"] == pytest.approx(ref.slope - half, rel=1e-9)
        assert noisy.loc[m, "ci_high"] == pytest.approx(ref.slope + half, rel=1e-9)


def test_loglog_at_extrapolates_a_power_law():
    w = np.array([512, 1024, 2048])
    assert fp.loglog_at(w, 0.9 * w ** -0.1, 30000) == pytest.approx(0.9 * 30000 ** -0.1, rel=1e-12)
    assert math.isnan(fp.loglog_at([512, 512], [1.0, 2.0], 1000))


def test_prediction_interval_by_hand():
    # values 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.30265 (Student t table, 6 digits),
    # half width = t * sqrt(s^2 (1 + 1/3)) = 4.30265 * sqrt(4/3) = 4.96827
    mean, low, high = fp.prediction_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert high - mean == pytest.approx(4.30265 * math.sqrt(4 / 3), rel=2e-6)
    assert mean - low == pytest.approx(high - mean, rel=1e-14)
    _, low2, high2 = fp.prediction_interval([1.0, 2.0, 3.0], extra_var=2.0)  # sqrt(4/3 + 2)
    assert high2 - 2.0 == pytest.approx(4.30265 * math.sqrt(4 / 3 + 2), rel=2e-6)
    assert all(math.isnan(v) for v in fp.prediction_interval([1.0])[1:])


def test_verdict():
    assert fp.verdict(0.5, 0.4, 0.6) == "consistent"
    assert fp.verdict(0.7, 0.4, 0.6) == "ruled out"
    assert fp.verdict(0.5, math.nan, 0.6) == "undetermined"


def paper_like_cells(noise, rng, flat_shift=1.0):
    """Cells whose fingerprints follow power laws through the paper's values at 10K and 30K."""
    p = fp.paper_fingerprints()
    e = p["exponents"]
    # flatness = ratio / sqrt(w): exponent e_ratio - 1/2, through the paper's 10K value
    flat_alpha = e["ratio"] - 0.5
    laws = {"l2_mean": (4.8989 / 10000 ** e["l2"], e["l2"]), "linf_mean": (0.0955 / 10000 ** e["linf"], e["linf"]),
            "ratio_mean": (51.1774 / 10000 ** e["ratio"], e["ratio"]),
            "flatness": (flat_shift * p[10000]["flatness"] / 10000 ** flat_alpha, flat_alpha)}
    for name in ("cv_l2", "cv_linf", "cv_ratio"):
        alpha = math.log(p[30000][name] / p[10000][name]) / math.log(3)
        laws[name] = (p[10000][name] / 10000 ** alpha, alpha)
    return cells_from_power_laws(noise=noise, rng=rng, **laws)


def test_compare_to_paper_accepts_the_paper_and_rejects_a_shift():
    rng = np.random.default_rng(2)
    table = fp.compare_to_paper(paper_like_cells(0.02, rng)).set_index(["fingerprint", "paper_width"], drop=False)
    assert set(table.verdict) == {"consistent"}, table[["fingerprint", "ours", "low", "high", "paper"]]
    flat30 = table[(table.fingerprint == "flatness") & (table.paper_width == 30000)].iloc[0]
    assert flat30.ours == pytest.approx(76.5406 / math.sqrt(30000), rel=0.05)  # carried 7x beyond 4096
    shifted = fp.compare_to_paper(paper_like_cells(0.02, rng, flat_shift=0.5))
    flat = shifted[shifted.fingerprint == "flatness"]
    assert set(flat.verdict) == {"ruled out"}
    assert set(shifted[shifted.fingerprint != "flatness"].verdict) == {"consistent"}


def test_compare_to_paper_exponent_interval_includes_the_two_width_noise():
    """The exponent interval adds 2 var(log value) / ln(3)^2 to the seed variance of the slopes."""
    rng = np.random.default_rng(3)
    cells = paper_like_cells(0.05, rng)
    row = fp.compare_to_paper(cells).set_index("fingerprint").loc["exponent_l2"]
    slopes = [stats.linregress(np.log(g.width), np.log(g.l2_mean)).slope for _, g in cells.groupby("seed")]
    top = np.log(cells[cells.width == 4096].l2_mean)
    var = np.var(slopes, ddof=1) * (1 + 1 / 3) + 2 * np.var(top, ddof=1) / math.log(3) ** 2
    assert row.ours == pytest.approx(np.mean(slopes), rel=1e-10)
    assert row.high - row.ours == pytest.approx(stats.t.ppf(0.975, 2) * math.sqrt(var), rel=1e-9)


def test_cell_fingerprints_groups_per_probe_rows():
    rng = np.random.default_rng(4)
    rows = []
    for seed in (0, 1):
        for width in (64, 256):
            l2 = rng.uniform(1, 2, 10)
            linf = rng.uniform(0.1, 0.2, 10)
            rows.append(pd.DataFrame({"seed": seed, "width": width, "probe": np.arange(10), "l2": l2,
                                      "linf": linf, "ratio": l2 / linf}))
    drift = pd.concat(rows, ignore_index=True)
    cells = fp.cell_fingerprints(drift, ["seed"])
    assert len(cells) == 4
    for _, c in cells.iterrows():
        g = drift[(drift.seed == c.seed) & (drift.width == c.width)]
        assert c.flatness == pytest.approx(g.ratio.mean() / math.sqrt(c.width), rel=1e-14)
        assert c.cv_l2 == pytest.approx(np.std(g.l2, ddof=1) / np.mean(g.l2), rel=1e-12)
