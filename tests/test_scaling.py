"""lazydrift.scaling: log-log slopes on synthetic power laws with known exponents, by-hand CIs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lazydrift import scaling


def test_three_points_by_hand():
    # log w = 0, 1, 2 and log v = 0, 2, 3: slope = 3/2, intercept = 1/6, residuals -1/6, 1/3, -1/6,
    # RSS = 1/6 with 1 degree of freedom, se = sqrt((1/6) / 2), t_{0.975, 1} = 12.7062047362.
    fit = scaling.fit_loglog([1, math.e, math.e ** 2], [1, math.e ** 2, math.e ** 3])
    assert fit["slope"] == pytest.approx(1.5, abs=1e-12)
    assert fit["intercept"] == pytest.approx(1 / 6, abs=1e-12)
    se = math.sqrt(1 / 12)
    assert fit["stderr"] == pytest.approx(se, rel=1e-12)
    assert fit["ci_low"] == pytest.approx(1.5 - 12.7062047362 * se, rel=1e-9)
    assert fit["ci_high"] == pytest.approx(1.5 + 12.7062047362 * se, rel=1e-9)
    assert (fit["n_points"], fit["n_widths"]) == (3, 3)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.0, 0.5, 1.0])
def test_exact_power_law_recovers_its_exponent(alpha):
    widths = 2.0 ** np.arange(7, 12)
    fit = scaling.fit_loglog(np.repeat(widths, 3), 0.37 * np.repeat(widths, 3) ** alpha)
    assert fit["slope"] == pytest.approx(alpha, abs=1e-10)
    assert fit["intercept"] == pytest.approx(math.log(0.37), abs=1e-9)
    assert fit["ci_high"] - fit["ci_low"] < 1e-8
    assert (fit["n_points"], fit["n_widths"]) == (15, 5)


def test_ci_covers_the_true_exponent_95_percent_of_the_time():
    """Log-normal noise makes the OLS model exact, so the t-interval's coverage is 95%.

    Over 2000 simulated sweeps the coverage has s.e. sqrt(.95 * .05 / 2000) = 0.0049; we allow 3 s.e.
    """
    rng = np.random.default_rng(0)
    widths = np.repeat(2.0 ** np.arange(7, 12), 2)  # 5 widths x 2 seeds: 8 degrees of freedom
    hits = 0
    for _ in range(2000):
        v = 2.0 * widths ** -0.5 * np.exp(rng.normal(0, 0.3, widths.size))
        fit = scaling.fit_loglog(widths, v)
        hits += fit["ci_low"] <= -0.5 <= fit["ci_high"]
    assert abs(hits / 2000 - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 2000)


def test_degenerate_inputs():
    assert math.isnan(scaling.fit_loglog([64, 64, 64], [1, 2, 3])["slope"])  # one width
    two = scaling.fit_loglog([64, 128], [1, 2])
    assert two["slope"] == pytest.approx(1.0) and math.isnan(two["ci_low"])  # no residual d.o.f.
    dropped = scaling.fit_loglog([64, 128, 256, 512], [0.0, np.nan, 4, 8])  # zeros / NaN left out
    assert dropped["n_points"] == 2 and dropped["slope"] == pytest.approx(1.0)


def synthetic_sweep(exponents: dict, widths=(128, 256, 512, 1024), seeds=(0, 1, 2), steps=(0, 1, 10)):
    """summary.csv / gram_summary.csv look-alikes whose measures are exact power laws of width."""
    rows, grows = [], []
    rng = np.random.default_rng(1)
    for p, exps in exponents.items():
        for s in seeds:
            for w in widths:
                for t in steps:
                    for m in scaling.DRIFT_MEASURES:
                        value = 0.0 if t == 0 else (1 + t) * 0.5 * w ** exps[m] * (1 + 0.01 * s)
                        rows.append({"parameterization": p, "seed": s, "width": w, "layer": "hidden.1",
                                     "step": t, "measure": m, "mean": value, "std": rng.random(), "n_probes": 10})
                grows.append({"parameterization": p, "seed": s, "width": w, "layer": "hidden.1", "step": steps[-1],
                              "median_max_change": 3.0 * w ** exps["gram_max_change"],
                              "median_rel_change": 0.2 * w ** exps["gram_rel_change"]})
    return pd.DataFrame(rows), pd.DataFrame(grows)


def test_scaling_table_recovers_each_parameterizations_exponents():
    exponents = {p: dict(scaling.THEORY[p]) for p in ("ntk", "mup")}
    exponents["ntk"]["l2"] = 0.25  # not the theory value: the fit must report what the data say
    summary, gram = synthetic_sweep(exponents)
    table = scaling.scaling_table(scaling.points(summary, gram))
    assert list(table.columns) == scaling.COLUMNS
    assert set(table.step[table.measure == "l2"]) == {1, 10}  # step 0 (no drift) has no fit
    for _, r in table.iterrows():
        assert r.slope == pytest.approx(exponents[r.parameterization][r.measure], abs=0.02)
        assert r.theory == scaling.THEORY[r.parameterization][r.measure]
        assert r.n_widths == 4 and r.n_points == 12
    ntk_l2 = table[(table.parameterization == "ntk") & (table.measure == "l2")]
    assert not ntk_l2.theory_in_ci.any()  # 0.25 measured vs 0 predicted, tiny CI
    md = scaling.scaling_markdown(table, "hidden.1")
    assert "| l2 |" in md and "(0.5)" in md and md.startswith("| hidden.1 |")


def test_single_parameterization_frames_get_the_default_name(tmp_path):
    summary, gram = synthetic_sweep({"mup": scaling.THEORY["mup"]}, widths=(64, 128))
    summary = summary.drop(columns=["parameterization", "seed"])
    pts = scaling.points(summary, None, parameterization="mup")
    assert set(pts.parameterization) == {"mup"}
    assert scaling.write_scaling(tmp_path, summary, None, layer="hidden.1", parameterization="mup").empty  # two widths
    assert not (tmp_path / "scaling.csv").exists()


def test_write_scaling_writes_csv_and_png(tmp_path):
    summary, gram = synthetic_sweep({p: scaling.THEORY[p] for p in ("ntk", "mup", "standard")})
    table = scaling.write_scaling(tmp_path, summary, gram, layer="hidden.1", plot=True)
    assert (tmp_path / "scaling.csv").is_file()
    import matplotlib.image
    for png in ("scaling.png", "scaling_slopes.png"):  # decodable, a figure's size, not blank
        img = matplotlib.image.imread(tmp_path / png)
        assert min(img.shape[:2]) >= 200 and img[..., :3].std() > 0.05, (png, img.shape)
    assert "| linf |" in (tmp_path / "scaling.md").read_text()
    back = pd.read_csv(tmp_path / "scaling.csv")
    assert len(back) == len(table) == 3 * (3 * 2 + 2)  # 3 drift measures x 2 steps + 2 Gram measures


def test_the_table_shows_the_layer_it_is_given_not_the_last_name_as_a_string():
    """hidden.10 sorts before hidden.9 as a string; the caller passes the stored (forward) order's last layer."""
    summary, gram = synthetic_sweep({"ntk": scaling.THEORY["ntk"]})
    deeper = summary.assign(layer="hidden.10", mean=summary["mean"] * 2)  # same exponents, another layer
    table = scaling.scaling_table(scaling.points(pd.concat([summary.assign(layer="hidden.9"), deeper]), None))
    assert set(table.layer) == {"hidden.9", "hidden.10"}
    assert scaling.scaling_markdown(table, "hidden.10").startswith("| hidden.10 |")
    assert scaling.scaling_markdown(table, "hidden.9").startswith("| hidden.9 |")


def test_pick_steps_spreads_in_log():
    assert scaling.pick_steps([0, 1, 2, 3]) == [1, 2, 3]
    picked = scaling.pick_steps(range(0, 1001), k=5)
    assert picked[0] == 1 and picked[-1] == 1000 and len(picked) <= 6


def test_scaling_table_keeps_the_layers_in_the_order_they_come():
    # "hidden.10" sorts before "hidden.2" as a string; the table keeps the recorded (forward) order
    rows = [{"parameterization": "ntk", "seed": 0, "width": w, "layer": layer, "measure": "l2", "step": 5,
             "value": w ** -0.5} for layer in ("hidden.2", "hidden.10") for w in (64, 128, 256)]
    table = scaling.scaling_table(pd.DataFrame(rows))
    assert list(table.layer) == ["hidden.2", "hidden.10"]
    assert table.slope.to_numpy() == pytest.approx([-0.5, -0.5])  # the fitted exponent of w^-1/2
