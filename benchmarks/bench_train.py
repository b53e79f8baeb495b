"""Training-step benchmarks: how close a step runs to the machine's GEMM floor, peak memory,
and the recorder's overhead.  Everything is measured side by side in one run and printed as
ratios, because these machines are noisy.

    python benchmarks/bench_train.py            # widths 2000, 10000, 30000 (CPU: ~8 minutes)
    python benchmarks/bench_train.py --quick    # widths 500, 2000 (about a minute)

1. step / GEMM floor: V = 2000 one-hot inputs and outputs, batch 256, plain SGD, MSE.  The floor
   is the time of the step's six matrix products (forward, grad-input, grad-weight of the hidden
   layer and of the readout), each run alone on the same shapes in the same process; our fused
   step (SGD applied inside backward) and a plain autograd + torch.optim.SGD step are timed
   alternately against it.
2. memory: peak resident memory of a training run (fresh process, recorder attached) divided by
   the bytes of the parameters.
3. recorder overhead: a training step and a recording (probe pass over 512 probes, statistics,
   64-probe Gram) timed alternately at each width; the Table-1 run's ratio follows from
   recipes/table1.toml's steps and schedule: 1 + (records + noise-floor passes) x record / (steps x step).
   The full run also times the whole Table-1 loop with and without the recorder end to end
   (width 500 on CPU, 10000 on CUDA).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time

import torch

from lazydrift import NTKMLP, DriftRecorder, fused_sgd, log_schedule, mse_loss
from lazydrift.experiment import resolve_device

V, BATCH = 2000, 256


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_floor(width: int, device, repeat: int) -> tuple[float, float]:
    """Seconds of the step's six GEMMs on their own, and their FLOPs."""
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    w_hid, w_out = r(width, width), r(V, width)
    x, gh, go = r(BATCH, width), r(BATCH, width), r(BATCH, V)

    def six():
        torch.mm(x, w_hid.t())            # hidden forward
        torch.mm(x, w_out.t())            # readout forward
        torch.mm(go, w_out)               # readout grad-input
        w_out.addmm_(go.t(), x, alpha=1e-3)  # readout grad-weight, accumulated in place
        torch.mm(gh, w_hid)               # hidden grad-input
        w_hid.addmm_(gh.t(), x, alpha=1e-3)  # hidden grad-weight

    flops = 2 * BATCH * 3 * (width * width + width * V)
    return timed(six, device, repeat), flops


def step_fns(width: int, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(V, (BATCH,), generator=g).to(device)
    y = torch.randint(V, (BATCH,), generator=g).to(device)
    fused_model = NTKMLP(V, width, V, input_scale="embedding", seed=0, device=device)

    def fused():
        with fused_sgd(fused_model, 1e-3):
            mse_loss(fused_model(x), y).backward()

    plain_model = NTKMLP(V, width, V, input_scale="embedding", seed=0, device=device)
    opt = torch.optim.SGD(plain_model.param_groups(1e-3), lr=1e-3)

    def plain():
        opt.zero_grad(set_to_none=True)
        mse_loss(plain_model(x), y).backward()
        opt.step()

    return fused, plain


def bench_steps(widths, device, repeat) -> list[dict]:
    rows = []
    for width in widths:
        fused, plain = step_fns(width, device)
        floors, fus, pla = [], [], []
        big = device.type == "cpu" and width >= 20000  # ten seconds per call: fewer repeats suffice
        for _ in range(2 if big else 3):  # alternate so that machine noise hits all three alike
            r = 1 if big else repeat
            floor, flops = gemm_floor(width, device, r)
            floors.append(floor)
            fus.append(timed(fused, device, r))
            pla.append(timed(plain, device, r))
        floor = min(floors)
        rows.append({"width": width, "gemm_tflops": flops / floor / 1e12, "floor_s": floor,
                     "fused_s": min(fus), "plain_s": min(pla),
                     "fused_ratio": min(fus) / floor, "plain_ratio": min(pla) / floor})
        print(f"  width {width}: fused/floor {min(fus) / floor:.3f}", flush=True)
        del fused, plain
    return rows


MEMORY_CHILD = """
import sys, torch
from lazydrift import NTKMLP, DriftRecorder, fused_sgd, mse_loss
width, fused, device = int(sys.argv[1]), sys.argv[2] == "fused", torch.device(sys.argv[3])
V, B = 2000, 256
model = NTKMLP(V, width, V, input_scale="embedding", seed=0, device=device)
params = sum(p.numel() * p.element_size() for p in model.parameters())
g = torch.Generator().manual_seed(0)
opt = None if fused else torch.optim.SGD(model.param_groups(1e-3), lr=1e-3)
with DriftRecorder(model, probes=torch.arange(512), pairs=None) as rec:
    for step in range(1, 3):
        x, y = torch.randint(V, (B,), generator=g).to(device), torch.randint(V, (B,), generator=g).to(device)
        if fused:
            with fused_sgd(model, 1e-3):
                mse_loss(model(x), y).backward()
        else:
            opt.zero_grad(set_to_none=True); mse_loss(model(x), y).backward(); opt.step()
        rec.record(step)
# VmHWM is this process's own peak; ru_maxrss would include the parent's size at fork.
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
print(peak, params, gpu)
"""


def bench_memory(width: int, device) -> list[dict]:
    rows = []
    for mode in ("fused", "plain"):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(width), mode, str(device)],
                             capture_output=True, text=True, check=True).stdout.split()
        peak, params, gpu = map(int, out)
        rows.append({"width": width, "mode": mode, "peak_rss_gb": peak / 2**30, "param_gb": params / 2**30,
                     "rss_ratio": peak / params, "gpu_ratio": gpu / params if gpu else None})
    return rows


