"""Tables for people: Table 1 in the paper's layout, Gram-change summaries, the init theory check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .export import write_csv, write_text

# Table 1 of the paper: mean (s.d.) over inputs at widths 10K and 30K.
PAPER_TABLE1 = {
    10000: {"l2": (4.8989, 1.0250), "linf": (0.0955, 0.0189), "ratio": (51.1774, 0.7959)},
    30000: {"l2": (10.5614, 2.3419), "linf": (0.1375, 0.0286), "ratio": (76.5406, 1.5052)},
}
MEASURE_LABELS = {"l2": "‖h_t − h_0‖₂", "linf": "max_i |h_t,i − h_0,i|", "ratio": "‖h_t − h_0‖₂ / max_i |h_t,i − h_0,i|"}


def final_summary(results) -> pd.DataFrame:
    """Per width and measure: mean, s.d., probe count at each width's last recorded step."""
    rows = []
    for r in results:
        s = r.recorder.summary()
        if s.empty:
            continue
        layer = r.recorder.layers[-1]
        s = s[s.layer == layer]
        last = s[s.step == s.step.max()]
        for _, row in last.iterrows():
            rows.append({"width": r.width, "layer": layer, "step": int(row.step), "measure": row.measure,
                         "mean": row["mean"], "std": row["std"], "n_probes": int(row.n_probes)})
    return pd.DataFrame(rows)


def observations(final: pd.DataFrame) -> list[str]:
    """The paper's three observations, checked on our numbers (smallest vs largest width)."""
    if final.empty or final.width.nunique() < 2:
        return ["(one width only: the width comparisons need two)"]
    get = lambda w, m: float(final[(final.width == w) & (final.measure == m)]["mean"].iloc[0])  # noqa: E731
    small, large = final.width.min(), final.width.max()
    l2s, l2l = get(small, "l2"), get(large, "l2")
    out = [f"1. Aggregate deviation {'does not shrink' if l2l >= l2s else 'shrinks'} from width {small} "
           f"to {large}: mean l2 {l2s:.4g} -> {l2l:.4g} (x{l2l / l2s:.3g}).",
           "2. Per-neuron maximum vs aggregate: " + "; ".join(
               f"width {w}: linf/l2 = {get(w, 'linf') / get(w, 'l2'):.3g}" for w in sorted(final.width.unique()))
           + (" (far below)" if all(get(w, "linf") < 0.1 * get(w, "l2") for w in final.width.unique()) else ""),
           f"3. Ratio l2/linf {'grows' if get(large, 'ratio') > get(small, 'ratio') else 'does not grow'} with width: "
           f"{get(small, 'ratio'):.4g} -> {get(large, 'ratio'):.4g} "
           f"(sqrt of the width ratio would be x{np.sqrt(large / small):.3g}, measured x{get(large, 'ratio') / get(small, 'ratio'):.3g})."]
    return out


def table1_markdown(recipe, final: pd.DataFrame, info: dict) -> str:
    widths = sorted(final.width.unique()) if not final.empty else []
    cell = lambda w, m: "{:.4f} ({:.4f})".format(*final[(final.width == w) & (final.measure == m)][["mean", "std"]].iloc[0])  # noqa: E731
    head = "| Measure, mean (s.d.) | " + " | ".join(f"ours, width = {w}" for w in widths) \
        + " | paper, width = 10K | paper, width = 30K |"
    lines = [f"# Table 1: {recipe.name}", "",
             f"Last hidden layer ({final.layer.iloc[0] if widths else '-'}) of a {recipe.model.depth}-hidden-layer ReLU "
             f"network ({recipe.model.parameterization} parameterization, input scale {recipe.model.input_scale}), "
             f"trained on {recipe.data.dataset} with SGD, lr = {recipe.train.lr}, batch {recipe.train.batch_size}, "
             f"for {recipe.train.steps} steps; statistics over the probes at the last step "
             f"({info.get('probes', '')}).", "",
             head, "|" + "---|" * (len(widths) + 3)]
    for m in ("l2", "linf", "ratio"):
        paper = [PAPER_TABLE1[w][m] for w in (10000, 30000)]
        lines.append(f"| {MEASURE_LABELS[m]} | " + " | ".join(cell(w, m) for w in widths) + " | "
                     + " | ".join(f"{a:.4f} ({b:.4f})" for a, b in paper) + " |")
    lines += ["", "Observations (computed from the numbers above):", ""] + [f"- {o}" for o in observations(final)]
    return "\n".join(lines) + "\n"


