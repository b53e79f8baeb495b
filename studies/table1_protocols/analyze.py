"""Tables for FINDINGS.md from the cells that run.py wrote (results/*.csv).

    python studies/table1_protocols/analyze.py [--step 300] [--vocab 2000] [--out fingerprints.md]

1. screen: every candidate at the given step (one row per candidate, seed 0 or the seed mean):
   flatness per width, CVs at the largest width, fitted width exponents, loss, laziness.
2. verdicts: candidates with >= 2 seeds and >= 3 widths, each fingerprint with its seed
   prediction interval at the paper's widths and the verdict (lazydrift.fingerprints.compare_to_paper).
3. steps: flatness and linf exponent against the step for the candidates with seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from lazydrift.fingerprints import FINGERPRINTS, compare_to_paper, paper_fingerprints  # noqa: E402
from lazydrift.scaling import fit_loglog  # noqa: E402


def load(results: Path, weighted: bool = False) -> pd.DataFrame:
    """Every worker's cells; ``weighted`` puts the count-weighted fingerprints (w_ columns:
    each occurrence of a word counts) in place of the per-word ones."""
    frames = [pd.read_csv(p) for p in sorted(results.glob("*.csv"))]
    cells = pd.concat(frames, ignore_index=True)
    if weighted:
        wcols = [c for c in cells.columns if c.startswith("w_")]
        if not wcols:
            raise SystemExit(f"{results}: no weighted (w_) columns; these cells were run before run.py wrote them")
        cells = cells.assign(**{c[2:]: cells[c] for c in wcols})
    return cells


def at_step(cells: pd.DataFrame, step: int, vocab: int) -> pd.DataFrame:
    """Every cell's record at ``step``, whatever its run length (no schedule: a 300-step run's
    first 100 steps are the 100-step run of the same seed, bit for bit on one machine)."""
    c = cells[(cells.vocab == vocab) & (cells.step == step)]
    c = c.drop_duplicates(["candidate", "width", "seed"], keep="last")
    return c[~c.diverged.astype(bool)]


def screen(cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    widths = sorted(cells.width.unique())
    for cand, g in cells.groupby("candidate", sort=False):
        m = g.groupby("width").mean(numeric_only=True)
        top = m.index.max()
        row = {"candidate": cand, "seeds": g.seed.nunique()}
        for w in widths:
            row[f"flat@{w}"] = m.flatness.get(w, np.nan)
        for k in ("cv_l2", "cv_linf", "cv_ratio"):
            row[f"{k}@top"] = m.loc[top, k]
        for k in ("l2", "linf", "ratio"):
            row[f"exp_{k}"] = fit_loglog(g.width, g[f"{k}_mean"])["slope"] if g.width.nunique() > 1 else np.nan
        row.update({"l2@top": m.loc[top, "l2_mean"], "linf@top": m.loc[top, "linf_mean"],
                    "rel_l2@top": m.loc[top, "rel_l2"], "cos0->cos@top": f"{m.loc[top, 'cos0']:.2f}->{m.loc[top, 'cos']:.2f}",
                    "loss@top": m.loc[top, "train_loss"], "top": top})
        rows.append(row)
    return pd.DataFrame(rows)


def complete_seeds(g: pd.DataFrame) -> pd.DataFrame:
    """The cells of the seeds that have every width of this candidate (so that each seed's
    log-log fit spans the same widths; an unfinished seed would widen the interval spuriously)."""
    widths = set(g.width)
    full = [s for s, gs in g.groupby("seed") if set(gs.width) == widths]
    return g[g.seed.isin(full)]


def verdicts(cells: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for cand, g in cells.groupby("candidate", sort=False):
        g = complete_seeds(g)
        if g.seed.nunique() >= 2 and g.width.nunique() >= 3:
            parts.append(compare_to_paper(g).assign(candidate=cand, seeds=g.seed.nunique()))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def fmt(x, digits=3) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def markdown(df: pd.DataFrame, digits=3) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c], digits) for c in cols) + " |")
    return "\n".join(lines)


def verdict_markdown(v: pd.DataFrame) -> str:
    """One row per candidate; each cell 'ours [low, high] verdict-letter' (paper value in the header)."""
    paper = paper_fingerprints()
    keys = [(f, w) for f in FINGERPRINTS for w in (10000, 30000)] + [(f"exponent_{m}", None) for m in ("l2", "linf", "ratio")]
    head = []
    for f, w in keys:
        pv = paper[w][f] if w else paper["exponents"][f.split("_", 1)[1]]
        head.append(f"{f}{'@' + str(w // 1000) + 'K' if w else ''} (paper {pv:.3g})")
    lines = ["| candidate | " + " | ".join(head) + " | consistent |", "|" + "---|" * (len(keys) + 2)]
    for cand, g in v.groupby("candidate", sort=False):
        cells, ok = [], 0
        for f, w in keys:
            r = g[(g.fingerprint == f) & ((g.paper_width == w) if w else g.paper_width.isna())].iloc[0]
            mark = {"consistent": "ok", "ruled out": "**no**", "undetermined": "?"}[r.verdict]
            ok += r.verdict == "consistent"
            cells.append(f"{r.ours:.3g} [{r.low:.3g}, {r.high:.3g}] {mark}")
        lines.append(f"| {cand} | " + " | ".join(cells) + f" | {ok}/{len(keys)} |")
    return "\n".join(lines)


def all_verdicts(cells: pd.DataFrame) -> pd.DataFrame:
    """compare_to_paper for every (V, recorded step) with enough seeds and widths."""
    parts = []
    for (vocab, step), _ in cells.groupby(["vocab", "step"]):
        v = verdicts(at_step(cells, step, vocab))
        if len(v):
            parts.append(v.assign(vocab=vocab, step=step))
    return pd.concat(parts, ignore_index=True)


def screen_summary(cells: pd.DataFrame, vocab: int, steps=(10, 100, 300)) -> str:
    """One row per candidate (seed 0): flatness at the widths, the two-width exponents of l2
    and linf, the CVs and the laziness indicators at the largest width, at each of ``steps``."""
    rows = []
    for cand in dict.fromkeys(cells[cells.vocab == vocab].candidate):
        row = {"candidate": cand}
        for step in steps:
            c = at_step(cells[(cells.candidate == cand) & (cells.seed == 0)], step, vocab)
            if c.empty:
                continue
            c = c.sort_values("width")
            top = c.iloc[-1]
            row[f"t={step}: flatness"] = "/".join(f"{v:.2f}" for v in c.flatness)
            row[f"t={step}: exp l2, linf"] = (f"{fit_loglog(c.width, c.l2_mean)['slope']:.2f}, "
                                               f"{fit_loglog(c.width, c.linf_mean)['slope']:.2f}")
            row[f"t={step}: CV l2/linf/ratio"] = f"{top.cv_l2:.2f}/{top.cv_linf:.2f}/{top.cv_ratio:.3f}"
            row[f"t={step}: rel. change, cos"] = f"{top.rel_l2:.2g}, {top.cos0:.2f}->{top.cos:.2f}"
        rows.append(row)
    return markdown(pd.DataFrame(rows).fillna("-"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=int, default=300)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "all_words")
    ap.add_argument("--candidates", nargs="*", help="only these (default: all)")
    ap.add_argument("--write", type=Path, help="write every (V, step) verdict to this CSV")
    ap.add_argument("--weighted", action="store_true", help="fingerprints weighted by word counts")
    ap.add_argument("--summary", action="store_true", help="the screen: every candidate, seed 0, steps 10/100/300")
    args = ap.parse_args(argv)
    cells = load(args.results, args.weighted)
    if args.summary:
        print(screen_summary(cells, args.vocab))
        return
    if args.write:
        v = all_verdicts(cells)
        v.to_csv(args.write, index=False, float_format="%.4g")
        print(f"wrote {args.write} ({len(v)} rows)")
        return
    c = at_step(cells, args.step, args.vocab)
    if args.candidates:
        c = c[c.candidate.isin(args.candidates)]
    how = "weighted by word count" if args.weighted else "each probe word once"
    print(f"## V = {args.vocab}, step {args.step} ({how}): screen\n")
    print(markdown(screen(c)))
    v = verdicts(c)
    if len(v):
        print(f"\n## V = {args.vocab}, step {args.step}: fingerprints vs the paper (seed prediction intervals)\n")
        print(verdict_markdown(v))
    diverged = cells[(cells.vocab == args.vocab) & cells.diverged.astype(bool)]
    if len(diverged):
        print("\ndiverged: " + ", ".join(f"{r.candidate} n={r.width} s={r.seed} at step {r.step}"
                                        for r in diverged.itertuples()))


if __name__ == "__main__":
    main()
