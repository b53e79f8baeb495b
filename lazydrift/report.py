"""Tables for people: the cells of a run combined, Table 1 in the paper's layout, Gram summaries.

:func:`aggregate` reads ``OUT/cells/*/`` and writes the combined CSVs at the top of ``OUT``, once,
at the end of a run and in ``lazydrift merge``.  Every combined row starts with its cell's keys
(:data:`lazydrift.recipes.CELL_KEYS`: the protocol's name, parameterization, input_scale,
optimizer, loss and lr, then seed and width; the same columns whatever the run).  With the
drift rows it writes ``fingerprints.csv`` (:mod:`lazydrift.fingerprints`) and ``table1.md``.

Layer order: each cell stores the order of its recorded layers (the model's forward order,
``cell.json`` ``layers``; run.json repeats it), and every reader takes "the last layer" from it
(:func:`lazydrift.rundir.layer_order`), never from sorting names (``hidden.10`` sorts before
``hidden.9`` as a string).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import fingerprints as fp
from . import metrics
from .export import write_csv, write_text
from .kernel_drift import NETWORK
from .recipes import CELL_KEYS
from .rundir import layer_order, read_cells

# Table 1 of the paper: mean (s.d.) over inputs at widths 10K and 30K.
PAPER_TABLE1 = {
    10000: {"l2": (4.8989, 1.0250), "linf": (0.0955, 0.0189), "ratio": (51.1774, 0.7959)},
    30000: {"l2": (10.5614, 2.3419), "linf": (0.1375, 0.0286), "ratio": (76.5406, 1.5052)},
}
MEASURE_LABELS = {"l2": "‖h_t − h_0‖₂", "linf": r"max_i \|h_t,i − h_0,i\|",  # "\|": a "|" inside a markdown cell
                  "ratio": r"‖h_t − h_0‖₂ / max_i \|h_t,i − h_0,i\|"}
CELL_FILES = ("drift", "summary", "neurons", "losses", "gram", "init_theory", "noise_floor", "ntk")
RENAMED_COLUMNS = {"losses": {"loss": "train_loss"}}  # cells written before "loss" became a key column
KEYS = CELL_KEYS  # protocol, parameterization, input_scale, optimizer, loss, lr, seed, width: in front of every row


# -- per cell ----------------------------------------------------------------------------------
def hidden_index(layer: str) -> int | None:
    m = re.fullmatch(r"hidden\.(\d+)", layer)
    return int(m.group(1)) if m else None


def init_theory(gram: pd.DataFrame, limits: dict) -> pd.DataFrame:
    """Measured cosine of each pair at t = 0 beside the infinite-width prediction h^(k+1)(rho^(1)).

    ``limits`` is the model's own ``NTKMLP.limit_kernels(probes, want=("input_cosine",
    "feature_cosine"))`` on the Gram probes (gram's ``i``, ``j`` index them).  Only for NTKMLP
    hidden layers ``hidden.k`` (Proposition 2, Definition 5; footnote 5).
    """
    rho1, features = limits["input_cosine"].numpy(), limits["feature_cosine"].numpy()
    g0 = gram[gram.step == gram.step.min()]
    parts = []
    for layer, gl in g0.groupby("layer"):
        k = hidden_index(layer)
        if k is None:
            continue
        i, j = gl.i.to_numpy(), gl.j.to_numpy()
        parts.append(pd.DataFrame({"layer": layer, "i": i, "j": j, "rho_input": rho1[i, j],
                                   "predicted": features[k, i, j], "measured": gl.cosine.to_numpy()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def noise_floor(rec, kernel: pd.DataFrame | None = None) -> pd.DataFrame:
    """What an untouched copy of the model shows: the largest l2, linf and |G_t - G_0| per layer, and
    from its ``kernel`` rows (ntk.csv's columns; layer ``network``) the largest
    ||Theta_t - Theta_0||_F / ||Theta_0||_F."""
    d, g = rec.frame(), rec.gram_frame()
    rows = []
    for layer in rec.layers:
        dl = d[d.layer == layer]
        gl = g[g.layer == layer]
        rows += [{"layer": layer, "measure": "l2_max", "value": float(dl.l2.max())},
                 {"layer": layer, "measure": "linf_max", "value": float(dl.linf.max())},
                 {"layer": layer, "measure": "gram_max_change",
                  "value": float((gl.inner - gl.inner0).abs().max()) if len(gl) else float("nan")}]
    if kernel is not None:
        rows.append({"layer": NETWORK, "measure": "ntk_rel_change_max",
                     "value": float(kernel.rel_change.max()) if len(kernel) else float("nan")})
    return pd.DataFrame(rows)


# -- combining cells ------------------------------------------------------------------------------
def combine(cells: list[tuple[dict, Path]], name: str, keys: list[str]) -> pd.DataFrame:
    parts = []
    for info, folder in cells:
        path = folder / f"{name}.csv"
        if path.is_file() and path.stat().st_size > 1:
            f = pd.read_csv(path).rename(columns=RENAMED_COLUMNS.get(name, {}))
            clash = set(keys) & set(f.columns)
            if clash:  # assign() would overwrite the cell's own column with the key, silently
                raise ValueError(f"{path}: columns {sorted(clash)} are also cell keys; rename them")
            parts.append(f.assign(**{k: info[k] for k in keys})[keys + list(f.columns)])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def aggregate(out: Path, recipe=None, info: dict | None = None, *, sources: list[Path] | None = None) -> dict[str, pd.DataFrame]:
    """Combine the cells found under ``sources`` (default ``out``) into ``out``'s top-level files."""
    out = Path(out)
    cells = read_cells(*(sources or [out]))
    if not cells:
        return {}
    keys = KEYS
    infos = [c[0] for c in cells]
    frames = {name: combine(cells, name, keys) for name in CELL_FILES}
    for name, frame in frames.items():
        if len(frame):
            write_csv(frame, out / f"{name}.csv")
    gsum = None
    if len(frames["gram"]):
        write_csv(gram_pairs(frames["gram"], keys), out / "gram_pairs.csv")
        gsum = gram_summary(frames["gram"], frames["noise_floor"], keys)
        write_csv(gsum, out / "gram_summary.csv")
    last = layer_order(infos, frames["summary"].get("layer", ()))[-1] if len(frames["summary"]) else None
    if len(frames["summary"]) and theory_applies(frames["summary"]):  # width sweeps (>= 3 widths): scaling.csv
        from . import scaling

        scaling.write_scaling(out, frames["summary"], gsum, layer=last, ntk=frames["ntk"])
    if len(frames["summary"]):  # text8: analogy.csv/md
        from . import analogy

        analogy.write_combined(out, cells)
    if len(frames["init_theory"]):
        write_csv(init_theory_summary(frames["init_theory"], keys), out / "init_theory_summary.csv")
    prints = None
    if len(frames["drift"]):
        prints = fingerprint_frame(frames["drift"], keys, probe_counts(out))
        write_csv(prints, out / "fingerprints.csv")
    final = final_summary(frames["summary"], keys, last)
    if recipe is not None and len(final):
        kernel_probes = next((c["ntk_probes"] for c in infos if c.get("ntk_probes")), None)
        write_text(table1_markdown(recipe, final, info or {}, frames["ntk"], kernel_probes, prints), out / "table1.md")
    return frames


def theory_applies(summary: pd.DataFrame) -> bool:
    """scaling.csv's theory exponents are SGD's, one line per parameterization: write it only when
    every protocol trains with SGD and no two protocols share a parameterization (otherwise
    fingerprints.csv holds each protocol's fitted exponents)."""
    protocols = summary.drop_duplicates("protocol")
    return bool((protocols.optimizer == "sgd").all() and protocols.parameterization.is_unique)


def probe_counts(out: Path) -> np.ndarray | None:
    """Each probe's count in the corpus (text8's probes.csv ``count``, indexed by probe), else None."""
    path = Path(out) / "probes.csv"
    if not path.is_file():
        return None
    probes = pd.read_csv(path)
    if "count" not in probes:
        return None
    counts = np.full(int(probes.probe.max()) + 1, np.nan)
    counts[probes.probe.to_numpy()] = probes["count"].to_numpy(dtype=float)
    return counts


def fingerprint_frame(drift: pd.DataFrame, keys: list[str], counts: np.ndarray | None) -> pd.DataFrame:
    """fingerprints.csv from the combined drift rows (:func:`lazydrift.fingerprints.fingerprint_table`)."""
    return fp.fingerprint_table(fp.run_fingerprints(drift, keys, counts), keys)


def gram_pairs(gram: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell, layer and pair: total variation, max |G_t - G_0| and relative change of the inner product."""
    parts = [metrics.pair_change_stats(g).assign(**dict(zip(keys, group if isinstance(group, tuple) else (group,))))
             for group, g in gram.groupby(keys)]
    out = pd.concat(parts, ignore_index=True)
    return out[keys + [c for c in out.columns if c not in keys]]


def gram_summary(gram: pd.DataFrame, floor: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell and layer: how many pairs' inner products moved beyond the noise floor, and how much."""
    rows = []
    for group, g in gram.groupby(keys + ["layer"]):
        group = dict(zip(keys + ["layer"], group if isinstance(group, tuple) else (group,)))
        stats = metrics.pair_change_stats(g)
        f = floor
        for k, v in group.items():
            f = f[f[k] == v] if len(f) else f
        fl = f[f.measure == "gram_max_change"].value if len(f) else pd.Series(dtype=float)
        level = float(fl.iloc[0]) if len(fl) else float("nan")
        last = g[g.step == g.step.max()]
        rows.append({**group, "step": int(g.step.max()), "n_pairs": len(stats), "noise_floor": level,
                     "frac_moved": float((stats.max_change > (level if np.isfinite(level) else 0.0)).mean()),
                     "median_rel_change": float(stats.rel_change.median()),
                     "mean_rel_change": float(stats.rel_change.mean()),
                     "median_max_change": float(stats.max_change.median()),
                     "median_total_variation": float(stats.total_variation.median()),
                     "mean_abs_inner0": float(last.inner0.abs().mean()),
                     "mean_abs_cross": float(last.cross.abs().mean()),
                     "mean_abs_quadratic": float(last.quadratic.abs().mean()),
                     "mean_cosine0": float(g[g.step == g.step.min()].cosine.mean()),
                     "mean_cosine": float(last.cosine.mean())})
    return pd.DataFrame(rows)


def init_theory_summary(theory: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    t = theory.assign(abs_error=(theory.measured - theory.predicted).abs())
    return (t.groupby(keys + ["layer"]).agg(n_pairs=("i", "size"), predicted_mean=("predicted", "mean"),
                                            measured_mean=("measured", "mean"), measured_sd=("measured", "std"),
                                            mean_abs_error=("abs_error", "mean"), max_abs_error=("abs_error", "max"))
            .reset_index())


# -- Table 1 ---------------------------------------------------------------------------------------
def final_summary(summary: pd.DataFrame, keys: list[str], layer: str) -> pd.DataFrame:
    """Rows of summary.csv at each cell's last recorded step, for ``layer`` (the last recorded one)."""
    if summary.empty:
        return summary
    s = summary[summary.layer == layer]
    last = s.groupby(keys).step.transform("max")
    return s[s.step == last].reset_index(drop=True)


OBSERVATIONS = ("aggregate deviation does not shrink with width", "max per neuron below a tenth of l2",
                "ratio grows with width")


def observations(final: pd.DataFrame) -> list[tuple[bool | None, str]]:
    """The paper's three observations, checked on our numbers (smallest vs largest width): each
    (holds, sentence); holds is None with one width."""
    if final.empty or final.width.nunique() < 2:
        return [(None, "(one width only: the width comparisons need two)")]

    def get(w, m):
        return float(final[(final.width == w) & (final.measure == m)]["mean"].iloc[0])

    widths = sorted(final.width.unique())
    still = [w for w in widths if not get(w, "l2") > 0]  # 0 steps, a zero learning rate, or NaN
    if still:
        return [(None, f"(nothing moved at width {', '.join(map(str, still))}: mean l2 is "
                       f"{get(still[0], 'l2'):g}; the width comparisons need movement)")]
    small, large = widths[0], widths[-1]
    l2s, l2l = get(small, "l2"), get(large, "l2")
    rs, rl = get(small, "ratio"), get(large, "ratio")
    far = all(get(w, "linf") < 0.1 * get(w, "l2") for w in widths)
    return [
        (l2l >= l2s, f"Aggregate deviation {'does not shrink' if l2l >= l2s else 'shrinks'} from width {small} to "
                     f"{large}: mean l2 {l2s:.4g} -> {l2l:.4g} (x{l2l / l2s:.3g})."),
        (far, "Per-neuron maximum vs aggregate: " + "; ".join(f"width {w}: linf / l2 = {get(w, 'linf') / get(w, 'l2'):.3g}"
                                                             for w in widths)
              + (" (below a tenth at every width)" if far else " (not below a tenth at every width)")),
        (rl > rs, f"The ratio l2 / linf {'grows' if rl > rs else 'does not grow'} with width: {rs:.4g} -> {rl:.4g} "
                  f"(x{rl / rs:.3g}; sqrt of the width ratio is {np.sqrt(large / small):.3g})."),
    ]


def protocol_line(cell: dict, recipe) -> str:
    """How a protocol trains, in words: optimizer, learning rate, hyperparameters, loss, parameterization."""
    hyper = recipe.optimizer_options(cell["optimizer"])
    extra = f" ({', '.join(f'{k} {v:g}' for k, v in hyper.items())})" if hyper else ""
    loss = {"mse": "Euclidean loss (1/2B) Σ‖f − y‖²", "cross_entropy": "softmax cross-entropy"}[cell["loss"]]
    return (f"{cell['optimizer']} at lr {cell['lr']:g}{extra}, {loss}, {cell['parameterization']} parameterization, "
            f"input scale {cell['input_scale']}")


def shown_fingerprints(w: pd.DataFrame, exponents: dict[str, float]) -> dict[str, tuple[bool | None, str]]:
    """Which of the paper's fingerprints one protocol's wide fingerprint rows show (last step, last
    layer, one seed; :mod:`lazydrift.fingerprints` states each rule): flatness and spread at the
    largest width, the width trend from ``exponents`` (None with one width)."""
    top = w[w.width == w.width.max()]
    word = top[top.averaging == "word"].iloc[0]
    width = int(word.width)
    out = {"flatness": (fp.shows_flatness(word.flatness, width),
                        f"ratio / sqrt(width) {word.flatness:.3f} at width {width} (paper 0.512, 0.442; Gaussian-like "
                        f"{fp.gaussian_flatness(width):.3f})")}
    if exponents:
        e2, einf = exponents["l2"], exponents["linf"]
        out["width trend"] = (fp.shows_width_trend(e2, einf),
                              f"width exponents l2 {e2:+.2f}, linf {einf:+.2f} (paper +0.70, +0.33; lazy NTK 0, -0.5)")
    else:
        out["width trend"] = (None, "one width: no exponent")
    spread = []
    for averaging in ("word", "occurrence"):
        r = top[top.averaging == averaging]
        if len(r):
            r = r.iloc[0]
            spread.append((fp.shows_spread(r.cv_l2, r.cv_linf, r.cv_ratio),
                           f"each {averaging} {r.cv_l2:.3f} / {r.cv_linf:.3f} / {r.cv_ratio:.3f}"))
    out["spread"] = (any(ok for ok, _ in spread), "CV of l2 / linf / ratio: " + "; ".join(t for _, t in spread)
                     + " (paper 0.209 / 0.198 / 0.016)")
    return out


def table1_markdown(recipe, final: pd.DataFrame, info: dict, kernel: pd.DataFrame | None = None,
                    kernel_probes: int | None = None, prints: pd.DataFrame | None = None) -> str:
    """Table 1 beside the paper's, one section per protocol (the recipe's first is the headline), the
    paper's fingerprints for each, and which observations and fingerprints each protocol shows."""
    seed = recipe.seed_list[0]
    final = final[final.seed == seed]
    step = int(final.step.max())
    layer = final.layer.iloc[0]
    which = "Last hidden layer" if layer == f"hidden.{recipe.model.hidden_layers - 1}" else "Last recorded layer"
    seeds = f"seed {seed}" + (f" (of {len(recipe.seed_list)}; fingerprints.csv has every seed)"
                              if len(recipe.seed_list) > 1 else "")
    lines = [f"# Table 1: {recipe.name}", "",
             f"{which} ({layer}) of a ReLU network with {recipe.model.hidden_layers} hidden layers trained on "
             f"{info.get('task', recipe.data.dataset)}, batch {recipe.train.batch_size}, {seeds}; h_t at step "
             f"t = {step}. Mean (sample s.d.) over {info.get('probes', 'the probes')}."]
    protocols = [p for p in recipe.protocols() if p.name in set(final.protocol)]
    wide = fp.wide_fingerprints(prints, KEYS) if prints is not None and len(prints) else None
    summary_rows = []
    for k, p in enumerate(protocols):
        f = final[final.protocol == p.name]
        cell = f.iloc[0]
        title = f"Protocol {p.name}" + (" (the recipe's first: the headline)" if k == 0 and len(protocols) > 1 else "")
        lines += ["", f"## {title}", "", protocol_line(cell, recipe) + ".", ""]
        kern = kernel[(kernel.protocol == p.name) & (kernel.seed == seed)] if kernel is not None and len(kernel) else None
        lines += measure_table(f, kern)
        obs = observations(f)
        lines += ["", "The paper's observations, checked on our numbers:", ""]
        lines += [f"{i}. {text}" for i, (_, text) in enumerate(obs, 1)]
        lines += kernel_notes(kern, sorted(f.width.unique()), kernel_probes)
        shown = {}
        if wide is not None:
            w = wide[(wide.protocol == p.name) & (wide.seed == seed) & (wide.layer == layer) & (wide.step == step)]
            exps = {m: fp.fit_loglog(w[w.averaging == "word"].width, w[w.averaging == "word"][f"{m}_mean"])["slope"]
                    for m in fp.MEASURES} if w.width.nunique() >= 2 else {}
            lines += [""] + fingerprint_rows(w, exps)
            shown = shown_fingerprints(w, exps)
            lines += ["", "The paper's fingerprints in our numbers:", ""]
            lines += [f"- {name}: {'shown' if ok else 'not shown' if ok is not None else 'not measured'} ({text})"
                      for name, (ok, text) in shown.items()]
        summary_rows.append((p.name, [ok for ok, _ in obs], {name: ok for name, (ok, _) in shown.items()}))
    lines += ["", "## Which of the paper's observations and fingerprints each protocol shows", "",
              "| protocol | " + " | ".join(OBSERVATIONS) + " | flat deviations | width trend | spread across inputs |",
              "|" + "---|" * 7]
    mark = {True: "yes", False: "no", None: "–"}
    for name, obs, shown in summary_rows:
        obs = obs if len(obs) == 3 else [None] * 3
        lines.append(f"| {name} | " + " | ".join(mark[o] for o in obs) + " | "
                     + " | ".join(mark[shown.get(k)] for k in ("flatness", "width trend", "spread")) + " |")
    lines += ["", RULES]
    return "\n".join(lines) + "\n"


RULES = ("Rules (one seed, our widths; lazydrift/fingerprints.py): *flat deviations*: ratio / sqrt(width) at the largest "
         "width nearer, in log, to the paper's (0.51, 0.44) than to Gaussian-like deviations' 1 / sqrt(2 ln width); "
         "*width trend*: the exponents of l2 and linf over our widths both positive (paper +0.70 and +0.33, lazy NTK "
         "training 0 and -1/2); *spread*: CV over probes of l2 and of linf within a factor 1.5 of the paper's 0.21 and "
         "CV of the ratio below a quarter of both (parallel deviations), each word once or each occurrence. "
         "The seed-to-seed intervals and verdicts are protocols.md's (`make reproduce-table1-protocols`).")


def measure_table(final: pd.DataFrame, kernel: pd.DataFrame | None) -> list[str]:
    """Our mean (s.d.) of l2, linf and ratio per width beside the paper's, and the kernel rows."""
    widths = sorted(final.width.unique())

    def cell(w, m):
        row = final[(final.width == w) & (final.measure == m)].iloc[0]
        return f"{row['mean']:.4f} ({row['std']:.4f})"

    lines = ["| Measure, mean (s.d.) | " + " | ".join(f"ours, width = {w}" for w in widths)
             + " | paper, width = 10K | paper, width = 30K |", "|" + "---|" * (len(widths) + 3)]
    for m in ("l2", "linf", "ratio"):
        paper = [PAPER_TABLE1[w][m] for w in (10000, 30000)]
        lines.append(f"| {MEASURE_LABELS[m]} | " + " | ".join(cell(w, m) for w in widths) + " | "
                     + " | ".join(f"{a:.4f} ({b:.4f})" for a, b in paper) + " |")
    return lines + kernel_rows(kernel, widths)


FINGERPRINT_LABELS = {"flatness": "ratio / sqrt(width)", "cv_l2": "CV of l2 over inputs",
                      "cv_linf": "CV of linf over inputs", "cv_ratio": "CV of ratio over inputs"}


def fingerprint_rows(w: pd.DataFrame, exponents: dict[str, float]) -> list[str]:
    """The paper's fingerprints: ours per width (each word once; each occurrence in brackets) beside the
    paper's, and the width exponents (ours over our widths; the paper's from 10K to 30K)."""
    paper = fp.paper_fingerprints()
    widths = sorted(w.width.unique())
    lines = ["| Fingerprint: each word (each occurrence) | " + " | ".join(f"ours, width = {x}" for x in widths)
             + " | paper, 10K | paper, 30K |", "|" + "---|" * (len(widths) + 3)]
    for name, label in FINGERPRINT_LABELS.items():
        cells = []
        for x in widths:
            word = w[(w.width == x) & (w.averaging == "word")][name]
            occ = w[(w.width == x) & (w.averaging == "occurrence")][name]
            cells.append(f"{word.iloc[0]:.3f}" + (f" ({occ.iloc[0]:.3f})" if len(occ) else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {paper[10000][name]:.3f} | {paper[30000][name]:.3f} |")
    for m, value in exponents.items():
        lines.append(f"| width exponent of {m} (ours: {widths[0]} to {widths[-1]}; paper: 10K to 30K) | {value:+.3f}"
                     + " |" * (len(widths) - 1) + f" | {paper['exponents'][m]:+.3f} | |")
    return lines


# -- Table 1's kernel rows ([record] ntk) -------------------------------------------------------------
KERNEL_LABELS = {"rel_change": "‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F (relative kernel change)",
                 "limit_distance": "‖Θ_0 − Θ_∞‖_F / ‖Θ_∞‖_F (t = 0)"}


def kernel_values(kernel: pd.DataFrame | None, width: int) -> dict[str, float]:
    """The kernel's Table 1 values of the cell of ``width`` (ntk.csv): the relative change at its last
    recorded step and Theta_0's distance to Theta_inf (its first row; NaN without a closed form)."""
    g = kernel[kernel.width == width] if kernel is not None and len(kernel) else None
    if g is None or g.empty:
        return {c: float("nan") for c in KERNEL_LABELS}
    return {"rel_change": float(g.loc[g.step.idxmax(), "rel_change"]),
            "limit_distance": float(g.loc[g.step.idxmin(), "limit_distance"])}


def kernel_rows(kernel: pd.DataFrame | None, widths: list[int]) -> list[str]:
    """Rows of Table 1 for the kernel, one value per width (one matrix each: no s.d.); the paper has none."""
    values = {w: kernel_values(kernel, w) for w in widths}
    lines = []
    for column, label in KERNEL_LABELS.items():
        cells = [f"{values[w][column]:#.4g}" if np.isfinite(values[w][column]) else "–" for w in widths]
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " | – | – |")
    return lines


def kernel_notes(kernel: pd.DataFrame | None, widths: list[int], probes: int | None) -> list[str]:
    """What the kernel rows are, and how the change scales between the smallest and largest width."""
    if kernel is None or kernel.empty:
        return []
    on = f"the first {probes} probes" if probes else "the first probes"
    lines = ["", f"Kernel rows: the empirical NTK Θ_t of the network's scalar output v·f (v a seeded unit vector) "
                 f"on {on}, at the last recorded step T and at t = 0 (ntk.csv; one matrix per width, so no s.d.). "
                 "Θ_∞ is the closed-form limit (NTK parameterization only)."]
    if len(widths) >= 2:
        small, large = widths[0], widths[-1]
        a, b = kernel_values(kernel, small)["rel_change"], kernel_values(kernel, large)["rel_change"]
        if np.isfinite(a) and np.isfinite(b) and a > 0:
            lines.append(f"The relative kernel change goes from {a:.4g} (width {small}) to {b:.4g} (width {large}), "
                         f"x{b / a:.3g}; O(1/n) would give x{small / large:.3g}, O(n^-1/2) x{np.sqrt(small / large):.3g}.")
    return lines