def write_table1(recipe, results, out: Path, task) -> None:
    final = final_summary(results)
    if final.empty:
        return
    write_text(table1_markdown(recipe, final, task.info), out / "table1.md")


# -- Gram trajectories ---------------------------------------------------------------------------
def hidden_index(layer: str) -> int | None:
    m = re.fullmatch(r"hidden\.(\d+)", layer)
    return int(m.group(1)) if m else None


def noise_floor_value(floor_rec) -> dict[str, float]:
    """Largest |G_t - G_0| and largest l2 the untouched copy shows, per layer."""
    out = {}
    if floor_rec is None:
        return out
    g = floor_rec.gram_frame()
    d = floor_rec.frame()
    for layer in floor_rec.layers:
        gl = g[g.layer == layer]
        out[layer] = {"gram": float((gl.inner - gl.inner0).abs().max()) if len(gl) else float("nan"),
                      "l2": float(d[d.layer == layer].l2.max())}
    return out


def write_gram_outputs(results, task, out: Path) -> None:
    """gram.csv, gram_summary.csv (non-constancy vs the noise floor) and init_theory.csv."""
    from .kernels import feature_cosine

    frames, summaries, theory = [], [], []
    for r in results:
        g = r.recorder.gram_frame()
        if g.empty:
            continue
        frames.append(g.assign(width=r.width)[["width", *g.columns]])
        stats = metrics.pair_change_stats(g)
        floors = noise_floor_value(r.floor)
        last = g[g.step == g.step.max()]
        for layer, s in stats.groupby("layer"):
            floor = floors.get(layer, {}).get("gram", float("nan"))
            ll = last[last.layer == layer]
            summaries.append({
                "width": r.width, "layer": layer, "step": int(g.step.max()), "n_pairs": len(s),
                "noise_floor": floor, "noise_floor_l2": floors.get(layer, {}).get("l2", float("nan")),
                "frac_moved": float((s.max_change > (floor if np.isfinite(floor) else 0.0)).mean()),
                "median_rel_change": float(s.rel_change.median()), "mean_rel_change": float(s.rel_change.mean()),
                "median_total_variation": float(s.total_variation.median()),
                "median_max_change": float(s.max_change.median()),
                "mean_abs_inner0": float(ll.inner0.abs().mean()), "mean_abs_cross": float(ll.cross.abs().mean()),
                "mean_abs_quadratic": float(ll.quadratic.abs().mean())})
        g0 = g[g.step == g.step.min()]
        for layer, gl in g0.groupby("layer"):
            k = hidden_index(layer)
            if k is None:
                continue
            rho_in = task.input_cosines[gl.i.to_numpy(), gl.j.to_numpy()]
            theory.append(pd.DataFrame({"width": r.width, "layer": layer, "i": gl.i.to_numpy(), "j": gl.j.to_numpy(),
                                        "rho_input": rho_in, "predicted": feature_cosine(rho_in, k),
                                        "measured": gl.cosine.to_numpy()}))
    if frames:
        write_csv(pd.concat(frames, ignore_index=True), out / "gram.csv")
        write_csv(pd.DataFrame(summaries), out / "gram_summary.csv")
    if theory:
        t = pd.concat(theory, ignore_index=True)
        write_csv(t, out / "init_theory.csv")
        agg = (t.assign(abs_err=(t.measured - t.predicted).abs())
               .groupby(["width", "layer"]).agg(n_pairs=("i", "size"), predicted_mean=("predicted", "mean"),
                                                measured_mean=("measured", "mean"), measured_sd=("measured", "std"),
                                                mean_abs_error=("abs_err", "mean"), max_abs_error=("abs_err", "max"))
               .reset_index())
        write_csv(agg, out / "init_theory_summary.csv")
