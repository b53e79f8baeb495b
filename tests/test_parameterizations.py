"""Each parameterization's width scaling at init and after one SGD step, against TP4's theory.

For NTKMLP(parameterization=p) at widths n = 256 ... 4096 we fit the log-log slope (ordinary
least squares of log RMS on log n, all seeds pooled) of:

* hidden pre- and post-activations at init: every parameterization keeps them O(1), slope 0;
* the output at init: O(1) (slope 0) for ntk and standard, O(n^-1/2) (slope -1/2) for mup,
  whose readout is divided by n instead of sqrt(n) (Yang & Hu 2021, "Tensor Programs IV");
* the change of the last hidden layer's features after one SGD step (base lr eta, each layer's
  lr factor from ``layer_scalings``), per coordinate: ~ n^-1/2 for ntk and standard (kernel
  regime: standard with lr eta/n is the ntk column after TP4's abc symmetry, up to the input
  layer's lr), ~ n^0 for mup (feature learning).

Derivation of the last one (the hidden layer W, multiplier m, lr factor c, incoming features
x with |x|^2 ~ n, back-propagated signal g = dL/dz):  dz = eta c m^2 g |x|^2.  ntk: m^2 = 1/n,
c = 1, g ~ n^-1/2 (readout 1/sqrt(n)) -> n^-1/2.  mup: c = n, g ~ n^-1 (readout 1/n) -> n^0.
standard: m = 1 with W ~ N(0, 1/n) so the same algebra with c = 1/n, m^2 = 1 -> n^-1/2.

Tolerance: each fitted slope must lie within 0.1 of the theory value.  The statistics are RMS
over >= n x 8 coordinates (hidden layers) or 8 x 16 outputs and 4 seeds; their finite-width
corrections are O(n^-1/2) relative (<= 6% at n = 256), which over the log-width range
ln(4096/256) = 2.77 moves a slope by <= ~2 x 0.06 / 2.77 ~ 0.045; measured over 12 seeds, the
s.d. of a one-seed slope is <= 0.05 (output and update; <= 0.012 for the hidden layers), so
the 4-seed slope has s.d. <= 0.025.  0.1 is 4 s.d. (or about twice the bias budget) and a
fifth of the 0.5 that separates the regimes, so a wrong exponent cannot pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lazydrift import NTKMLP, extract_features, fused_sgd, mse_loss

WIDTHS = (256, 512, 1024, 2048, 4096)
SEEDS = (0, 1, 2, 3)
D_IN, D_OUT, BATCH, ETA = 16, 16, 8, 0.1
TOL = 0.1

THEORY = {  # slope of log(RMS) against log(width)
    "ntk": {"pre": 0.0, "post": 0.0, "output": 0.0, "update": -0.5},
    "standard": {"pre": 0.0, "post": 0.0, "output": 0.0, "update": -0.5},
    "mup": {"pre": 0.0, "post": 0.0, "output": -0.5, "update": 0.0},
}


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def measure(parameterization: str, width: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(1000 + seed)  # inputs and targets do not depend on the width
    x = torch.randn(BATCH, D_IN, generator=g)  # |x|^2 ~ d: O(1) first-layer pre-activations
    y = torch.randn(BATCH, D_OUT, generator=g)
    model = NTKMLP(D_IN, width, D_OUT, hidden_layers=2, parameterization=parameterization, input_scale="fan_in", seed=seed)
    pre_names = [f"hidden.{k}.0" for k in range(model.hidden_layers)]
    post_names = [f"hidden.{k}" for k in range(model.hidden_layers)]
    feats = extract_features(model, x, pre_names + post_names)
    with torch.no_grad():
        out = model(x)
    out_stats = {"pre": float(np.mean([rms(feats[n]) for n in pre_names])),
                 "post": float(np.mean([rms(feats[n]) for n in post_names])), "output": rms(out)}
    with fused_sgd(model, ETA):
        mse_loss(model(x), y).backward()
    h1 = extract_features(model, x, [model.last_hidden])[model.last_hidden]
    out_stats["update"] = rms(h1 - feats[model.last_hidden])
    return out_stats


def slope(widths, values) -> float:
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


@pytest.fixture(scope="module")
def measured():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = {p: [] for p in THEORY}
    for p in THEORY:
        for w in WIDTHS:
            for s in SEEDS:
                rows[p].append((w, measure(p, w, s)))
    return rows


@pytest.mark.parametrize("parameterization", sorted(THEORY))
@pytest.mark.parametrize("quantity", ["pre", "post", "output", "update"])
def test_width_exponent_matches_theory(measured, parameterization, quantity):
    rows = measured[parameterization]
    widths = [w for w, _ in rows]
    values = [m[quantity] for _, m in rows]
    assert all(v > 0 and math.isfinite(v) for v in values)
    fitted = slope(widths, values)
    expected = THEORY[parameterization][quantity]
    assert abs(fitted - expected) < TOL, (parameterization, quantity, fitted, expected)


def test_parameterizations_are_distinguished(measured):
    """The regimes differ by 1/2 in the update exponent: mup's features move ~sqrt(n) more."""
    def fit(p):
        rows = measured[p]
        return slope([w for w, _ in rows], [m["update"] for _, m in rows])

    assert fit("mup") - fit("ntk") > 0.5 - 2 * TOL
    assert fit("mup") - fit("standard") > 0.5 - 2 * TOL
