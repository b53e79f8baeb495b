"""Sharding: --shard / torchrun / Slurm-array shards, their locks, and merged shards = the unsharded run.

Exactness is claimed only between identically configured computations: in one process with one
thread count (fast), or between subprocesses with the same OMP_NUM_THREADS (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from lazydrift import cli, rundir
from lazydrift.recipes import load_recipe
from lazydrift.shard import ShardError, parse_shard, resolve_shard, shard_cells

from conftest import DATA_DIR, ROOT

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                 "SLURM_ARRAY_TASK_MIN")

SWEEP = f"""\
name = "tiny-sweep"
seed = 0
device = "cpu"
[data]
dataset = "text8-mini"
data_dir = "{DATA_DIR}"
max_tokens = 20000
vocab_size = 50
n_probes = 16
[model]
widths = [16, 32, 48]
parameterization = ["ntk", "mup"]
[train]
lr = 0.2
steps = 6
batch_size = 16
[record]
points = 4
gram_probes = 6
analogies = true
[checkpoint]
every_minutes = 0
"""


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0", "1/2/3"):
        with pytest.raises(ShardError):
            parse_shard(bad)


def test_resolve_shard_from_the_environment():
    assert resolve_shard(None, {}) is None
    assert resolve_shard("1/3", {"RANK": "0", "WORLD_SIZE": "2"}) == (1, 3)  # --shard wins
    assert resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}) == (2, 4)
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None  # a single process: no shard
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5"}) == (2, 5)
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "5",
                                "SLURM_ARRAY_TASK_MIN": "1"}) == (4, 5)  # --array=1-5
    # torchrun with 2 ranks inside array task 1 of 3: shard 1 * 2 + rank of 3 * 2
    assert resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "1",
                                "SLURM_ARRAY_TASK_COUNT": "3"}) == (3, 6)
    for env in ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "5"},  # 1-based without MIN
                {"SLURM_ARRAY_TASK_ID": "1"}, {"WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"RANK": "2", "WORLD_SIZE": "2"}):
        with pytest.raises(ShardError):
            resolve_shard(None, env)


def test_round_robin_covers_every_cell_once():
    cells = list(range(23))
    for n in (1, 2, 5, 23, 30):
        parts = [shard_cells(cells, i, n) for i in range(n)]
        assert sorted(sum(parts, [])) == cells
        assert all(parts[i] == [k for k in cells if k % n == i] for i in range(n))


def test_bad_shard_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP)
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "o"), "--shard", "3/3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard" in err[0]
    assert cli.main(["merge", str(tmp_path / "nothing-here")]) == 2


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(extra, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def same_files(whole, merged) -> list[str]:
    names = sorted(p.name for p in whole.glob("*.csv"))
    for name in names:
        a, b = pd.read_csv(whole / name), pd.read_csv(merged / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
    return names


@pytest.mark.slow
def test_merged_shards_equal_the_unsharded_run(tmp_path, monkeypatch, one_thread):
    """In one process with one thread count every cell is computed identically by construction, so
    the merge must reproduce the unsharded run's files exactly: a test of merging, not of BLAS."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP.replace("widths = [16, 32, 48]", "widths = [16, 32]"))  # 3 widths: the slow test
    shared, other, whole = tmp_path / "shared", tmp_path / "other", tmp_path / "whole"
    assert cli.main(["run", str(recipe), "--out", str(shared), "--shard", "0/3", "--quiet"]) == 0
    assert cli.main(["run", str(recipe), "--out", str(shared), "--shard", "1/3", "--quiet"]) == 0
    assert cli.main(["run", str(recipe), "--out", str(other), "--shard", "2/3", "--quiet"]) == 0
    assert cli.main(["run", str(recipe), "--out", str(whole), "--quiet"]) == 0

    # cells are dealt round robin over (parameterization, seed, width); shards write no combined files
    order = [f"{p}-s0-w{w}" for p in ("ntk", "mup") for w in (16, 32)]
    records = {i: json.loads(((other if i == 2 else shared) / f"shard-{i}-of-3.json").read_text()) for i in range(3)}
    for i, rec in records.items():
        assert rec["shard"]["cells"] == order[i::3] and rec["status"] == "completed"
    assert sorted(p.name for p in (shared / "cells").iterdir() if p.is_dir()) == sorted(order[0::3] + order[1::3])
    assert [p.name for p in shared.glob("*.csv")] == ["probes.csv"]
    assert not (shared / "run.json").exists()

    assert cli.main(["merge", str(shared), str(other)]) == 0
    merged = json.loads((shared / "run.json").read_text())
    assert merged["status"] == "completed" and merged["missing_cells"] == [] and merged["layers"] == ["hidden.1"]
    names = same_files(whole, shared)
    assert {"summary.csv", "drift.csv", "gram_summary.csv", "analogy.csv"} <= set(names)
    assert (shared / "analogy.md").is_file()


