"""Benchmark the closed-form ReLU kernel (lazydrift.kernels.relu_ntk) against the Gram matrix.

    .venv/bin/python benchmarks/bench_kernels.py            # n = 2000 (L = 3, 30, 300), n = 20000
    .venv/bin/python benchmarks/bench_kernels.py --quick    # n = 500, n = 4000

Every kernel needs the Gram matrix X X^T first, so that is the floor the targets are stated
against.  For each depth L the same float64 inputs (Gaussian, 784 dims) go, alternately and
``--repeats`` times, to

* ``x @ x.T`` (torch's multithreaded GEMM, the floor),
* ``relu_ntk(x, depth=L)``: the tabulated functions of the angle (the default path), and
* ``relu_ntk(x, depth=L, method="sphere")``: the layer recursion on the cosines it replaced
  (one arccos, one sqrt and four multiply-adds per entry and layer), kept as the reference;

the best time of each is reported with their ratios (the machine is shared; ratios of times
taken side by side are the numbers to read), and the two kernels are compared entry by entry.
The table for a depth is built once per process (its build time is reported apart).  Then:

* all depths at once: ``relu_ntk(x, depth=[1, ..., L])`` against one depth and the Gram matrix;
* n = 20000, L = 30 and its Gram matrix, each in a fresh child process reporting wall time and
  peak resident memory (VmHWM), alternately;
* neural-tangents' jitted ``kernel_fn`` of ``stax.serial(*[Dense(512, W_std=1, b_std=None,
  parameterization="ntk"), Relu()] * (L - 1), Dense(1, ...))`` with x64, in a separate
  interpreter (``.venv-nt``, see ``--nt-python``) after a warm-up call that compiles it, when it
  is installed.  Without it the neural-tangents ratio is *inferred*: README's earlier side-by-side
  measurement had the recursion 5.5x faster than neural-tangents at n = 2000, L = 30, so
  5.5 x (recursion time / table time) measured here estimates table vs neural-tangents.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NT_PYTHON = ROOT / ".venv-nt" / "bin" / "python"
# README, "Performance and benchmarks" before the table path: relu_ntk's recursion took 1/5.5 of
# neural-tangents' jitted kernel_fn at n = 2000, L = 30, measured side by side on 2 cores.
RECURSION_OVER_NT_AT_30 = 1 / 5.5

NT_SCRIPT = r"""
import json, sys, time
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from neural_tangents import stax

x_path, depth, repeats, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
x = np.load(x_path)
layers = []
for _ in range(depth - 1):
    layers += [stax.Dense(512, W_std=1.0, b_std=None, parameterization="ntk"), stax.Relu()]
layers += [stax.Dense(1, W_std=1.0, b_std=None, parameterization="ntk")]
_, _, kernel_fn = stax.serial(*layers)
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
t0 = time.perf_counter()
kernel_fn(x, None, get="ntk").block_until_ready()   # warm-up: compiles
compile_s = time.perf_counter() - t0
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    k = kernel_fn(x, None, get="ntk").block_until_ready()
    times.append(time.perf_counter() - t0)
