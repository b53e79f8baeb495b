"""Empirical-NTK benchmarks: the structured route against the Jacobian route and a training step,
its memory at the paper's widths, the cost of recording it, and Theta_0 -> Theta_inf with width.
Everything is measured side by side in one run and printed as ratios (these machines are noisy).

    python benchmarks/bench_ntk.py            # width 16384 timing, width 30000 memory (CPU: ~5 minutes)
    python benchmarks/bench_ntk.py --quick    # widths 2048 / 4096 (under a minute)
    python benchmarks/bench_ntk.py --only limit    # just section 5

1. equality: max |structured - jacobian| / max |jacobian| in float64 on small NTKMLPs (token ids
   and float inputs, 1 to 4 hidden layers, ntk / mup / standard) and an nn.Sequential of nn.Linear with
   biases (target <= 1e-10; tests/test_empirical.py asserts it).  Also the Jacobian route's time
   on a model small enough for its n x P buffer, against the structured route's.
2. time: one structured NTK of ``NTKMLP(2000, width, 2000, input_scale="embedding")`` on 256 token
   probes (output="random") against one fused training step (batch 256, MSE, fused_sgd) of the
   same model, alternated (target <= 1.5 steps).
3. memory: a fresh process builds the width-30000 model, resets its peak RSS (/proc/self/clear_refs)
   and reports the peak RSS added by one NTK, and by one fused training step, in bytes (target:
   the NTK fits beside the model; it never holds an n x P buffer).
4. recording overhead at the default schedule: a recorder with ``ntk_probes`` computes
   kernels = |log_schedule(T, points)| + 1 kernels in a Table-1 run of recipes/table1.toml's T steps
   (one per record, step 0 included, and Theta_0 on entering): overhead = kernels * t_ntk / (T * t_step)
   (target <= 2%);
   a run's noise floor (lazydrift.cell.record_noise_floor) computes 2 more.
5. ||Theta_0 - Theta_inf||_F / ||Theta_inf||_F for Table 1's network at CPU scale,
   ``NTKMLP(200, width, 200, hidden_layers=2, input_scale="embedding")`` (ntk), on all 200 token probes,
   output="random", widths 250..4000, several seeds, and its fitted log-log slope (theory -1/2).
6. ||Theta_t - Theta_0||_F / ||Theta_0||_F after 10 SGD steps (lr 1, batch 256, a toy token task
   y = (x + 1) mod V) on the same networks, and its slope: a first look at the width exponent of
   the kernel change (Jacot et al.'s bound is n^-1/2; the dNTK is O(1/n), Dyer & Gur-Ari 2020).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lazydrift import NTKMLP, fused_sgd, log_schedule, mse_loss
from lazydrift.empirical import empirical_ntk, jacobian_ntk, structured_ntk
from lazydrift.kernel_drift import KernelDriftTracker
from lazydrift.experiment import resolve_device
from lazydrift.scaling import fit_loglog

V, PROBES, BATCH = 2000, 256, 256
def table1_schedule() -> tuple[int, int]:
    """recipes/table1.toml's steps and record points: the run whose overhead the targets are about."""
    from lazydrift.recipes import load_recipe
    table1 = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "table1.toml")
    return table1.train.steps, table1.record.points


TABLE1_STEPS, TABLE1_POINTS = table1_schedule()
FLOOR_KERNELS = 2  # the noise floor's Theta_0 and one record (lazydrift.cell.record_noise_floor)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


# 1 ----------------------------------------------------------------------------------------------
def bench_equality() -> dict:
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for parameterization in ("ntk", "mup", "standard"):
        for hidden_layers in (1, 2, 3, 4):
            for input_scale, x in (("embedding", torch.randint(9, (6,), generator=g)),
                                   ("fan_in", torch.randn(6, 9, dtype=torch.float64, generator=g))):
                model = NTKMLP(9, 12, 4, hidden_layers=hidden_layers, parameterization=parameterization,
                               input_scale=input_scale, seed=hidden_layers, dtype=torch.float64)
                a, b = structured_ntk(model, x, output="random"), jacobian_ntk(model, x, output="random")
                worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
    seq = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(7, 5, dtype=torch.float64, generator=g)
    a, b = structured_ntk(seq, x, output=0), jacobian_ntk(seq, x, output=0)
    worst_seq = ((a - b).abs().max() / b.abs().max()).item()

    # The Jacobian route where its n x P buffer fits: width 512, 64 probes (64 x 2.3M floats, 0.6 GB).
    model = NTKMLP(V, 512, V, input_scale="embedding", seed=0)
    probes = torch.arange(64)
    cpu = torch.device("cpu")
    jac = min(seconds(lambda: jacobian_ntk(model, probes, output="random", batch_size=64), cpu) for _ in range(2))
    st = min(seconds(lambda: structured_ntk(model, probes, output="random"), cpu) for _ in range(3))
    return {"ntkmlp_max_rel_diff": worst, "sequential_max_rel_diff": worst_seq,
            "jacobian_s_w512_n64": jac, "structured_s_w512_n64": st}


