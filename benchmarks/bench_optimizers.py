"""Adam and momentum steps against the fused SGD step, and against the bytes they must move.

    python benchmarks/bench_optimizers.py              # widths 2048, 4096 (CPU: a few minutes)
    python benchmarks/bench_optimizers.py --quick      # widths 1024, 2048
    python benchmarks/bench_optimizers.py --json results/bench/optimizers.json
    python benchmarks/bench_optimizers.py --threads 1    # steadier on a shared machine

The target (issue 13): Adam must not cost more than its own memory traffic over the fused SGD
step.  Fused SGD (lazydrift.train.fused_sgd) adds W -= lr * grad into the grad-weight GEMM's
output, so beyond the GEMMs it moves each weight once: read + write, 8 bytes per float32
parameter (the input layer's lookup touches only the batch's rows).  An in-backward Adam step
(lazydrift.optimizers.Optimizer, one fused torch kernel per weight from a post-accumulate-grad
hook) instead writes the gradient (4 bytes; the input layer's dense embedding gradient is
zero-filled first, 4 more) and then reads W, grad, m, v and writes W, m, v (28 bytes).  The
extra traffic is therefore 24 bytes per parameter of the hidden and readout layers and 32 per
input-layer parameter; momentum's is 4 + 20 - 8 = 16 (read W, grad, buf; write W, buf) and 24.

    predicted ratio = (t_sgd + extra_bytes / bandwidth) / t_sgd

with the bandwidth of a STREAM-like triad (a = b + s c on 256 MiB arrays, 12 bytes per
element) measured in the same process.  Everything is timed alternately, median of repeats,
so that machine noise hits all variants alike (the CPU here is shared: say so with the numbers).
Also timed: Adam as most code writes it (plain backward, then one fused torch.optim.Adam step
over all weights), which holds every gradient at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lazydrift import NTKMLP, mse_loss
from lazydrift.optimizers import Optimizer, param_groups

V, BATCH = 2000, 256


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def triad_bandwidth(repeat: int) -> float:
    """Bytes per second of a = b + s * c over 64 Mi float32 elements (12 bytes each)."""
    n = 64 * 2**20
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    seconds = timed(lambda: torch.add(b, c, alpha=0.5, out=a), repeat)
    return 12 * n / seconds


def step_fns(width: int) -> dict:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(V, (BATCH,), generator=g), torch.randint(V, (BATCH,), generator=g)
    fns = {}
    for name, lr in (("sgd", 1e-3), ("momentum", 1e-4), ("adam", 1e-6)):
        model = NTKMLP(V, width, V, input_scale="embedding", seed=0)
        opt = Optimizer(model, name, lr)

        def step(model=model, opt=opt):
            with opt.step():
                mse_loss(model(x), y).backward()
        fns[name] = step
    model = NTKMLP(V, width, V, input_scale="embedding", seed=0)
    plain = torch.optim.Adam(param_groups(model, "adam", 1e-6), lr=1e-6, fused=True)

    def adam_after_backward():
        plain.zero_grad(set_to_none=True)
        mse_loss(model(x), y).backward()
        plain.step()
    fns["adam_plain"] = adam_after_backward
    return fns


def extra_bytes(width: int, per_param: float, per_input_param: float) -> float:
    return per_param * (width * width + width * V) + per_input_param * V * width


def bench(widths, repeat: int) -> dict:
    rows = []
    bandwidths = []
    for width in widths:
        fns = step_fns(width)
        t = {k: [] for k in fns}
        for _ in range(3):  # alternate the variants and the bandwidth probe
            bandwidths.append(triad_bandwidth(repeat))
            for k, fn in fns.items():
                t[k].append(timed(fn, repeat))
        bw = statistics.median(bandwidths)
        sec = {k: min(v) for k, v in t.items()}
        sgd = sec["sgd"]
        predicted = {"adam": (sgd + extra_bytes(width, 24, 32) / bw) / sgd,
                     "momentum": (sgd + extra_bytes(width, 16, 24) / bw) / sgd}
        row = {"width": width, "bandwidth_gbs": bw / 1e9, **{f"{k}_s": v for k, v in sec.items()},
               "adam_ratio": sec["adam"] / sgd, "adam_predicted": predicted["adam"],
               "momentum_ratio": sec["momentum"] / sgd, "momentum_predicted": predicted["momentum"],
               "adam_plain_ratio": sec["adam_plain"] / sgd}
        rows.append(row)
        print(f"width {width}: sgd {sgd:.3f} s | adam {sec['adam']:.3f} s, ratio {row['adam_ratio']:.3f} "
              f"(predicted from bytes {row['adam_predicted']:.3f}; adam after backward {row['adam_plain_ratio']:.3f}) | "
              f"momentum ratio {row['momentum_ratio']:.3f} (predicted {row['momentum_predicted']:.3f}) | "
              f"triad {bw / 1e9:.1f} GB/s", flush=True)
        del fns
    import platform

    return {"threads": torch.get_num_threads(), "device": f"cpu ({platform.processor() or platform.machine()})",
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--widths", type=int, nargs="*")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench(args.widths or ([1024, 2048] if args.quick else [2048, 4096]), args.repeat)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