np.save(out_path, np.asarray(k))
print(json.dumps({"times": times, "compile_s": compile_s, "jax": jax.__version__}))
"""


def run_nt(nt_python: Path, x_path: Path, depth: int, repeats: int, out_path: Path) -> dict | None:
    if not nt_python.exists():
        return None
    proc = subprocess.run([str(nt_python), "-c", NT_SCRIPT, str(x_path), str(depth), str(repeats), str(out_path)],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode != 0:
        print(f"neural-tangents failed at depth {depth}:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _offdiag(a: np.ndarray) -> np.ndarray:
    return a[~np.eye(*a.shape, dtype=bool)]


def compare_depth(x, depth: int, repeats: int, recursion: bool) -> dict:
    """Gram, table and (optionally) recursion alternately; best times, ratios, agreement."""
    import torch
    from lazydrift.kernel_table import depth_table
    from lazydrift.kernels import relu_ntk
    build_s = 0.0
    if depth >= 3:
        build_s, _ = timed(lambda: depth_table((depth,)))
    relu_ntk(x[:64], depth=depth)                     # warm-up (allocator, thread pool)
    times = {"gram": [], "table": [], "recursion": []}
    table = ref = None
    for r in range(repeats):
        t, _ = timed(lambda: x @ x.T)
        times["gram"].append(t)
        t, table = timed(lambda: relu_ntk(x, depth=depth))
        times["table"].append(t)
        if recursion and (r == 0 or depth <= 30):     # the deep recursion is slow: time it once
            t, ref = timed(lambda: relu_ntk(x, depth=depth, method="sphere"))
            times["recursion"].append(t)
    best = {k: min(v) if v else float("nan") for k, v in times.items()}
    row = {"n": x.shape[0], "depth": depth, "gram_s": best["gram"], "table_s": best["table"],
           "recursion_s": best["recursion"], "table_build_s": build_s,
           "table_over_gram": best["table"] / best["gram"],
           "recursion_over_gram": best["recursion"] / best["gram"],
           "recursion_over_table": best["recursion"] / best["table"],
           "threads": torch.get_num_threads()}
    n = x.shape[0]
    norms2 = (x * x).sum(1)
    exact_diag = depth * norms2 / (x.shape[1] * 2.0 ** (depth - 1))   # Proposition 1
    row["diag_max_rel_err"] = float(((table.diagonal() - exact_diag).abs() / exact_diag).max())
    if ref is not None:
        t, r = table.numpy(), ref.numpy()
        row["offdiag_max_rel_diff"] = float((_offdiag(np.abs(t - r)) / _offdiag(np.abs(r))).max())
    row["n_entries"] = n * n
    return row


def stack_row(x, depth: int, repeats: int) -> dict:
    """All depths 1..L at once against depth L alone and the Gram matrix."""
    from lazydrift.kernel_table import depth_table
    from lazydrift.kernels import relu_ntk
    depths = list(range(1, depth + 1))
    depth_table(tuple(d for d in depths if d >= 3))
    relu_ntk(x[:64], depth=depths)
    gram, one, stack = [], [], []
    for _ in range(repeats):
        gram.append(timed(lambda: x @ x.T)[0])
        one.append(timed(lambda: relu_ntk(x, depth=depth))[0])
        t, k = timed(lambda: relu_ntk(x, depth=depths))
        stack.append(t)
        del k
    g, o, s = min(gram), min(one), min(stack)
    return {"n": x.shape[0], "depths": f"1..{depth}", "n_depths": depth, "gram_s": g, "one_depth_s": o,
            "stack_s": s, "stack_over_gram": s / g, "per_depth_over_gram": s / depth / g,
            "stack_over_one_depth": s / o}


def big_child(n: int, depth: int, seed: int) -> None:
    """Run in a fresh process: time relu_ntk (depth > 0) or the Gram matrix (depth 0) on n points
    and report peak RSS."""
    import torch
    from lazydrift.kernels import relu_ntk
    x = torch.as_tensor(np.random.default_rng(seed).standard_normal((n, 784)))
    if depth > 0:
        relu_ntk(x[:64], depth=depth)                 # the table is built before the clock starts
    t0 = time.perf_counter()
    k = relu_ntk(x, depth=depth) if depth > 0 else x @ x.T
    wall = time.perf_counter() - t0
    # VmHWM is this process's own peak (KiB); ru_maxrss would include the parent's size at fork.
    peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    ok = bool(torch.isfinite(k).all()) and bool((k == k.T).all())
    print(json.dumps({"n": n, "depth": depth, "seconds": wall, "peak_rss_gib": peak_kib / 2 ** 20,
                      "output_gib": k.numel() * k.element_size() / 2 ** 30, "finite_and_symmetric": ok,
                      "threads": torch.get_num_threads()}))


def big_rows(n: int, depth: int, seed: int, repeats: int) -> dict:
    runs = {"gram": [], "kernel": []}
    for _ in range(repeats):
        for name, d in (("gram", 0), ("kernel", depth)):
            proc = subprocess.run([sys.executable, __file__, "--big-child", str(n), str(d), str(seed)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                return {"error": proc.stderr[-500:]}
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    g = min(runs["gram"], key=lambda r: r["seconds"])
    k = min(runs["kernel"], key=lambda r: r["seconds"])
    return {"n": n, "depth": depth, "seconds": k["seconds"], "gram_seconds": g["seconds"],
            "over_gram": k["seconds"] / g["seconds"], "peak_rss_gib": k["peak_rss_gib"],
            "gram_peak_rss_gib": g["peak_rss_gib"], "output_gib": k["output_gib"],
            "finite_and_symmetric": k["finite_and_symmetric"], "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n = 500 and n = 4000 instead of 2000 and 20000")
    p.add_argument("--n", type=int, default=None, help="points for the comparison (default 2000, quick 500)")
    p.add_argument("--depths", type=int, nargs="+", default=[3, 30, 300])
    p.add_argument("--big-n", type=int, default=None, help="points for the memory run (default 20000, quick 4000)")
    p.add_argument("--big-depth", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nt-python", type=Path, default=DEFAULT_NT_PYTHON,
                   help="python of a venv with neural-tangents (default .venv-nt/bin/python)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--big-child", nargs=3, type=int, metavar=("N", "DEPTH", "SEED"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.big_child:
        big_child(*a.big_child)
        return 0
    n = a.n or (500 if a.quick else 2000)
    big_n = a.big_n or (4000 if a.quick else 20000)

    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    x_np = np.random.default_rng(a.seed).standard_normal((n, 784))
    x = torch.as_tensor(x_np)
    rows, nt_rows = [], []
    for depth in a.depths:
        row = compare_depth(x, depth, a.repeats, recursion=True)
        rows.append(row)
        print(json.dumps(row))
    stack = stack_row(x, 30 if 30 in a.depths or not a.depths else max(a.depths), max(2, a.repeats // 2))
    print(json.dumps(stack))

    with tempfile.TemporaryDirectory() as tmp:
        x_path = Path(tmp) / "x.npy"
        np.save(x_path, x_np)
        for depth in [d for d in a.depths if d <= 30]:
            nt_out = Path(tmp) / f"nt_{depth}.npy"
            nt = run_nt(a.nt_python, x_path, depth, a.repeats, nt_out)
            if nt is None:
                continue
            from lazydrift.kernels import relu_ntk
            ours_t = min(timed(lambda: relu_ntk(x, depth=depth))[0] for _ in range(a.repeats))
            ref, ours = np.load(nt_out), relu_ntk(x, depth=depth).numpy()
            nt_rows.append({"n": n, "depth": depth, "nt_s": float(np.median(nt["times"])), "table_s": ours_t,
                            "nt_over_table": float(np.median(nt["times"])) / ours_t, "nt_compile_s": nt["compile_s"],
                            "max_rel_err": float(np.abs(ours - ref).max() / np.abs(ref).max()),
                            "offdiag_rel_err": float(_offdiag(np.abs(ours - ref)).max() / np.abs(ref).max())})
            print(json.dumps(nt_rows[-1]))
    inferred = [{"n": r["n"], "depth": r["depth"],
                 "nt_over_table_inferred": r["recursion_over_table"] / RECURSION_OVER_NT_AT_30}
                for r in rows if r["depth"] == 30]

    big = big_rows(big_n, a.big_depth, a.seed, 2)
    print(json.dumps({k: v for k, v in big.items() if k != "runs"}))

    print(f"\n{'n':>6} {'L':>4} {'Gram (s)':>9} {'table (s)':>9} {'recursion (s)':>13} {'table/Gram':>10} "
          f"{'recursion/Gram':>14} {'rec/table':>9} {'max rel diff':>12} {'diag err':>9} {'build (s)':>9}")
    for r in rows:
        print(f"{r['n']:>6} {r['depth']:>4} {r['gram_s']:>9.3f} {r['table_s']:>9.3f} {r['recursion_s']:>13.3f} "
              f"{r['table_over_gram']:>10.2f} {r['recursion_over_gram']:>14.2f} {r['recursion_over_table']:>9.1f} "
              f"{r.get('offdiag_max_rel_diff', float('nan')):>12.1e} {r['diag_max_rel_err']:>9.1e} "
              f"{r['table_build_s']:>9.2f}")
    print("max rel diff: off-diagonal, table against the recursion (which itself drifts ~1e-11 by L = 1000);"
          "\ndiag err: against Proposition 1, L |x|^2 / (n0 2^(L-1)).")
    print(f"all depths {stack['depths']} at once: {stack['stack_s']:.3f} s = {stack['stack_over_gram']:.2f} Gram "
          f"({stack['per_depth_over_gram']:.3f} Gram per depth; one depth alone {stack['one_depth_s']:.3f} s)")
    for r in nt_rows:
        print(f"neural-tangents n={r['n']} L={r['depth']}: {r['nt_s']:.3f} s, {r['nt_over_table']:.1f}x the table's time; "
              f"max rel err {r['max_rel_err']:.1e} (off-diagonal {r['offdiag_rel_err']:.1e})")
    for r in inferred:
        print(f"neural-tangents n={r['n']} L={r['depth']}: not measured here; INFERRED "
              f"{r['nt_over_table_inferred']:.0f}x the table's time (5.5 x recursion/table)")
    if "seconds" in big:
        print(f"n={big['n']} L={big['depth']}: {big['seconds']:.1f} s = {big['over_gram']:.2f} x its Gram "
              f"({big['gram_seconds']:.1f} s); peak RSS {big['peak_rss_gib']:.2f} GiB (Gram alone "
              f"{big['gram_peak_rss_gib']:.2f}; output {big['output_gib']:.2f}); symmetric+finite: "
              f"{big['finite_and_symmetric']}")
    else:
        print(f"big run failed: {big}")
    if a.json:
        a.json.write_text(json.dumps({"compare": rows, "stack": stack, "nt": nt_rows, "nt_inferred": inferred,
                                      "big": big, "load_average": os.getloadavg()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