# 2, 4 -------------------------------------------------------------------------------------------
def bench_time(width: int, device, rounds: int) -> dict:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(V, (BATCH,), generator=g).to(device), torch.randint(V, (BATCH,), generator=g).to(device)
    probes = torch.randperm(V, generator=g)[:PROBES].to(device)
    model = NTKMLP(V, width, V, input_scale="embedding", seed=0, device=device)

    def step():
        with fused_sgd(model, 1e-3):
            mse_loss(model(x), y).backward()

    def ntk():
        empirical_ntk(model, probes, output="random")

    step(), ntk()  # warm up allocator and kernels
    steps, ntks = [], []
    for _ in range(rounds):  # alternated, so that machine noise hits both alike
        steps.append(seconds(step, device))
        ntks.append(seconds(ntk, device))
    paired = [n / s for n, s in zip(ntks, steps)]
    records = len(log_schedule(TABLE1_STEPS, TABLE1_POINTS)) + 1  # + Theta_0, computed on entering the recorder
    t_step, t_ntk = min(steps), min(ntks)
    return {"width": width, "step_s": t_step, "ntk_s": t_ntk, "ratio_of_mins": t_ntk / t_step,
            "ratio_median_paired": statistics.median(paired), "records": records,
            "overhead": records * t_ntk / (TABLE1_STEPS * t_step),
            "overhead_median_paired": records * statistics.median(paired) / TABLE1_STEPS,
            "overhead_with_floor": (records + FLOOR_KERNELS) * t_ntk / (TABLE1_STEPS * t_step)}


# 3 ----------------------------------------------------------------------------------------------
MEMORY_CHILD = """
import json, sys, time, torch
from lazydrift import NTKMLP, fused_sgd, mse_loss
from lazydrift.empirical import empirical_ntk
width, V, n, B = int(sys.argv[1]), 2000, 256, 256
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
def reset_peak():  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
model = NTKMLP(V, width, V, input_scale="embedding", seed=0)
params = sum(p.numel() * p.element_size() for p in model.parameters())
g = torch.Generator().manual_seed(0)
probes = torch.randperm(V, generator=g)[:n]
x, y = torch.randint(V, (B,), generator=g), torch.randint(V, (B,), generator=g)
out = {"params": params}
for what in ("ntk", "step"):
    reset_peak()
    base = status("VmRSS")
    t = time.perf_counter()
    if what == "ntk":
        k = empirical_ntk(model, probes, output="random")
    else:
        with fused_sgd(model, 1e-3):
            mse_loss(model(x), y).backward()
    out[what + "_s"] = time.perf_counter() - t
    out[what + "_base_rss"], out[what + "_peak_rss"] = base, status("VmHWM")
print(json.dumps(out))
"""


def bench_memory(width: int) -> dict:
    text = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(width)], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    r = json.loads(text)
    r["width"] = width
    r["ntk_extra"] = r["ntk_peak_rss"] - r["ntk_base_rss"]
    r["step_extra"] = r["step_peak_rss"] - r["step_base_rss"]
    p = sum(width * k for k in (V, width, V))  # parameters: input, hidden, readout
    r["n_by_p_bytes"] = PROBES * p * 4  # what a float32 Jacobian of all probes would take
    return r


# 5, 6 -------------------------------------------------------------------------------------------
def bench_limit(widths, seeds, vocab: int = 200, train_steps: int = 10) -> list[dict]:
    """Theta_0's distance to Theta_inf, and Theta's relative change after ``train_steps`` SGD steps."""
    rows = []
    probes = torch.arange(vocab)
    for width in widths:
        for seed in seeds:
            model = NTKMLP(vocab, width, vocab, hidden_layers=2, input_scale="embedding", seed=seed)
            tracker = KernelDriftTracker(model, probes, output="random", seed=seed)
            first = tracker.record(0)
            g = torch.Generator().manual_seed(1000 + seed)
            for _ in range(train_steps):
                x = torch.randint(vocab, (BATCH,), generator=g)
                with fused_sgd(model, 1.0):
                    mse_loss(model(x), (x + 1) % vocab).backward()
            last = tracker.record(train_steps)
            rows.append({"width": width, "seed": seed, "limit_distance": first["limit_distance"],
                         "rel_change": last["rel_change"], "cosine": last["cosine"]})
        print(f"  width {width}: done", flush=True)
    return rows


