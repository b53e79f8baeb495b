"""Does "we average over inputs in the dataset" change the spread fingerprint?

Table 1 says "we average over inputs in the dataset" without saying whether each vocabulary
word counts once (our probes: a uniform sample of distinct words) or each occurrence does
(a frequency-weighted average).  This script trains one cell and reports, over every
vocabulary word as a probe, the mean and CV of l2, linf and ratio both ways, and the rank
correlation of l2 with the word's count.

It also reports how parallel the deviations D(x) = h_t(x) - h_0(x) of different words are
(mean |cosine| between D(x) and D(x') over pairs of the 64 most frequent words).  If
D(x) = c(x) u for one direction u, then ratio(x) = ||u||_2 / ||u||_inf is the same for every x
(CV of ratio 0) while l2 and linf both vary like |c(x)| (equal CVs): the pattern of Table 1
(CV 0.21 and 0.20 against 0.016).

    nice -n 19 python studies/table1_protocols/probe_weighting.py adam-pytorch-fanin-cross_entropy-lr0.0001 \\
        --width 1024 --steps 300 --vocab 2000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import stats

import run
from lazydrift import NTKMLP, DriftRecorder, text8
from lazydrift.losses import loss_function
from lazydrift.optimizers import Optimizer


def weighted_mean_cv(v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    w = w / w.sum()
    mean = float((w * v).sum())
    return mean, float(np.sqrt((w * (v - mean) ** 2).sum()) / mean)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("candidate")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cand = run.parse_candidate(args.candidate)
    tokens = text8.load_tokens("text8-mini", run.ROOT / "data")
    vocab = text8.build_vocab(tokens, args.vocab)
    ids = text8.encode(tokens, vocab)
    model = NTKMLP(args.vocab, args.width, args.vocab, hidden_layers=2, parameterization=cand.parameterization,
                   input_scale=cand.input_scale, seed=args.seed)
    opt, loss_fn = Optimizer(model, cand.optimizer, cand.lr), loss_function(cand.loss)
    sampler = text8.SkipGramSampler(ids, run.WINDOW, run.BATCH, args.seed + 1)
    rec = DriftRecorder(model, layers=[model.last_hidden], probes=torch.arange(args.vocab), pairs=None)
    with rec:
        for _ in range(args.steps):
            x, y = sampler.next_batch()
            with opt.step():
                loss_fn(model(x), y).backward()
        rec.record(args.steps)
        h, h0 = rec.features()[model.last_hidden], rec.h0[model.last_hidden]
    d = (h - h0)[:64].double()
    d = d / d.norm(dim=1, keepdim=True)
    c = (d @ d.T).abs()
    delta_cos = float((c.sum() - c.diagonal().sum()) / (64 * 63))
    rel = float(((h - h0).norm(dim=1) / h0.norm(dim=1)).mean())
    f = rec.frame()
    counts = np.asarray(vocab.counts, dtype=float)
    print(f"{args.candidate} V={args.vocab} n={args.width} step {args.steps}, all {args.vocab} words as probes")
    for m in ("l2", "linf", "ratio"):
        v = f[m].to_numpy(dtype=float)
        uni = (v.mean(), v.std(ddof=1) / v.mean())
        wtd = weighted_mean_cv(v, counts)
        rho = stats.spearmanr(v, counts).statistic
        print(f"  {m:5s}: each word once mean {uni[0]:.4g} CV {uni[1]:.3f} | weighted by count mean {wtd[0]:.4g} "
              f"CV {wtd[1]:.3f} | Spearman(value, count) {rho:+.2f}")
    print(f"  mean |cos(D(x), D(x'))| over the 64 most frequent words: {delta_cos:.3f}; "
          f"mean ||D(x)|| / ||h_0(x)||: {rel:.3g}")
    print(f"  flatness: each word once {f.ratio.mean() / np.sqrt(args.width):.3f}, weighted "
          f"{weighted_mean_cv(f.ratio.to_numpy(float), counts)[0] / np.sqrt(args.width):.3f}")


if __name__ == "__main__":
    main()
