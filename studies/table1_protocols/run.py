"""Train candidate Table-1 protocols and record the last hidden layer's fingerprints.

A plain script on lazydrift's pieces (NTKMLP, DriftRecorder, lazydrift.optimizers,
lazydrift.losses, lazydrift.text8), not the recipe runner.  Each cell (candidate, V, width,
seed) trains a 2-hidden-layer ReLU NTKMLP on skip-gram text8-mini (window 2, batch 256,
one-hot words in and out) and, at the recorded steps, appends one row to the output CSV:
the fingerprints of lazydrift.fingerprints.probe_fingerprint plus laziness indicators.

    nice -n 19 python studies/table1_protocols/run.py --candidates sgd-ntk-mse-lr1 adam-ntk-mse-lr0.001 \\
        --vocab 2000 --widths 512 1024 2048 4096 --seeds 0 1 2 --steps 1000 --out OUT.csv

Conventions as in lazydrift.experiment: model seed = seed, batch sampler seed = seed + 1.
Probes: ``--probes N`` distinct vocabulary ids drawn with seed 2 (the same for every seed, so
seeds vary the initialization and the batches only), or every word (``--probes 0``, the
default).  Each fingerprint comes twice: every probe word once (columns as named) and weighted
by the word's count in the corpus (``w_`` columns), the average over the dataset's inputs.  A cell already in --out
(same candidate, V, width, seed, steps) in any CSV of --out's folder is skipped, so an
interrupted sweep resumes and several workers (work_queue.py) can share one folder.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lazydrift import NTKMLP, DriftRecorder, text8  # noqa: E402
from lazydrift.fingerprints import probe_fingerprint  # noqa: E402
from lazydrift.losses import loss_function  # noqa: E402
from lazydrift.optimizers import Optimizer  # noqa: E402

BATCH, WINDOW, GRAM_PROBES = 256, 2, 64
RECORD = (1, 3, 10, 30, 100, 300, 1000, 3000)


@dataclass(frozen=True)
class Candidate:
    optimizer: str
    parameterization: str
    loss: str
    lr: float
    input_scale: str = "embedding"

    @property
    def name(self) -> str:
        scale = "" if self.input_scale == "embedding" else "-fanin"
        return f"{self.optimizer}-{self.parameterization}{scale}-{self.loss}-lr{self.lr:g}"


def parse_candidate(name: str) -> Candidate:
    """Inverse of Candidate.name: optimizer-parameterization[-fanin]-loss-lrX."""
    parts = name.split("-")
    scale = "fan_in" if "fanin" in parts else "embedding"
    parts = [p for p in parts if p != "fanin"]
    if len(parts) != 4 or not parts[3].startswith("lr"):
        raise SystemExit(f"candidate {name!r}: expected optimizer-parameterization[-fanin]-loss-lrX")
    return Candidate(parts[0], parts[1], parts[2], float(parts[3][2:]), scale)


def load_ids(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The corpus as ids, and each id's count."""
    tokens = text8.load_tokens("text8-mini", ROOT / "data")
    v = text8.build_vocab(tokens, vocab)
    return text8.encode(tokens, v), np.asarray(v.counts, dtype=float)


def probe_ids(vocab: int, n_probes: int) -> torch.Tensor:
    if not n_probes or n_probes >= vocab:
        return torch.arange(vocab)
    g = torch.Generator().manual_seed(2)
    return torch.randperm(vocab, generator=g)[:n_probes].sort().values


def mean_pair_cosine(h: torch.Tensor) -> float:
    """Mean cosine between the features of distinct probes (first GRAM_PROBES probes)."""
    x = h[:GRAM_PROBES].double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    c = x @ x.T
    k = len(x)
    return float((c.sum() - c.diagonal().sum()) / (k * (k - 1)))


