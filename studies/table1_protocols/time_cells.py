"""Seconds per cell of the phase-2 study grid: a training step and a recording, timed per
(optimizer, V, width) with the torch threads of a normal run, and the cell's expected time.

    nice -n 19 python studies/table1_protocols/time_cells.py --threads 2 --steps 300 --records 8

A cell = ``steps`` training steps (batch 256) + ``records`` recordings (two probe passes over
every vocabulary word: DriftRecorder.record and the features for the laziness indicators)
+ one for h_0.  Median of ``--repeat`` timed calls after a warm-up.  The CPU here is shared:
the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import torch

import run
from lazydrift import NTKMLP, DriftRecorder
from lazydrift.losses import loss_function
from lazydrift.optimizers import Optimizer


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--vocabs", type=int, nargs="+", default=[2000, 200])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average at start {os.getloadavg()[0]:.1f}")
    print("| optimizer | V | width | step s | record s | cell s (steps + records) |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for vocab in args.vocabs:
        for width in args.widths:
            x, y = torch.randint(vocab, (run.BATCH,), generator=g), torch.randint(vocab, (run.BATCH,), generator=g)
            for name, lr in (("sgd", 1.0), ("adam", 1e-4)):
                model = NTKMLP(vocab, width, vocab, hidden_layers=2, input_scale="embedding", seed=0)
                opt, loss_fn = Optimizer(model, name, lr), loss_function("mse")
                rec = DriftRecorder(model, layers=[model.last_hidden], probes=torch.arange(vocab), pairs=None)

                def step():
                    with opt.step():
                        loss_fn(model(x), y).backward()

                with rec:
                    s = median_seconds(step, args.repeat)
                    steps = itertools.count()  # the recorder records each step once
                    r = median_seconds(lambda: (rec.record(next(steps)), rec.features()), max(2, args.repeat // 2))
                cell = args.steps * s + (args.records + 1) * r
                print(f"| {name} | {vocab} | {width} | {s:.4f} | {r:.3f} | {cell:.0f} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
