"""protocols.md: which candidate training protocols are consistent with the paper's Table 1.

    python -m lazydrift.protocols results/table1-protocols results/table1-protocols-v200 --out protocols.md

Reads finished (merged) runs of the study recipes (``recipes/table1-protocols*.toml``: several
``[[protocol]]`` tables x seeds x widths, one vocabulary size V per recipe) and compares each
protocol's fingerprints with the paper's (:func:`lazydrift.fingerprints.compare_to_paper`), at
every recorded step, per V and per averaging (each word once; each occurrence, weighted by the
words' corpus counts):

* **the interval**: per seed, flatness and the CVs are carried from our widths to 10K and 30K
  along that seed's log-log fit over width, and the exponents are that seed's fitted slopes;
  the interval is where one more run of the protocol would fall (a Student-t prediction
  interval over the seeds; the exponents' interval also holds the noise of the paper's
  one-run, two-width estimate).  Only seeds that ran every width count (a seed missing a width
  would widen the interval spuriously), and a comparison needs >= 2 such seeds and >= 3 widths.
* **the verdict**: a fingerprint is *consistent* when the paper's value lies inside the interval,
  *ruled out* otherwise; 11 checks: flatness and the CVs of l2, linf and ratio at 10K and 30K,
  and the three width exponents.  A protocol is *consistent with the paper's Table 1* when at
  some (V, step, averaging) all 11 pass; otherwise it is *ruled out*, and the fingerprints that
  fail at every (V, step, averaging) are what rules it out.
* **laziness**: at our largest width, mean over seeds, the features' relative change
  ||h_t - h_0|| / ||h_0|| (drift.csv ``rel_l2``, mean over probes) and the mean cosine between
  two probes' features at t = 0 and at t (gram.csv): small change and unchanged cosines are the
  kernel regime.

Every comparison with the paper's widths extrapolates from ours (x2.4 and x7.3 beyond 4096 in
the study), and eleven checks at many steps are many comparisons: read single verdicts near an
interval's edge as such.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .export import write_text
from .fingerprints import FINGERPRINTS, MEASURES, PAPER_WIDTHS, compare_to_paper, paper_fingerprints, wide_fingerprints
from .recipes import CELL_KEYS
from .rundir import stored_layers

CHECKS = [(f, w) for f in FINGERPRINTS for w in PAPER_WIDTHS] + [(f"exponent_{m}", None) for m in MEASURES]
GROUPS = {  # letter: (fingerprints, "all of them at both widths"; lower case: some of them)
    "F": ("flatness",), "E": ("exponent_l2", "exponent_linf", "exponent_ratio"), "C": ("cv_l2", "cv_linf"),
    "R": ("cv_ratio",)}
MIN_SEEDS, MIN_WIDTHS = 2, 3


# -- reading a study's runs ------------------------------------------------------------------------
def load_run(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(wide fingerprints, laziness) of one finished run, both with a ``vocab`` column (the recipe's V)
    and restricted to the last recorded layer."""
    folder = Path(folder)
    recipe = json.loads((folder / "recipe.json").read_text())["recipe"]
    vocab = int(recipe["data"]["vocab_size"])
    table = pd.read_csv(folder / "fingerprints.csv")
    layer = stored_layers(folder, table.layer.unique())[-1]
    cells = table[(table.layer == layer) & table.width.notna()].astype({"seed": int, "width": int})
    return wide_fingerprints(cells, CELL_KEYS).assign(vocab=vocab), laziness(folder, layer).assign(vocab=vocab)