def bench_recorder_parts(width: int, device, repeat: int) -> dict:
    """Seconds of one training step and of one recording (probe pass + statistics), alternated."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(V, (BATCH,), generator=g).to(device), torch.randint(V, (BATCH,), generator=g).to(device)
    model = NTKMLP(V, width, V, input_scale="embedding", seed=0, device=device)
    pairs = [(i, j) for i in range(64) for j in range(i + 1, 64)]
    rec = DriftRecorder(model, layers=["hidden.0", "hidden.1"], probes=torch.arange(512), pairs=pairs)

    def step():
        with fused_sgd(model, 1e-3):
            mse_loss(model(x), y).backward()

    steps, records = [], []
    recorded = itertools.count(1)  # each timed call records a new step (a repeated step is refused)
    with rec:
        for _ in range(2):
            steps.append(timed(step, device, repeat))
            records.append(timed(lambda: rec.record(next(recorded)), device, repeat))
    return {"width": width, "step_s": min(steps), "record_s": min(records)}


def bench_recorder_loop(width: int, steps: int, points: int, device) -> dict:
    """The Table-1 loop (its steps and schedule, 512 probes, 64 Gram probes) with vs without recorder."""
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(V, (BATCH,), generator=g).to(device), torch.randint(V, (BATCH,), generator=g).to(device))
               for _ in range(16)]
    schedule = set(log_schedule(steps, points))
    pairs = [(i, j) for i in range(64) for j in range(i + 1, 64)]
    model = NTKMLP(V, width, V, input_scale="embedding", seed=0, device=device)

    def loop(with_recorder: bool) -> float:
        sync(device)
        t = time.perf_counter()
        rec = DriftRecorder(model, layers=["hidden.0", "hidden.1"], probes=torch.arange(512), pairs=pairs) \
            if with_recorder else None
        if rec:
            rec.__enter__()
        for step in range(1, steps + 1):
            x, y = batches[step % len(batches)]
            with fused_sgd(model, 1e-3):
                mse_loss(model(x), y).backward()
            if rec and step in schedule:
                rec.record(step)
        if rec:
            rec.__exit__(None, None, None)
        sync(device)
        return time.perf_counter() - t

    for x, y in batches[:4]:  # warm up allocator and kernels before timing
        with fused_sgd(model, 1e-3):
            mse_loss(model(x), y).backward()
    without, with_ = [], []
    for _ in range(3):  # alternated, so that machine noise hits both alike
        without.append(loop(False))
        with_.append(loop(True))
    return {"width": width, "steps": steps, "records": len(schedule), "without_s": min(without),
            "with_s": min(with_), "overhead_ratio": min(with_) / min(without)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small widths, about a minute")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    widths = [500, 2000] if args.quick else [2000, 10000, 30000]
    repeat = 3 if device.type == "cpu" else 10
    print(f"device {device}, torch threads {torch.get_num_threads()}, widths {widths}", flush=True)

    print("1. step vs GEMM floor", flush=True)
    steps = bench_steps(widths, device, repeat)
    print("2. memory", flush=True)
    memory = bench_memory(widths[-1], device)
    print("3. recorder", flush=True)
    from lazydrift.recipes import load_recipe
    table1 = load_recipe("recipes/table1.toml")
    t1_steps, t1_records = table1.train.steps, len(log_schedule(table1.train.steps, table1.record.points))
    floor_passes = 5  # the noise floor's probe passes (lazydrift.cell.record_noise_floor)
    parts = [bench_recorder_parts(widths[-1], device, 1 if device.type == "cpu" and widths[-1] >= 10000 else repeat)]
    loop = None if args.quick else bench_recorder_loop(500 if device.type == "cpu" else 10000,
                                                       t1_steps, table1.record.points, device)
    print("\n1. training step vs GEMM floor (target <= 1.15)")
    print(f"{'width':>7} {'GEMM TFLOP/s':>13} {'floor s':>9} {'fused s':>9} {'fused/floor':>12} {'plain/floor':>12}")
    for r in steps:
        print(f"{r['width']:>7} {r['gemm_tflops']:>13.3f} {r['floor_s']:>9.4f} {r['fused_s']:>9.4f} "
              f"{r['fused_ratio']:>12.3f} {r['plain_ratio']:>12.3f}")
    print("\n2. peak memory / parameter bytes (target <= 1.3)")
    for r in memory:
        extra = f", GPU peak/params {r['gpu_ratio']:.3f}" if r["gpu_ratio"] else ""
        print(f"width {r['width']} {r['mode']:>5}: peak RSS {r['peak_rss_gb']:.2f} GiB, params {r['param_gb']:.2f} GiB, "
              f"ratio {r['rss_ratio']:.3f}{extra}")
    print(f"\n3. recorder overhead (target <= 1.02): recipes/table1.toml records {t1_records} steps of {t1_steps} "
          f"(+{floor_passes} noise-floor passes)")
    for r in parts:
        r["overhead_ratio"] = 1 + (t1_records + floor_passes) * r["record_s"] / (t1_steps * r["step_s"])
        print(f"width {r['width']:>6}: step {r['step_s']:.4f} s, record {r['record_s']:.4f} s -> "
              f"Table-1 run with / without recorder = {r['overhead_ratio']:.4f}")
    if loop:
        print(f"end to end, width {loop['width']}, {loop['steps']} steps, {loop['records']} records: "
              f"{loop['without_s']:.2f} s without, {loop['with_s']:.2f} s with, ratio {loop['overhead_ratio']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "steps": steps, "memory": memory, "recorder_parts": parts,
                       "recorder_loop": loop}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
