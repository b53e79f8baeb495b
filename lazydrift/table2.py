"""Table 2 (Appendix D): kernel regression with Theta-bar^(30) on 500 MNIST images.

Per seed: |X| = 500 training images sampled without replacement, on the unit sphere, one-hot
targets; Proposition 3 with the normalized kernel Theta-bar^(L) (Definition 4), f_0 = 0, evaluated
on the 10000 test images.  Reported: accuracy (argmax), macro F1, and the "average error".

The paper does not define "average error" (6.435 (0.075)).  ``error`` below is the mean over test
points of the squared error summed over the 10 outputs; the other candidates are written beside
it (``error_candidates``) so the comparison is explicit:

* ``error_l2``              mean Euclidean norm |f(x) - y|
* ``error_l2_batch_sum``    the sum over ten equal test batches (1000 images each) of the batch
                            mean of |f(x) - y|, i.e. 10 x ``error_l2``: the paper's Euclidean
                            loss (section 5) added up over batches and not divided by their
                            number.  The closest candidate (6.437 (0.049) against 6.435
                            (0.075)), but the paper does not say so: not settled.
* ``error_mse``             squared error averaged over test points and outputs
* ``error_frobenius``       |F - Y|_F over the whole test set
* ``error_gp_ntk``          E|f(x) - y|^2 when f_0 ~ GP(0, Theta-bar) (random init whose output
                            covariance is the normalized NTK), in closed form:
                            error + 10 (1 - k(x) K^-1 k(x)^T)
* ``error_gp_nngp``         the same with f_0 ~ GP(0, rho^(L)), the normalized NNGP of the net
* ``error_label_mse``       kernel regression on the integer label (one output), its MSE
* ``error_argmax_sq``       mean (predicted class - label)^2

Theta-bar = c Theta on the sphere (c = n0 2^(L-1) / L), and K^-1 is unchanged by c, so with
f_0 = 0 and t = inf the predictions with Theta and with Theta-bar are the same (checked per seed:
``theta_vs_theta_bar``); at finite t the choice rescales time by c.

    python -m lazydrift.table2 --out results/table2           # 5 seeds, ~20 s on 2 cores
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lazydrift import mnist
from lazydrift.export import write_csv, write_text
from lazydrift.kernels import relu_kernels
from lazydrift.regression import gradient_descent_mse

__all__ = ["PAPER", "f1_macro", "evaluate_seed", "run_table2", "main"]

PAPER = {"accuracy": 0.874, "f1_macro": 0.870, "error": 6.435, "error_std": 0.075}
ERROR_CANDIDATES = ["error", "error_l2", "error_l2_batch_sum", "error_mse", "error_frobenius", "error_gp_ntk",
                    "error_gp_nngp", "error_label_mse", "error_argmax_sq"]
TEST_BATCHES = 10   # error_l2_batch_sum: ten test batches (1000 images each for MNIST's 10000)


def f1_macro(y_true, y_pred, num_classes: int | None = None) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN) (0 for a class never seen
    nor predicted, as scikit-learn's zero_division=0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = num_classes or int(max(y_true.max(), y_pred.max())) + 1
    f1 = []
    for c in range(k):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def evaluate_seed(seed: int, x_train_all: torch.Tensor, labels_train_all: torch.Tensor, x_test: torch.Tensor,
                  labels_test: torch.Tensor, n_train: int = 500, depth: int = 30,
                  block_size: int | None = None) -> dict:
    """One row of seeds.csv: sample X, fit Proposition 3 with Theta-bar^(depth), score the test set."""
    idx = torch.as_tensor(mnist.sample_indices(len(x_train_all), n_train, seed))
    x, labels = x_train_all[idx], labels_train_all[idx]
    y = mnist.one_hot(labels)
    y_test = mnist.one_hot(labels_test)
    kk = relu_kernels(x, depth=depth, want=("ntk_bar", "ntk", "rho"), block_size=block_size)
    kt = relu_kernels(x_test, x, depth=depth, want=("ntk_bar", "ntk", "rho"), block_size=block_size)
    K, k = kk["ntk_bar"], kt["ntk_bar"]
    predictor = gradient_descent_mse(K, y)                   # one Cholesky factor for every solve below
    pred = predictor.predict(k)                              # Proposition 3 with f_0 = 0, t = inf
    a = predictor.solve(k.T)                                 # K^-1 k(x)^T, (n, m): the GP terms
    resid = pred - y_test
    sq = (resid ** 2).sum(1)
    l2 = sq.sqrt()
    cls = pred.argmax(1)
    # Theta instead of Theta-bar: the same predictor (c cancels)
    pred_theta = gradient_descent_mse(kk["ntk"], y).predict(kt["ntk"])
    # rho^(L) = Sigma^(L) / Sigma^(L)(x, x): the NNGP with unit diagonal (Definition 3)
    R, r = kk["rho"], kt["rho"]
    post_ntk = 1 - (k * a.T).sum(1)
    post_nngp = 1 - 2 * (r * a.T).sum(1) + ((a.T @ R) * a.T).sum(1)
    label_pred = k @ predictor.solve(labels.double())
    lam = torch.linalg.eigvalsh(K)                           # the spectrum only: no eigenvectors
    return {
        "seed": seed, "n_train": n_train, "depth": depth, "n_test": len(x_test),
        "accuracy": float((cls == labels_test).double().mean()),
        "f1_macro": f1_macro(labels_test.numpy(), cls.numpy(), 10),
        "error": float(sq.mean()),
        "error_l2": float(l2.mean()),
        "error_l2_batch_sum": float(sum(batch.mean() for batch in l2.chunk(TEST_BATCHES))),
        "error_mse": float((resid ** 2).mean()),
        "error_frobenius": float(resid.norm()),
        "error_gp_ntk": float((sq + y.shape[1] * post_ntk).mean()),
        "error_gp_nngp": float((sq + y.shape[1] * post_nngp).mean()),
        "error_label_mse": float(((label_pred - labels_test.double()) ** 2).mean()),
        "error_argmax_sq": float(((cls - labels_test).double() ** 2).mean()),
        "lambda_min": float(lam[0]), "lambda_max": float(lam[-1]),
        "theta_vs_theta_bar": float((pred_theta - pred).abs().max()),
    }


def summarize(seeds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for metric in ["accuracy", "f1_macro"] + ERROR_CANDIDATES:
        vals = seeds[metric].to_numpy(dtype=float)
        rows.append({"metric": metric, "mean": vals.mean(), "std": vals.std(ddof=1) if len(vals) > 1 else float("nan"),
                     "n_seeds": len(vals), "paper": PAPER["error"] if metric.startswith("error") else PAPER[metric]})
    return pd.DataFrame(rows, columns=["metric", "mean", "std", "n_seeds", "paper"])


def table_markdown(summary: pd.DataFrame, seeds: pd.DataFrame, info: dict) -> str:
    s = summary.set_index("metric")
    best = min(ERROR_CANDIDATES, key=lambda m: abs(s.loc[m, "mean"] - PAPER["error"]))
    lines = [
        "# Table 2: kernel regression with Theta-bar^(L) on MNIST",
        "",
        f"|X| = {info['n_train']} training images per seed (without replacement), L = {info['depth']}, inputs on the "
        f"unit sphere, one-hot targets, f_0 = 0, t = inf (Proposition 3), {info['n_test']} test images; "
        f"{len(seeds)} seeds ({', '.join(str(v) for v in seeds.seed)}). Mean (s.d. over seeds, ddof=1).",
        "",
        "| Metric | ours | paper |",
        "|---|---|---|",
        f"| Average error (stdev): `error` = mean_x sum_k (f_k(x) - y_k)^2 | {s.loc['error', 'mean']:.4f} "
        f"({s.loc['error', 'std']:.4f}) | {PAPER['error']} ({PAPER['error_std']}) |",
        f"| Accuracy | {s.loc['accuracy', 'mean']:.4f} ({s.loc['accuracy', 'std']:.4f}) | {PAPER['accuracy']} |",
        f"| F1 score (macro) | {s.loc['f1_macro', 'mean']:.4f} ({s.loc['f1_macro', 'std']:.4f}) | {PAPER['f1_macro']} |",
        "",
        "## Candidates for the paper's \"average error\" (paper: 6.435 (0.075))",
        "",
        "| candidate | definition | mean (s.d.) |",
        "|---|---|---|",
    ]
    defs = {
        "error": "mean over test points of the squared error summed over the 10 outputs, f_0 = 0",
        "error_l2": "mean Euclidean norm of f(x) - y, f_0 = 0",
        "error_l2_batch_sum": "sum over 10 equal test batches (1000 images each for all 10000) of the batch mean of |f(x) - y|_2, "
                              "= 10 x `error_l2`",
        "error_mse": "squared error averaged over test points and outputs, f_0 = 0",
        "error_frobenius": "Frobenius norm of F - Y over the whole test set, f_0 = 0",
        "error_gp_ntk": "expected summed squared error with f_0 ~ GP(0, Theta-bar) (closed form)",
        "error_gp_nngp": "expected summed squared error with f_0 ~ GP(0, rho^(L)) (normalized NNGP)",
        "error_label_mse": "MSE of kernel regression on the integer label",
        "error_argmax_sq": "mean (predicted class - label)^2",
    }
    for m in ERROR_CANDIDATES:
        lines.append(f"| `{m}` | {defs[m]} | {s.loc[m, 'mean']:.4f} ({s.loc[m, 'std']:.4f}) |")
    close = abs(s.loc[best, "mean"] - PAPER["error"]) < PAPER["error_std"]
    lines += [
        "",
        f"Closest to 6.435: `{best}`, {s.loc[best, 'mean']:.4f} ({s.loc[best, 'std']:.4f}); "
        + ("inside the paper's s.d." if close else "none of the candidates matches 6.435 (0.075)"),
    ]
    if best == "error_l2_batch_sum":
        lines += [
            "If that is the paper's number, its \"average error\" is the Euclidean loss |f(x) - y|_2 (the loss the paper "
            "writes in section 5) averaged within each of ten test batches and then summed over the batches instead of "
            "averaged: ten times the mean error per image (`error_l2`). The paper does not define the number (its "
            "Appendix D text calls it \"the mean squared error\", which this candidate is not: nothing is squared), "
            "so this is the closest of our candidates, not a settled reading; the table above keeps `error`.",
        ]
    lines += [
        "",
        f"Theta vs Theta-bar: with f_0 = 0 at t = inf the predictions differ by at most "
        f"{seeds.theta_vs_theta_bar.max():.1e} (the scale c = n0 2^(L-1)/L cancels in K(x,X) K^-1).",
        f"Smallest / largest eigenvalue of Theta-bar(X, X): {seeds.lambda_min.mean():.3f} / {seeds.lambda_max.mean():.1f} "
        "(mean over seeds).",
        "",
        f"Run time {info['seconds']:.0f} s; command: `python -m lazydrift.table2 --out {info['out_dir']}`.",
    ]
    return "\n".join(lines) + "\n"


def run_table2(out_dir: str | Path = "results/table2", seeds=range(5), n_train: int = 500, depth: int = 30,
               n_test: int | None = None, root=None, data_dir: str | Path = "data", download: bool = False,
               block_size: int | None = None) -> pd.DataFrame:
    """Run every seed, write seeds.csv, table2.csv and table2.md into ``out_dir``; return the summary."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    x_train, labels_train = mnist.load_mnist_sphere(True, root, data_dir, download, dtype=torch.float64)
    x_test, labels_test = mnist.load_mnist_sphere(False, root, data_dir, download, dtype=torch.float64)
    if n_test is not None:
        x_test, labels_test = x_test[:n_test], labels_test[:n_test]
    rows = [evaluate_seed(s, x_train, labels_train, x_test, labels_test, n_train, depth, block_size) for s in seeds]
    frame = pd.DataFrame(rows)
    summary = summarize(frame)
    write_csv(frame, out / "seeds.csv")
    write_csv(summary, out / "table2.csv")
    info = {"n_train": n_train, "depth": depth, "n_test": len(x_test), "seconds": time.perf_counter() - t0,
            "out_dir": str(out_dir)}
    write_text(table_markdown(summary, frame, info), out / "table2.md")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lazydrift.table2", description="Reproduce Table 2 (Appendix D).")
    p.add_argument("--out", default="results/table2", help="output folder (default results/table2)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--depth", type=int, default=30, help="the paper's L (weight layers)")
    p.add_argument("--n-test", type=int, default=None, help="first N test images (default: all 10000)")
    p.add_argument("--mnist-root", default=None, help="folder with MNIST (default $LAZYDRIFT_MNIST_ROOT, then --data-dir)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true", help="download MNIST with torchvision if missing")
    a = p.parse_args(argv)
    try:
        summary = run_table2(a.out, a.seeds, a.n_train, a.depth, a.n_test, a.mnist_root, a.data_dir, a.download)
    except mnist.DataNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(a.out) / "table2.md").read_text())
    return 0 if math.isfinite(float(summary["mean"].iloc[0])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