def laziness(folder: Path, layer: str) -> pd.DataFrame:
    """Per cell and recorded step > 0: mean relative change of the features (summary.csv ``rel_l2``) and
    the mean cosine between two probes' features at t = 0 and at t (gram.csv; NaN without it)."""
    summary = pd.read_csv(folder / "summary.csv")
    s = summary[(summary.layer == layer) & (summary.measure == "rel_l2") & (summary.step > 0)]
    out = s[[*CELL_KEYS, "step"]].assign(rel_change=s["mean"].to_numpy())
    gram_path = folder / "gram.csv"
    if gram_path.is_file() and gram_path.stat().st_size > 1:
        gram = pd.read_csv(gram_path, usecols=[*CELL_KEYS, "step", "layer", "cosine"])
        cos = gram[gram.layer == layer].groupby([*CELL_KEYS, "step"], sort=False).cosine.mean().reset_index()
        cos0 = cos[cos.step == 0].drop(columns="step").rename(columns={"cosine": "cosine0"})
        out = out.merge(cos, on=[*CELL_KEYS, "step"], how="left").merge(cos0, on=CELL_KEYS, how="left")
    else:
        out = out.assign(cosine=np.nan, cosine0=np.nan)
    return out


# -- the comparison --------------------------------------------------------------------------------
def complete_seeds(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells of the seeds that ran every width of this group."""
    widths = set(cells.width)
    full = [s for s, g in cells.groupby("seed") if set(g.width) == widths]
    return cells[cells.seed.isin(full)]


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Protocols in the order the runs list them, the larger V first, each word before each occurrence,
    steps ascending."""
    protocols = {p: k for k, p in enumerate(dict.fromkeys(frame.protocol))}
    key = {"protocol": lambda s: s.map(protocols), "vocab": lambda s: -s,
           "averaging": lambda s: s.map({"word": 0, "occurrence": 1})}
    cols = [c for c in ("protocol", "vocab", "averaging", "step") if c in frame]
    return frame.sort_values(cols, key=lambda s: key.get(s.name, lambda x: x)(s), kind="stable")


def verdicts(wide: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """:func:`compare_to_paper` for every (protocol, V, step, averaging) with >= 2 complete seeds and
    >= 3 widths; its rows with those keys and the number of seeds."""
    wide = in_order(wide)
    parts = []
    for (protocol, vocab, step, averaging), g in wide.groupby(["protocol", "vocab", "step", "averaging"], sort=False):
        g = complete_seeds(g[np.isfinite(g.flatness)])
        if g.seed.nunique() >= MIN_SEEDS and g.width.nunique() >= MIN_WIDTHS:
            parts.append(compare_to_paper(g, level).assign(protocol=protocol, vocab=vocab, step=step,
                                                           averaging=averaging, seeds=g.seed.nunique()))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def check(v: pd.DataFrame, fingerprint: str, width: int | None) -> pd.Series:
    """The row of one of the 11 checks in one group's compare_to_paper rows."""
    rows = v[(v.fingerprint == fingerprint) & ((v.paper_width == width) if width else v.paper_width.isna())]
    return rows.iloc[0]


def letters(v: pd.DataFrame) -> str:
    """One group's verdicts in short: F flatness at both paper widths (f: one), E every exponent (e: some),
    C the CVs of l2 and linf at both widths (c: some), R the CV of the ratio at both (r: one); then the
    number of the 11 checks passed."""
    out = []
    for letter, names in GROUPS.items():
        keys = [(f, w) for f, w in CHECKS if f in names]
        ok = [check(v, f, w).verdict == "consistent" for f, w in keys]
        if all(ok):
            out.append(letter)
        elif any(ok):
            out.append(letter.lower())
    passed = int((v.verdict == "consistent").sum())
    return f"{' '.join(out) or '-'} ({passed})"


def protocol_verdicts(v: pd.DataFrame) -> pd.DataFrame:
    """Per protocol: consistent with the paper's Table 1 (all 11 checks at some V, step and averaging) or
    ruled out, the checks that fail at every one, and its best group."""
    rows = []
    for protocol, g in v.groupby("protocol", sort=False):
        groups = list(g.groupby(["vocab", "step", "averaging"], sort=False))
        passed = {key: int((gv.verdict == "consistent").sum()) for key, gv in groups}
        best = max(passed, key=passed.get)
        always = [label(f, w) for f, w in CHECKS
                  if all(check(gv, f, w).verdict == "ruled out" for _, gv in groups)]
        rows.append({"protocol": protocol, "consistent": passed[best] == len(CHECKS), "best": best,
                     "best_passed": passed[best], "groups": len(groups), "always_ruled_out": always})
    return pd.DataFrame(rows)


def label(fingerprint: str, width: int | None) -> str:
    return fingerprint + (f" at {width // 1000}K" if width else "")


# -- protocols.md ----------------------------------------------------------------------------------
def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if np.isfinite(x) else "–"


def verdict_table(v: pd.DataFrame) -> list[str]:
    """One row per protocol (one V, step, averaging): each check as ours [interval], ✓ or ✗."""
    paper = paper_fingerprints()
    head = []
    for f, w in CHECKS:
        value = paper[w][f] if w else paper["exponents"][f.split("_", 1)[1]]
        head.append(f"{label(f, w)} (paper {value:.3g})")
    lines = ["| protocol | seeds | " + " | ".join(head) + " | passed |", "|" + "---|" * (len(CHECKS) + 3)]
    for protocol, g in v.groupby("protocol", sort=False):
        cells = []
        for f, w in CHECKS:
            r = check(g, f, w)
            mark = {"consistent": "✓", "ruled out": "✗", "undetermined": "?"}[r.verdict]
            cells.append(f"{fmt(r.ours)} [{fmt(r.low)}, {fmt(r.high)}] {mark}")
        lines.append(f"| {protocol} | {int(g.seeds.iloc[0])} | " + " | ".join(cells)
                     + f" | {int((g.verdict == 'consistent').sum())}/{len(CHECKS)} |")
    return lines


def letters_table(v: pd.DataFrame) -> list[str]:
    steps = sorted(v.step.unique())
    lines = ["| protocol | V | averaging | " + " | ".join(f"t = {s}" for s in steps) + " |",
             "|" + "---|" * (len(steps) + 3)]
    for (protocol, vocab, averaging), g in v.groupby(["protocol", "vocab", "averaging"], sort=False):
        by_step = {s: letters(gs) for s, gs in g.groupby("step")}
        lines.append(f"| {protocol} | {vocab} | each {averaging} | " + " | ".join(by_step.get(s, "") for s in steps) + " |")
    return lines


def laziness_table(wide: pd.DataFrame, lazy: pd.DataFrame, step_of: dict) -> list[str]:
    """At each (protocol, V)'s largest width and last step, mean over seeds: magnitudes, flatness, laziness."""
    lines = ["| protocol | V | width | t | l2 | linf | ratio / sqrt(width) | rel. change ‖h_t − h_0‖ / ‖h_0‖ "
             "| cosine of two words' features, t = 0 → t |", "|---|---|---|---|---|---|---|---|---|"]
    for (protocol, vocab), g in in_order(wide[wide.averaging == "word"]).groupby(["protocol", "vocab"], sort=False):
        step = step_of[vocab]
        top = int(g.width.max())
        w = g[(g.width == top) & (g.step == step)]
        z = lazy[(lazy.protocol == protocol) & (lazy.vocab == vocab) & (lazy.width == top) & (lazy.step == step)]
        lines.append(f"| {protocol} | {vocab} | {top} | {step} | {fmt(w.l2_mean.mean())} | {fmt(w.linf_mean.mean())} "
                     f"| {fmt(w.flatness.mean())} | {fmt(z.rel_change.mean())} "
                     f"| {fmt(z.cosine0.mean(), 2)} → {fmt(z.cosine.mean(), 2)} |")
    return lines


def protocols_markdown(wide: pd.DataFrame, lazy: pd.DataFrame, sources: list[str]) -> str:
    v = verdicts(wide)
    step_of = {vocab: int(g.step.max()) for vocab, g in wide.groupby("vocab")}
    paper = paper_fingerprints()
    lines = ["# Table 1 protocols: which training protocol is consistent with the paper's numbers?", "",
             f"Runs: {', '.join(sources)}. Last recorded layer; {wide.seed.nunique()} seeds, widths "
             f"{', '.join(map(str, sorted(wide.width.unique())))}, V = {', '.join(map(str, sorted(step_of)))}. "
             "Method: `lazydrift/protocols.py` (per seed, flatness and the CVs carried to 10K and 30K along the "
             "seed's log-log fit over width; the exponents the seed's slopes; interval: where one more run would "
             "fall, 95% Student-t prediction interval over the seeds; ✓ the paper's value inside it, ✗ outside).", "",
             f"The paper's fingerprints (from its Table 1): ratio / sqrt(width) {paper[10000]['flatness']:.3f} (10K), "
             f"{paper[30000]['flatness']:.3f} (30K); CV over inputs of l2 {paper[10000]['cv_l2']:.3f}, linf "
             f"{paper[10000]['cv_linf']:.3f}, ratio {paper[10000]['cv_ratio']:.3f} (10K); width exponents 10K → 30K: "
             + ", ".join(f"{m} {paper['exponents'][m]:.2f}" for m in MEASURES) + "."]
    if v.empty:
        return "\n".join(lines + ["", f"No protocol has {MIN_SEEDS} seeds with {MIN_WIDTHS} widths each: nothing to compare."]) + "\n"
    lines += ["", "## Verdict per protocol", ""]
    for r in protocol_verdicts(v).itertuples():
        vocab, step, averaging = r.best
        where = f"V = {vocab}, t = {step}, each {averaging}"
        if r.consistent:
            lines.append(f"- **{r.protocol}: consistent** with every fingerprint at {where}.")
        else:
            fails = ", ".join(r.always_ruled_out) or "no single fingerprint (a different one fails at each)"
            lines.append(f"- **{r.protocol}: ruled out**: no (V, step, averaging) passes all {len(CHECKS)} checks "
                         f"(best: {r.best_passed} at {where}); ruled out at every one of its {r.groups} by: {fails}.")
    for (vocab, averaging), g in in_order(v).groupby(["vocab", "averaging"], sort=False):
        step = step_of[vocab]
        lines += ["", f"## V = {vocab}, last step t = {step}, each {averaging} "
                      f"{'once' if averaging == 'word' else '(weighted by corpus count)'}", ""]
        lines += verdict_table(g[g.step == step])
    lines += ["", "## Every recorded step, in short", "",
              "F: flatness consistent at 10K and 30K (f: at one); E: the three width exponents (e: some); "
              "C: the CVs of l2 and linf at both widths (c: some); R: the CV of the ratio at both (r: one); "
              "in brackets the number of the 11 checks passed.", ""]
    lines += letters_table(v)
    lines += ["", "## Magnitudes and laziness at the largest width, last step (mean of the seeds)", ""]
    lines += laziness_table(wide, lazy, step_of)
    lines += ["", "Kernel regime: a small relative change and unchanged cosines. The paper (width 10K): l2 4.90, "
                  "linf 0.0955, ratio / sqrt(width) 0.512."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lazydrift.protocols", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished (merged) result folders of the study recipes")
    ap.add_argument("--out", help="write protocols.md here (default: print it)")
    args = ap.parse_args(argv)
    loaded = []
    for folder in args.runs:
        if not (Path(folder) / "fingerprints.csv").is_file():
            print(f"lazydrift.protocols: error: {folder}/fingerprints.csv not found: run (and merge) the study "
                  "recipe there first", file=sys.stderr)
            return 2
        loaded.append(load_run(Path(folder)))
    wide = pd.concat([w for w, _ in loaded], ignore_index=True)
    lazy = pd.concat([z for _, z in loaded], ignore_index=True)
    text = protocols_markdown(wide, lazy, list(args.runs))
    if args.out:
        write_text(text, Path(args.out))
        print(f"lazydrift.protocols: wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
