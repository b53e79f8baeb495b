"""End to end: `lazydrift run` on a tiny recipe writes every file with the right columns."""

import json
import subprocess
import sys

import pandas as pd

from lazydrift.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lazydrift", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_run_writes_every_file(tiny_recipe, tmp_path):
    out = tmp_path / "out"
    p = run_cli("run", tiny_recipe(steps=12), "--out", out)
    assert p.returncode == 0, p.stderr
    assert "| ‖h_t − h_0‖₂ |" in p.stdout  # the table is printed
    cols = {
        "summary.csv": ["width", "layer", "step", "measure", "mean", "std", "n_probes"],
        "drift.csv": ["width", "step", "layer", "probe", "l2", "linf", "ratio"],
        "neurons.csv": ["width", "layer", "step", "neuron", "mean_abs_dev", "max_abs_dev"],
        "gram.csv": ["width", "step", "layer", "i", "j", "inner", "cosine", "inner0", "cross", "quadratic"],
        "losses.csv": ["width", "step", "loss"],
        "probes.csv": ["probe", "token_id", "word", "count"],
    }
    for name, expected in cols.items():
        assert list(pd.read_csv(out / name).columns) == expected, name
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.measure) == {"l2", "linf", "ratio"} and set(summary.width) == {32, 64}
    assert (summary[summary.step == 12].n_probes[summary.measure != "ratio"] == 24).all()
    neurons = pd.read_csv(out / "neurons.csv")
    assert len(neurons) == 32 + 64
    table = (out / "table1.md").read_text()
    assert "4.8989 (1.0250)" in table and "ours, width = 64" in table
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["seed"] == 0 and run["device"] == "cpu"
    assert {"torch", "numpy", "pandas", "gensim"} <= run["versions"].keys()
    assert "git_commit" in run and run["wall_seconds"] > 0
    assert len(run["cells"]) == 2 and all(c["seconds_per_step"] > 0 for c in run["cells"])
    for name in ("gram_summary.csv", "init_theory.csv", "init_theory_summary.csv", "noise_floor.csv"):
        assert (out / name).is_file(), name
    assert (pd.read_csv(out / "noise_floor.csv").value == 0).all()  # CPU: an untouched copy never moves


def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lazydrift: error: {bad}: [train] lr must be a positive finite number, got -1.0"


def test_plot_writes_pngs(tiny_recipe, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(tiny_recipe(steps=6)), "--out", str(out), "--quiet"]) == 0
    assert main(["plot", str(out)]) == 0
    for name in ("drift.png", "gram.png", "neurons.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
