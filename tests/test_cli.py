"""End to end: `lazydrift run` on a tiny recipe writes every file with the right columns and numbers."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from lazydrift.cli import main

from conftest import TABLE_ROUNDING, table_cell, write_tiny

KEYS = ["protocol", "parameterization", "input_scale", "optimizer", "loss", "lr", "seed", "width"]  # in front of every
# combined row, whatever the run


@pytest.mark.slow
def test_run_writes_every_file(tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    assert main(["run", str(write_tiny(tmp_path / "tiny.toml")), "--out", str(out)]) == 0
    assert "| ‖h_t − h_0‖₂ |" in capsys.readouterr().out  # the table is printed
    cols = {
        "summary.csv": KEYS + ["layer", "step", "measure", "mean", "std", "n_probes"],
        "drift.csv": KEYS + ["step", "layer", "probe", "l2", "linf", "ratio", "rel_l2"],
        "neurons.csv": KEYS + ["layer", "step", "neuron", "mean_abs_dev", "max_abs_dev"],
        "gram.csv": KEYS + ["step", "layer", "i", "j", "inner", "cosine", "inner0", "cross", "quadratic"],
        "losses.csv": KEYS + ["step", "train_loss"],
        "probes.csv": ["probe", "token_id", "word", "count"],
    }
    for name, expected in cols.items():
        assert list(pd.read_csv(out / name).columns) == expected, name
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.measure) == {"l2", "linf", "ratio", "rel_l2"} and set(summary.width) == {32, 64}
    assert set(summary.parameterization) == {"ntk"} and set(summary.seed) == {0}
    assert (summary[summary.step == 20].n_probes[summary.measure != "ratio"] == 50).all()
    assert len(pd.read_csv(out / "neurons.csv")) == 32 + 64

    # Table 1's cells recomputed by a second route: mean and sample s.d. over the probes of drift.csv
    table = (out / "table1.md").read_text()
    drift = pd.read_csv(out / "drift.csv")
    for width in (32, 64):
        last = drift[(drift.width == width) & (drift.step == 20)]
        for measure in ("l2", "linf", "ratio"):
            shown = table_cell(table, measure, f"ours, width = {width}")
            assert shown == pytest.approx((last[measure].mean(), last[measure].std(ddof=1)), abs=TABLE_ROUNDING)
    # every markdown table row has as many cells as its header: a bare "|" in a label splits a cell
    # (GitHub renders "max_i |h|" in a row as two cells); escaped "\|" does not
    cells = lambda line: len(re.split(r"(?<!\\)\|", line.strip()))
    tables = [block.splitlines() for block in re.findall(r"(?m)(?:^\|.*\n?)+", table)]  # runs of "|" lines
    assert tables and all(cells(row) == cells(rows[0]) for rows in tables for row in rows), table

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["seed"] == 0 and run["device"] == "cpu"
    assert run["layers"] == ["hidden.1"] and run["fingerprint"] == json.loads((out / "recipe.json").read_text())["fingerprint"]
    assert {"torch", "numpy", "pandas", "gensim"} <= run["versions"].keys()
    assert "git_commit" in run and run["wall_seconds"] > 0
    assert len(run["cells"]) == 2 and all(c["seconds_per_step"] > 0 for c in run["cells"])
    for name in ("gram_summary.csv", "init_theory.csv", "init_theory_summary.csv", "noise_floor.csv"):
        assert (out / name).is_file(), name
    # one-hot words: rho^(1) = 0, so hidden.1's features are predicted at h(h(0)) = h(1/pi) (footnote 5), by hand
    theory = pd.read_csv(out / "init_theory.csv")
    r = 1 / math.pi
    assert set(theory.layer) == {"hidden.1"} and (theory.rho_input == 0).all()
    assert theory.predicted.to_numpy() == pytest.approx((math.sqrt(1 - r * r) + (math.pi - math.acos(r)) * r) / math.pi,
                                                        rel=1e-15)
    # CPU, one process: the untouched copy runs the same computation at every step, so it reads 0
    assert (pd.read_csv(out / "noise_floor.csv").value == 0).all()


def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lazydrift: error: {bad}: [train] lr must be a positive finite number, got -1.0"


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "r.toml"), "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def png_pixels(path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.mark.slow
def test_plot_writes_pngs(tmp_path, one_thread):
    out = tmp_path / "out"
    assert main(["run", str(write_tiny(tmp_path / "tiny.toml")), "--out", str(out), "--quiet"]) == 0
    assert main(["plot", str(out)]) == 0
    for name in ("drift.png", "gram.png", "neurons.png"):
        pixels = png_pixels(out / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300, name  # 3.4 in panels at 150 dpi
        assert pixels[..., :3].std() > 0.05, name  # not blank: axes, lines and labels


def test_plot_a_folder_written_by_a_recorder(tmp_path, capsys):
    """`DriftRecorder.to_csv` (the README's first example) writes no width column and no run.json; the
    last layer is the model's deepest recorded one, "10" after "2" (the strings sort the other way)."""
    import torch
    from torch import nn

    from lazydrift import DriftRecorder
    from lazydrift.plots import _layer_order

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])
    rec = DriftRecorder(model, layers=["2", "10"], probes=torch.randn(5, 4), ntk_probes=5)
    with rec:
        for step in range(3):
            with torch.no_grad():
                model[1].bias.add_(0.1)
            rec.record(step)
    rec.to_csv(tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert _layer_order(tmp_path, summary)[-1] == "10"
    assert main(["plot", str(tmp_path)]) == 0  # was KeyError: 'width'
    for name in ("drift.png", "gram.png", "neurons.png", "kernel.png"):
        assert png_pixels(tmp_path / name)[..., :3].std() > 0.05, name


def test_plot_odd_folders_is_one_line(tmp_path, capsys, monkeypatch, one_thread):
    out = tmp_path / "out"  # a run of 0 steps: nothing moved, only the Gram panel has a point (t = 0)
    assert main(["run", str(write_tiny(tmp_path / "r.toml")), "--out", str(out), "--quiet",
                 "--set", "train.steps=0", "--set", "model.widths=[16]"]) == 0
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0  # was ValueError: Number of rows must be a positive integer
    printed = capsys.readouterr().out
    assert "wrote" in printed and "skipped drift.png: no step after 0" in printed
    assert (out / "gram.png").is_file() and not (out / "drift.png").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "summary.csv").write_text("")
    assert main(["plot", str(empty)]) == 2  # was pandas' EmptyDataError traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.csv cannot be read" in err

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("lazydrift.plots.write_figure", read_only)  # root ignores a folder's permission bits
    assert main(["plot", str(out)]) == 2  # was a PermissionError traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the figures there (Permission denied)" in err


def test_kernel_figure_labels_an_axis_within_one_decade(tmp_path, monkeypatch):
    """Changes between 0.2 and 0.7 have no power of ten on the axis: its minor ticks carry the only
    labels (they were all hidden, leaving the left panel without a number)."""
    from lazydrift import plots

    figures = []
    monkeypatch.setattr(plots, "write_figure", lambda fig, path, **kw: figures.append(fig) or path)
    ntk = pd.DataFrame({"parameterization": "ntk", "seed": 0, "width": 16, "step": [0, 1, 2, 4, 9],
                        "rel_change": [0.0, 0.2, 0.35, 0.5, 0.7]})
    plots.plot_kernel(ntk, tmp_path / "kernel.png")
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
                  if t.get_visible() and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
        assert any(labels), ax.get_title()


def test_an_interrupted_plot_or_merge_does_not_ask_for_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lazydrift.plots.plot_results", interrupted)
    monkeypatch.setattr("lazydrift.shard.merge", interrupted)
    for command in ("plot", "merge"):
        assert main([command, str(tmp_path)]) == 130
        assert capsys.readouterr().err == "lazydrift: error: interrupted\n"  # was "...; continue with --resume"