def summarize_limit(rows: list[dict]) -> dict:
    widths = sorted({r["width"] for r in rows})
    out = {"widths": widths}
    for key in ("limit_distance", "rel_change"):
        fit = fit_loglog([r["width"] for r in rows], [r[key] for r in rows])
        means = [float(np.mean([r[key] for r in rows if r["width"] == w])) for w in widths]
        sds = [float(np.std([r[key] for r in rows if r["width"] == w], ddof=1)) for w in widths]
        out[key] = {"mean": means, "sd": sds, **{k: fit[k] for k in ("slope", "ci_low", "ci_high", "n_points")}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small widths, under a minute")
    parser.add_argument("--only", choices=["equality", "time", "memory", "limit"], help="run one section")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    time_width, memory_width = (2048, 4096) if args.quick else (16384, 30000)
    limit_widths = [250, 500, 1000] if args.quick else [250, 500, 1000, 2000, 4000]
    seeds = range(3) if args.quick else range(6)
    want = (lambda s: args.only in (None, s))
    print(f"device {device}, torch threads {torch.get_num_threads()}", flush=True)
    results = {"device": str(device), "threads": torch.get_num_threads()}

    if want("equality"):
        print("1. equality with the Jacobian route", flush=True)
        results["equality"] = bench_equality()
    if want("time"):
        print(f"2. time at width {time_width}", flush=True)
        results["time"] = bench_time(time_width, device, rounds=5)
    if want("memory") and device.type == "cpu":
        print(f"3. memory at width {memory_width} (fresh process)", flush=True)
        results["memory"] = bench_memory(memory_width)
    if want("limit"):
        print(f"5-6. Theta_0 -> Theta_inf and Theta_t - Theta_0, widths {limit_widths}", flush=True)
        rows = bench_limit(limit_widths, seeds)
        results["limit_rows"], results["limit"] = rows, summarize_limit(rows)

    if "equality" in results:
        e = results["equality"]
        print("\n1. structured vs Jacobian route, float64 (target <= 1e-10)")
        print(f"NTKMLP (ids and floats, 1-4 hidden layers, ntk/mup/standard): max rel diff {e['ntkmlp_max_rel_diff']:.2e}")
        print(f"nn.Sequential of nn.Linear with biases:                max rel diff {e['sequential_max_rel_diff']:.2e}")
        print(f"width 512, 64 probes: Jacobian route {e['jacobian_s_w512_n64']:.3f} s, structured "
              f"{e['structured_s_w512_n64']:.4f} s ({e['jacobian_s_w512_n64'] / e['structured_s_w512_n64']:.0f}x)")
    if "time" in results:
        t = results["time"]
        print(f"\n2. one NTK (256 token probes) / one fused training step, width {t['width']} (target <= 1.5)")
        print(f"step {t['step_s']:.3f} s, NTK {t['ntk_s']:.3f} s: ratio of minima {t['ratio_of_mins']:.3f}, "
              f"median of paired ratios {t['ratio_median_paired']:.3f}")
        print(f"\n4. recording overhead, Table-1 run ({TABLE1_STEPS} steps, {t['records']} kernels: one per record "
              f"incl. step 0, and Theta_0; target <= 2%): {100 * t['overhead']:.2f}% from the minima, "
              f"{100 * t['overhead_median_paired']:.2f}% from the median paired ratio; "
              f"with the noise floor's {FLOOR_KERNELS}: {100 * t['overhead_with_floor']:.2f}%")
    if "memory" in results:
        m = results["memory"]
        print(f"\n3. peak RSS added, width {m['width']} (model {m['params']:,} B)")
        print(f"one NTK:           {m['ntk_extra']:,} B ({m['ntk_extra'] / m['params']:.3f} x model), {m['ntk_s']:.1f} s")
        print(f"one training step: {m['step_extra']:,} B ({m['step_extra'] / m['params']:.3f} x model), {m['step_s']:.1f} s")
        print(f"(a float32 n x P Jacobian would be {m['n_by_p_bytes']:,} B)")
    if "limit" in results:
        s = results["limit"]
        print("\n5-6. NTKMLP(200, width, 200, hidden_layers=2, embedding), 200 token probes, output='random'")
        print(f"{'width':>6} {'|T0-Tinf|/|Tinf|':>18} {'sd':>8} {'|T10-T0|/|T0|':>15} {'sd':>9}")
        for i, w in enumerate(s["widths"]):
            print(f"{w:>6} {s['limit_distance']['mean'][i]:>18.4f} {s['limit_distance']['sd'][i]:>8.4f} "
                  f"{s['rel_change']['mean'][i]:>15.5f} {s['rel_change']['sd'][i]:>9.5f}")
        for key, theory in (("limit_distance", "-1/2"), ("rel_change", "-1 (dNTK), bound -1/2")):
            f = s[key]
            print(f"slope of {key}: {f['slope']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] "
                  f"({f['n_points']} points; theory {theory})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
