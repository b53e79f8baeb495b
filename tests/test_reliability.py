"""Faults: a run killed with SIGKILL resumes to the same CSVs; divergence stops cleanly;
the same seed gives the same files; random recipes never crash the loader."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazydrift.recipes import RecipeError, recipe_from_dict

CSVS = ("summary.csv", "drift.csv", "neurons.csv", "gram.csv", "losses.csv", "init_theory.csv", "noise_floor.csv")


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lazydrift", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kw)


def same_csvs(a: Path, b: Path) -> None:
    for name in CSVS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_sigkill_then_resume_equals_uninterrupted_run(tiny_recipe, tmp_path):
    recipe = tiny_recipe(steps=1500, every=25)
    reference = tmp_path / "reference"
    assert run_cli("run", recipe, "--out", reference, "--quiet").returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lazydrift", "run", str(recipe), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "cells" / "ntk-s0-w64" / "checkpoint.pt"  # the second cell, mid-training
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run finished before it could be killed"
    assert not (out / "cells" / "ntk-s0-w64" / "cell.json").exists()  # killed mid-cell
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    p = run_cli("run", recipe, "--out", out, "--resume", "--quiet")
    assert p.returncode == 0, p.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["resumed"]
    same_csvs(out, reference)
    assert not target.exists()  # removed once the cell finished


def test_same_seed_same_files(tiny_recipe, tmp_path):
    recipe = tiny_recipe(steps=20)
    for name in ("a", "b"):
        assert run_cli("run", recipe, "--out", tmp_path / name, "--quiet").returncode == 0
    same_csvs(tmp_path / "a", tmp_path / "b")
    run_cli("run", recipe, "--out", tmp_path / "c", "--quiet", "--seed", "1")
    assert (tmp_path / "c" / "drift.csv").read_bytes() != (tmp_path / "a" / "drift.csv").read_bytes()


def test_divergence_stops_with_a_clear_message(tiny_recipe, tmp_path):
    out = tmp_path / "out"
    p = run_cli("run", tiny_recipe(steps=200), "--out", out, "--quiet", "--set", "train.lr=1e8")
    assert p.returncode == 3
    assert "training diverged at step" in p.stderr and "learning rate 100000000.0" in p.stderr
    assert "Traceback" not in p.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "diverged" and "diverged at step" in run["error"]
    assert (out / "drift.csv").stat().st_size > 0  # the rows recorded before the divergence are kept


def test_missing_data_is_one_line(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text(f"[data]\ndataset = 'text8'\ndata_dir = '{tmp_path / 'empty'}'\n")
    p = run_cli("run", r, "--out", tmp_path / "o", "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("lazydrift: error:") and "text8" in p.stderr and "--download" in p.stderr
    assert p.stderr.count("\n") == 1  # one line
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"] == "failed"


scalars = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
                    st.lists(st.integers(-3, 5000), max_size=3))
keys = st.sampled_from(["lr", "steps", "widths", "depth", "dataset", "n_probes", "vocab_size", "seed", "name",
                        "parameterization", "points", "bogus", "batch_size", "every_minutes", "device"])
sections = st.sampled_from([None, "data", "model", "train", "record", "checkpoint", "extra"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(sections, keys, scalars), max_size=6))
def test_random_recipes_raise_only_recipe_errors(entries):
    raw: dict = {}
    for section, key, value in entries:
        (raw if section is None else raw.setdefault(section, {}))[key] = value
    try:
        recipe_from_dict(raw, "random.toml")
    except RecipeError as e:
        assert str(e).startswith("random.toml: ") and "\n" not in str(e)