@pytest.mark.slow
def test_shards_share_a_folder_but_not_a_cell(tmp_path, capsys, monkeypatch, one_thread):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP)
    out = tmp_path / "out"
    held = shard_cells(load_recipe(recipe).cells(), 0, 3)
    with rundir.lock(out, cells=held):  # as if shard 0/3 were running
        capsys.readouterr()
        assert cli.main(["run", str(recipe), "--out", str(out), "--shard", "0/3", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out / 'cells' / held[0].name} is in use by process {os.getpid()}" in err
        assert cli.main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2  # a whole run needs the folder
        assert f"{out} is in use by process {os.getpid()}" in capsys.readouterr().err
        assert cli.main(["run", str(recipe), "--out", str(out), "--shard", "1/3", "--quiet"]) == 0  # other cells


@pytest.mark.slow
def test_shards_in_separate_processes_merge_to_the_unsharded_run(tmp_path, monkeypatch):
    """Two shards at once in one folder (``--shard`` and torchrun's variables; the Slurm variables
    are checked in test_resolve_shard_from_the_environment) and the unsharded run, each a
    subprocess with OMP_NUM_THREADS=1: identically configured processes compute identical cells,
    so the merge must equal the unsharded run exactly."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP.replace("analogies = true", "analogies = false"))  # merged in the fast test above
    shared, whole = tmp_path / "shared", tmp_path / "whole"
    cmd = [sys.executable, "-m", "lazydrift", "run", str(recipe), "--quiet"]
    launch = [(cmd + ["--out", str(shared), "--shard", "0/2"], _env()),
              (cmd + ["--out", str(shared)], _env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")),
              (cmd + ["--out", str(whole)], _env())]
    procs = [subprocess.Popen(c, env=e, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, e in launch]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    order = [f"{p}-s0-w{w}" for p in ("ntk", "mup") for w in (16, 32, 48)]
    for i in range(2):
        assert json.loads((shared / f"shard-{i}-of-2.json").read_text())["shard"]["cells"] == order[i::2]
    assert cli.main(["merge", str(shared)]) == 0
    assert json.loads((shared / "run.json").read_text())["status"] == "completed"
    assert {"summary.csv", "drift.csv", "gram_summary.csv", "scaling.csv"} <= set(same_files(whole, shared))
    assert (shared / "scaling.png").is_file()


@pytest.mark.slow
def test_merge_reports_missing_cells(tmp_path, monkeypatch, capsys, one_thread):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP.replace("widths = [16, 32, 48]", "widths = [16, 32]").replace('["ntk", "mup"]', '"ntk"'))
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "o"), "--shard", "1/2", "--quiet"]) == 0
    assert cli.main(["merge", str(tmp_path / "o")]) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["status"] == "incomplete" and run["missing_cells"] == ["ntk-s0-w16"]
    assert "missing cells: ntk-s0-w16" in capsys.readouterr().err


@pytest.mark.slow
def test_merge_refuses_folders_of_different_recipes(tmp_path, monkeypatch, capsys, one_thread):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    small = SWEEP.replace("widths = [16, 32, 48]", "widths = [16, 32]").replace('["ntk", "mup"]', '"ntk"')
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(small)
    b.write_text(small.replace("lr = 0.2", "lr = 0.3"))
    assert cli.main(["run", str(a), "--out", str(tmp_path / "a"), "--shard", "0/2", "--quiet"]) == 0
    assert cli.main(["run", str(b), "--out", str(tmp_path / "b"), "--shard", "1/2", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different recipes ([train] lr: 0.2 there, 0.3 here)" in err
    assert not (tmp_path / "a" / "run.json").exists()  # nothing was combined


def test_merge_into_a_new_folder(tmp_path, monkeypatch, capsys, one_thread):
    """`lazydrift merge NEW A B` was "NEW: no such folder"; it equals the unsharded run (one process,
    one thread count: identical by construction)."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP.replace("widths = [16, 32, 48]", "widths = [16, 32]").replace('["ntk", "mup"]', '"ntk"')
                      .replace("analogies = true", "analogies = false"))
    a, b, whole, fresh = tmp_path / "a", tmp_path / "b", tmp_path / "whole", tmp_path / "fresh"
    assert cli.main(["run", str(recipe), "--out", str(a), "--shard", "0/2", "--quiet"]) == 0
    assert cli.main(["run", str(recipe), "--out", str(b), "--shard", "1/2", "--quiet"]) == 0
    assert cli.main(["run", str(recipe), "--out", str(whole), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(a)]) == 2  # a shard's folder holds cells only
    assert "cells are not combined yet (no summary.csv); run `lazydrift merge" in capsys.readouterr().err
    assert cli.main(["merge", str(fresh)]) == 2  # alone it has nothing to merge
    assert "fresh: no such folder" in capsys.readouterr().err
    assert cli.main(["merge", str(fresh), str(a), str(b)]) == 0
    assert {"summary.csv", "drift.csv", "gram.csv"} <= set(same_files(whole, fresh))
    assert json.loads((fresh / "run.json").read_text())["status"] == "completed"
