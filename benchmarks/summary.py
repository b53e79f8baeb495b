"""One table of every benchmark target and its measured ratio, from the scripts' --json files.

    python benchmarks/summary.py results/bench/train.json results/bench/kernels.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def rows(train: dict, kernels: dict) -> list[tuple[str, str, str, str]]:
    out = []
    for r in train.get("steps", []):
        out.append((f"training step / GEMM floor, width {r['width']}", "<= 1.15", f"{r['fused_ratio']:.3f}",
                    f"plain autograd {r['plain_ratio']:.3f}; GEMM {r['gemm_tflops']:.3f} TFLOP/s"))
    for r in train.get("memory", []):
        if r["mode"] == "fused":
            extra = f"; GPU peak/params {r['gpu_ratio']:.3f}" if r.get("gpu_ratio") else ""
            out.append((f"peak RSS / parameter bytes, width {r['width']}", "<= 1.3", f"{r['rss_ratio']:.3f}",
                        f"{r['peak_rss_gb']:.2f} GiB for {r['param_gb']:.2f} GiB{extra}"))
    for r in train.get("recorder_parts", []):
        out.append((f"recorder overhead, Table-1 run, width {r['width']}", "<= 1.02", f"{r['overhead_ratio']:.4f}",
                    f"step {r['step_s']:.3f} s, recording {r['record_s']:.3f} s"))
    loop = train.get("recorder_loop")
    if loop:
        out.append((f"recorder overhead end to end, width {loop['width']}", "<= 1.02", f"{loop['overhead_ratio']:.4f}",
                    f"{loop['steps']} steps, {loop['records']} recordings"))
    for r in kernels.get("compare", []):
        out.append((f"closed-form NTK n={r['n']} L={r['depth']}: time / Gram X X^T", "<= 1.5 (L=30, 300)",
                    f"{r['table_over_gram']:.2f}",
                    f"recursion it replaced {r['recursion_over_gram']:.1f}x Gram; max rel. diff "
                    f"{r.get('offdiag_max_rel_diff', math.nan):.1e}; diagonal {r['diag_max_rel_err']:.1e}"))
    stack = kernels.get("stack")
    if stack:
        out.append((f"all depths {stack['depths']} at once, n={stack['n']}: time per depth / one depth alone",
                    "~1", f"{stack['stack_s'] / stack['n_depths'] / stack['one_depth_s']:.2f}",
                    f"{stack['stack_over_gram']:.1f}x Gram in all"))
    big = kernels.get("big", {})
    if "seconds" in big:
        out.append((f"closed-form NTK n={big['n']} L={big['depth']}: time / Gram X X^T", "<= 1.5",
                    f"{big['over_gram']:.2f}",
                    f"{big['seconds']:.1f} s; peak {big['peak_rss_gib']:.2f} GiB (output {big['output_gib']:.2f}, "
                    f"Gram alone {big['gram_peak_rss_gib']:.2f})"))
    for r in kernels.get("nt", []):
        out.append((f"neural-tangents jitted kernel_fn time / ours, n={r['n']} L={r['depth']}", ">= 20 at L=30",
                    f"{r['nt_over_table']:.1f}", f"max rel. difference {r['max_rel_err']:.1e}"))
    if not kernels.get("nt"):
        for r in kernels.get("nt_inferred", []):
            out.append((f"neural-tangents jitted kernel_fn time / ours, n={r['n']} L={r['depth']}", ">= 20 at L=30",
                        f"{r['nt_over_table_inferred']:.0f} (inferred)",
                        "neural-tangents not installed: 5.5 x (recursion / table), 5.5 = README's earlier measurement"))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train = json.loads(Path(argv[0]).read_text()) if len(argv) > 0 and Path(argv[0]).is_file() else {}
    kernels = json.loads(Path(argv[1]).read_text()) if len(argv) > 1 and Path(argv[1]).is_file() else {}
    table = rows(train, kernels)
    widths = [max(len(r[k]) for r in table + [("target", "goal", "measured", "notes")]) for k in range(4)]
    print(f"\ndevice: {train.get('device', '?')}")
    for r in [("target", "goal", "measured", "notes")] + table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
