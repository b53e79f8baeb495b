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
        ratio = r.get("ratio", math.nan)
        out.append((f"closed-form NTK n={r['n']} L={r['depth']}: neural-tangents time / ours",
                    ">= 5 at L=30", "n/a" if math.isnan(ratio) else f"{ratio:.2f}",
                    "neural-tangents not installed" if math.isnan(ratio)
                    else f"max rel. difference {r['max_rel_err']:.1e}"))
    big = kernels.get("big", {})
    if "seconds" in big:
        out.append((f"closed-form NTK n={big['n']} L={big['depth']}: peak GiB", "<= 8", f"{big['peak_rss_gib']:.2f}",
                    f"{big['seconds']:.1f} s"))
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