def run_cell(ids: np.ndarray, counts: np.ndarray, cand: Candidate, vocab: int, width: int, seed: int, steps: int,
             n_probes: int = 0) -> list[dict]:
    model = NTKMLP(vocab, width, vocab, hidden_layers=2, parameterization=cand.parameterization,
                   input_scale=cand.input_scale, seed=seed)
    opt = Optimizer(model, cand.optimizer, cand.lr)
    loss_fn = loss_function(cand.loss)
    sampler = text8.SkipGramSampler(ids, WINDOW, BATCH, seed + 1)
    probes = probe_ids(vocab, n_probes)
    weights = counts[probes.numpy()]
    layer = model.last_hidden
    record_at = {s for s in RECORD if s <= steps} | {steps}
    rows, losses = [], []
    keys = {"candidate": cand.name, "optimizer": cand.optimizer, "parameterization": cand.parameterization,
            "loss": cand.loss, "lr": cand.lr, "input_scale": cand.input_scale, "vocab": vocab,
            "width": width, "seed": seed, "steps": steps}
    rec = DriftRecorder(model, layers=[layer], probes=probes, pairs=None)
    t0 = time.perf_counter()
    with rec:
        h0 = rec.h0[layer]
        norm0 = h0.norm(dim=1)
        alive0 = (h0 > 0).double().mean().item()
        cos0 = mean_pair_cosine(h0)
        for step in range(1, steps + 1):
            x, y = sampler.next_batch()
            model.train()
            with opt.step():
                loss = loss_fn(model(x), y)
                loss.backward()
            value = loss.item()
            losses.append(value)
            diverged = not math.isfinite(value)
            if step in record_at or diverged:
                rec.record(step)
                frame = rec.frame()
                f = frame[frame.step == step]
                h = rec.features()[layer]
                fp = probe_fingerprint(f.l2, f.linf, f.ratio, width)
                wfp = probe_fingerprint(f.l2, f.linf, f.ratio, width, weights=weights)
                fp.update({f"w_{k}": v for k, v in wfp.items() if k not in ("width", "n_probes")})
                dev = (h - h0).abs()
                rows.append({**keys, "step": step, "train_loss": float(np.mean(losses[-10:])), **fp,
                             "h0_norm": float(norm0.mean()), "rel_l2": float(((h - h0).norm(dim=1) / norm0).mean()),
                             "moved_frac": float((dev > 0).double().mean()),
                             "alive0": alive0, "alive": float((h > 0).double().mean()),
                             "cos0": cos0, "cos": mean_pair_cosine(h),
                             "sec_per_step": (time.perf_counter() - t0) / step, "diverged": diverged})
            if diverged:
                break
    opt.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", nargs="+", required=True)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=0, help="probe words (0: every word)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cands = [parse_candidate(c) for c in args.candidates]
    done = set()  # cells already in any CSV beside --out (every worker's file)
    for path in sorted(args.out.parent.glob("*.csv")) if args.out.parent.is_dir() else []:
        old = pd.read_csv(path)
        done |= set(zip(old.candidate, old.vocab, old.width, old.seed, old.steps))
    ids, counts = load_ids(args.vocab)
    for cand in cands:
        for seed in args.seeds:
            for width in args.widths:
                key = (cand.name, args.vocab, width, seed, args.steps)
                if key in done:
                    continue
                t = time.perf_counter()
                rows = run_cell(ids, counts, cand, args.vocab, width, seed, args.steps, args.probes)
                df = pd.DataFrame(rows)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                df.to_csv(args.out, mode="a", header=not args.out.exists(), index=False, float_format="%.6g")
                last = rows[-1]
                print(f"{cand.name} V={args.vocab} n={width} seed={seed}: step {last['step']} "
                      f"flat {last['flatness']:.3f} l2 {last['l2_mean']:.3g} linf {last['linf_mean']:.3g} "
                      f"cv {last['cv_l2']:.2f}/{last['cv_linf']:.2f}/{last['cv_ratio']:.3f} "
                      f"loss {last['train_loss']:.4g} ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
