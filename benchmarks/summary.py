"""One table of every benchmark target and its measured ratio, from the scripts' --json files.

    python benchmarks/summary.py results/bench/train.json results/bench/kernels.json [results/bench/ntk.json
        [results/bench/optimizers.json]]
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


def ntk_rows(ntk: dict) -> list[tuple[str, str, str, str]]:
    """The rows of benchmarks/bench_ntk.py (the empirical NTK; README, "Kernel drift")."""
    out = []
    e = ntk.get("equality")
    if e:
        out.append(("empirical NTK, structured vs Jacobian route (float64)", "<= 1e-10",
                    f"{max(e['ntkmlp_max_rel_diff'], e['sequential_max_rel_diff']):.1e}",
                    f"width 512, 64 probes: Jacobian route {e['jacobian_s_w512_n64']:.2f} s, structured "
                    f"{e['structured_s_w512_n64']:.3f} s"))
    t = ntk.get("time")
    if t:
        out.append((f"one NTK (256 token probes) / training step, width {t['width']}", "<= 1.5",
                    f"{t['ratio_of_mins']:.3f}", f"median of paired ratios {t['ratio_median_paired']:.3f}; "
                    f"step {t['step_s']:.3f} s, NTK {t['ntk_s']:.3f} s"))
        out.append((f"kernel recording overhead, Table-1 run, width {t['width']}", "<= 2%",
                    f"{100 * t['overhead']:.2f}%", f"{t['records']} kernels in 1000 steps "
                    f"({100 * t['overhead_median_paired']:.2f}% from the median paired ratio); "
                    f"{100 * t.get('overhead_with_floor', float('nan')):.2f}% with the noise floor's"))
    m = ntk.get("memory")
    if m:
        out.append((f"NTK peak RSS added, width {m['width']}", "fits beside the model", f"{m['ntk_extra'] / 1e9:.2f} GB",
                    f"model {m['params'] / 1e9:.2f} GB; an n x P Jacobian would be {m['n_by_p_bytes'] / 1e9:.0f} GB"))
    lim = ntk.get("limit")
    if lim:
        for key, label, theory in (("limit_distance", "||Theta_0 - Theta_inf|| / ||Theta_inf||", "-1/2"),
                                   ("rel_change", "||Theta_10 - Theta_0|| / ||Theta_0||", "-1 (bound -1/2)")):
            f = lim[key]
            out.append((f"width exponent of {label}, NTKMLP(200, n, 200)", theory, f"{f['slope']:.3f}",
                        f"95% CI [{f['ci_low']:.3f}, {f['ci_high']:.3f}], widths {lim['widths'][0]}-{lim['widths'][-1]}"))
    return out


def optimizer_rows(opt: dict) -> list[tuple[str, str, str, str]]:
    """The rows of benchmarks/bench_optimizers.py: Adam (and momentum) step over the fused SGD step,
    against the ratio predicted from the bytes the optimizer must move (README, "Performance")."""
    out = []
    for r in opt.get("rows", []):
        out.append((f"Adam step / fused SGD step, width {r['width']} ({opt.get('threads', '?')} threads)",
                    f"<= {r['adam_predicted']:.3f} (bytes)", f"{r['adam_ratio']:.3f}",
                    f"momentum {r['momentum_ratio']:.3f} (bytes {r['momentum_predicted']:.3f}); Adam after a plain "
                    f"backward {r['adam_plain_ratio']:.3f}; SGD step {r['sgd_s']:.3f} s; triad {r['bandwidth_gbs']:.1f} GB/s"))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train = json.loads(Path(argv[0]).read_text()) if len(argv) > 0 and Path(argv[0]).is_file() else {}
    kernels = json.loads(Path(argv[1]).read_text()) if len(argv) > 1 and Path(argv[1]).is_file() else {}
    ntk = json.loads(Path(argv[2]).read_text()) if len(argv) > 2 and Path(argv[2]).is_file() else {}
    opt = json.loads(Path(argv[3]).read_text()) if len(argv) > 3 and Path(argv[3]).is_file() else {}
    table = rows(train, kernels) + ntk_rows(ntk) + optimizer_rows(opt)
    widths = [max(len(r[k]) for r in table + [("target", "goal", "measured", "notes")]) for k in range(4)]
    print(f"\ndevice: {train.get('device') or kernels.get('device') or ntk.get('device') or opt.get('device', '?')}")
    for r in [("target", "goal", "measured", "notes")] + table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
