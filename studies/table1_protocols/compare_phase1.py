"""Phase 1 (run.py, its own loop) against phase 2 (the recipe runner): the same cells, the same numbers?

    python studies/table1_protocols/compare_phase1.py results/table1-protocols results/table1-protocols-v200

For every phase-1 record (results/all_words: every word a probe; results/screen_512probes: 512
probe words drawn with seed 2) whose cell (candidate = protocol, V, width, seed) the runner also
trained, recompute the fingerprints from the runner's drift.csv on the same probe words (each
word once, and weighted by corpus count) and print the largest relative difference per protocol
and fingerprint.  Both train the same model (seed s), the same batches (sampler seed s + 1) and
the same optimizer; phase 1 stepped Adam from gradient hooks (commit d9ab883), the runner inside
backward, and both ran one thread: differences are float32 rounding, grown by training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from lazydrift.fingerprints import probe_fingerprint  # noqa: E402

COMPARED = ("l2_mean", "linf_mean", "flatness", "cv_l2", "cv_linf", "cv_ratio")


def phase1(results: Path) -> pd.DataFrame:
    parts = []
    for folder, probes in (("all_words", 0), ("screen_512probes", 512)):
        for path in sorted((results / folder).glob("*.csv")):
            parts.append(pd.read_csv(path).assign(probes=probes))
    return pd.concat(parts, ignore_index=True)


def probe_words(vocab: int, n: int) -> np.ndarray:
    """run.py's probe_ids: every word, or n drawn with seed 2 (sorted)."""
    if not n or n >= vocab:
        return np.arange(vocab)
    g = torch.Generator().manual_seed(2)
    return torch.randperm(vocab, generator=g)[:n].sort().values.numpy()


def compare(runs: list[Path], results: Path) -> pd.DataFrame:
    old = phase1(results)
    rows = []
    for run in runs:
        vocab = json.loads((run / "recipe.json").read_text())["recipe"]["data"]["vocab_size"]
        counts = pd.read_csv(run / "probes.csv").set_index("token_id")["count"]
        for cell_dir in sorted((run / "cells").glob("*/")):
            info_path = cell_dir / "cell.json"
            if not info_path.is_file():
                continue
            info = json.loads(info_path.read_text())
            mine = old[(old.candidate == info["protocol"]) & (old.vocab == vocab) & (old.width == info["width"])
                       & (old.seed == info["seed"])]
            if mine.empty:
                continue
            drift = pd.read_csv(cell_dir / "drift.csv")  # probe k is token id k: every word is a probe, sorted
            for r in mine.itertuples():
                d = drift[drift.step == r.step].set_index("probe").loc[probe_words(vocab, r.probes)]
                for averaging, weights, prefix in (("word", None, ""), ("occurrence", counts.loc[d.index].to_numpy(), "w_")):
                    new = probe_fingerprint(d.l2, d.linf, d.ratio, info["width"], weights=weights)
                    for f in COMPARED:
                        a, b = getattr(r, prefix + f), new[f]
                        rows.append({"protocol": info["protocol"], "vocab": vocab, "width": info["width"],
                                     "seed": info["seed"], "step": r.step, "probes": r.probes or vocab,
                                     "averaging": averaging, "fingerprint": f, "phase1": a, "phase2": b,
                                     "rel_diff": abs(b - a) / abs(a) if a else np.nan})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--write", type=Path, help="every compared value to this CSV")
    args = ap.parse_args(argv)
    c = compare(args.runs, args.results)
    if args.write:
        c.to_csv(args.write, index=False, float_format="%.6g")
    # phase 1 wrote 6 significant digits: relative differences below ~1e-5 are its rounding
    table = c.groupby(["protocol", "fingerprint"]).rel_diff.agg(["count", "median", "max"]).unstack("fingerprint")
    pd.set_option("display.width", 250)
    print(f"{len(c)} values compared ({c.groupby(['protocol', 'vocab', 'width', 'seed', 'step']).ngroups} records)")
    print(table.to_string(float_format=lambda x: f"{x:.2g}"))
    worst = c.sort_values("rel_diff", ascending=False).head(8)
    print("\nlargest differences:\n" + worst.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
