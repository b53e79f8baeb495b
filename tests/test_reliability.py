"""One run, one folder (issue 12): results never mix, every refusal is one line, every exit is recorded.

The first eight tests are the rows of the issue's table, in order, on the issue's tiny recipe
(widths [32, 64], 20 steps, V = 50), in the fast tier: each asserts the exit status, that stderr
is one line without a traceback, and that no earlier result changed (every file of the folder,
byte for byte).  Then: --overwrite, resume and interrupts (slow: they train whole recipes),
unexpected errors, divergence, the memory estimate and the locks, the lock across processes and
SIGKILL (slow), and random recipes.

Bit-for-bit comparisons are made only between runs in this process with the same thread count
(``one_thread``) or between subprocesses started with the same OMP_NUM_THREADS.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazydrift import cell as cell_module
from lazydrift import cli, rundir
from lazydrift.recipes import Cell, RecipeError, recipe_from_dict

from conftest import ROOT, TABLE_ROUNDING, snapshot, table_cell, write_tiny

CSVS = ("summary.csv", "drift.csv", "neurons.csv", "gram.csv", "losses.csv", "init_theory.csv", "noise_floor.csv")


def run(capsys, *args) -> tuple[int, str]:
    """``lazydrift ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert err.startswith("lazydrift: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Recipe A run once into a folder; tests work on copies of it."""
    import torch

    root = tmp_path_factory.mktemp("finished")
    recipe = write_tiny(root / "a.toml")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["run", str(recipe), "--out", str(root / "out"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    return recipe, root / "out"


@pytest.fixture
def earlier(finished, tmp_path):
    """(recipe A, a copy of A's finished folder, its files before the test)."""
    recipe, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return recipe, copy, snapshot(copy)


# -- the table, row by row ----------------------------------------------------------------
def test_row1_another_recipe_into_a_folder_is_refused(earlier, tmp_path, capsys, one_thread):
    recipe, out, before = earlier
    other = write_tiny(tmp_path / "b.toml", **{"lr = 0.5": "lr = 0.1", "widths = [32, 64]": "widths = [48]"})
    code, err = run(capsys, "run", other, "--out", out, "--quiet")
    assert code == 2
    assert "holds results of another recipe" in one_line(err)
    assert "[model] widths: [32, 64] there, [48] here" in err and "[train] lr: 0.5 there, 0.1 here" in err
    assert snapshot(out) == before


def test_row2_resume_with_another_recipe_is_refused(earlier, capsys, one_thread):
    recipe, out, before = earlier
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume",
                    "--set", "train.lr=0.01", "--set", "data.vocab_size=40")
    assert code == 2
    assert "[data] vocab_size: 50 there, 40 here" in one_line(err) and "[train] lr: 0.5 there, 0.01 here" in err
    assert snapshot(out) == before


def test_row3_a_second_run_while_one_holds_the_folder_is_refused(earlier, capsys, one_thread):
    """flock locks belong to an open file, so a second open of the lock file in this process
    conflicts like another process would (the cross-process test is the slow one below)."""
    recipe, out, before = earlier
    with rundir.lock(out):
        code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--seed", "1")
    assert code == 2
    assert f"is in use by process {os.getpid()}" in one_line(err)
    assert snapshot(out) == before


def test_row4_an_unknown_layer_is_refused_before_the_data_are_loaded(earlier, tmp_path, capsys, one_thread,
                                                                    monkeypatch):
    recipe, out, before = earlier

    def no_data(recipe):
        raise AssertionError("the data were loaded")

    monkeypatch.setattr("lazydrift.experiment.make_task", no_data)
    for folder in (out, tmp_path / "new"):
        code, err = run(capsys, "run", recipe, "--out", folder, "--quiet", "--set", 'record.layers=["hidden.7"]')
        assert code == 2
        assert "[record] layers: 'hidden.7' is not a layer" in one_line(err) and "hidden.1, " in err
    assert snapshot(out) == before
    assert not (tmp_path / "new").exists()


def test_row5_a_cell_too_large_for_the_device_is_refused_with_the_estimate(earlier, tmp_path, capsys, one_thread):
    recipe, out, before = earlier
    for folder in (out, tmp_path / "new"):
        code, err = run(capsys, "run", recipe, "--out", folder, "--quiet", "--set", "model.widths=[1000000000]")
        assert code == 2
        one_line(err)
        assert "the largest cell (width 1000000000) needs at least" in err and "parameters" in err
        assert "available" in err
    assert snapshot(out) == before
    assert not (tmp_path / "new").exists()


def test_row6_corrupt_data_is_one_line_and_recorded(tmp_path, capsys, one_thread):
    data = tmp_path / "data"
    data.mkdir()
    (data / "text8").write_bytes(b"x")
    recipe = write_tiny(tmp_path / "r.toml", **{'dataset = "text8-mini"': 'dataset = "text8"',
                                                 f'data_dir = "{ROOT / "data"}"': f'data_dir = "{data}"'})
    code, err = run(capsys, "run", recipe, "--out", tmp_path / "out", "--quiet")
    assert code == 2
    assert f"{data / 'text8'} is corrupt or incomplete" in one_line(err)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "failed" and "is corrupt or incomplete" in record["error"]
    assert (data / "text8").read_bytes() == b"x"  # the data are left as they were


def test_row7_an_unusable_out_is_one_line(tmp_path, capsys, one_thread):
    recipe = write_tiny(tmp_path / "r.toml")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    for out, message in ((a_file, "exists and is not a folder"), (a_file / "sub", "is not a folder")):
        code, err = run(capsys, "run", recipe, "--out", out, "--quiet")
        assert code == 2 and message in one_line(err)
    assert a_file.read_text() == "keep me"
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        read_only = Path("/sys/kernel")
    else:
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
    before = sorted(os.listdir(read_only))
    code, err = run(capsys, "run", recipe, "--out", read_only, "--quiet")
    assert code == 2 and "cannot write in" in one_line(err)
    assert sorted(os.listdir(read_only)) == before


def test_a_read_only_cells_folder_is_refused_before_anything_is_removed(earlier, capsys, one_thread, monkeypatch):
    # a writable --out whose cells/ could not be changed: the rerun deleted every combined file,
    # recipe.json and run.json, then stopped with a PermissionError traceback (exit 1)
    recipe, out, before = earlier
    cells = out / "cells"
    if os.geteuid() == 0:  # root ignores permission bits: make os.access say what a read-only cells/ says
        from lazydrift import rundir
        access = os.access
        monkeypatch.setattr(rundir.os, "access",
                            lambda p, mode: False if Path(p).is_relative_to(cells) else access(p, mode))
    else:
        for path in [cells, *cells.iterdir()]:
            path.chmod(0o555)
    for args in ([], ["--overwrite"]):
        code, err = run(capsys, "run", recipe, "--out", out, "--quiet", *args)
        assert code == 2 and "cannot remove the old results in" in one_line(err) and "not writable" in err
        assert snapshot(out) == before  # nothing was removed
    if os.geteuid() != 0:
        for path in [cells, *cells.iterdir()]:
            path.chmod(0o755)


def test_row8_the_last_layer_comes_from_the_stored_order(tmp_path, capsys, one_thread):
    """11 hidden layers: hidden.10 is the last layer although "hidden.10" < "hidden.2" as strings."""
    recipe = write_tiny(tmp_path / "r.toml", **{"widths = [32, 64]": "widths = [32, 64]\nhidden_layers = 11",
                                                "points = 5": 'points = 5\nlayers = ["hidden.10", "hidden.2"]'})
    out = tmp_path / "out"
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet")
    assert code == 0 and err == ""
    assert json.loads((out / "run.json").read_text())["layers"] == ["hidden.2", "hidden.10"]  # forward order
    table = (out / "table1.md").read_text()
    assert "Last hidden layer (hidden.10) of a ReLU network with 11 hidden layers" in table
    # the CSVs list the layers in forward order too (as strings "hidden.10" < "hidden.2")
    for name in ("summary.csv", "cells/ntk-s0-w64/summary.csv"):
        assert list(dict.fromkeys(pd.read_csv(out / name).layer)) == ["hidden.2", "hidden.10"], name
    # the table's numbers, recomputed from the cell's per-probe rows (sample s.d., as documented)
    drift = pd.read_csv(out / "cells" / "ntk-s0-w64" / "drift.csv")
    last = drift[(drift.layer == "hidden.10") & (drift.step == 20)]
    assert table_cell(table, "l2", "ours, width = 64") == pytest.approx((last.l2.mean(), last.l2.std()),
                                                                        abs=TABLE_ROUNDING)
    assert cli.main(["plot", str(out)]) == 0  # plots take the same layer (their titles say which)


# -- what a folder does on purpose -------------------------------------------------------------------
@pytest.mark.slow
def test_overwrite_starts_afresh_and_nothing_old_remains(earlier, tmp_path, capsys, one_thread):
    recipe, out, _ = earlier
    other = write_tiny(tmp_path / "b.toml", **{"lr = 0.5": "lr = 0.1", "widths = [32, 64]": "widths = [48]"})
    code, err = run(capsys, "run", other, "--out", out, "--quiet", "--overwrite")
    assert code == 0 and err == ""
    assert sorted(p.name for p in (out / "cells").iterdir() if not p.name.startswith(".")) == ["ntk-s0-w48"]
    for name in CSVS:
        assert set(pd.read_csv(out / name).width) == {48}, name
    assert "at lr 0.1," in (out / "table1.md").read_text() and "width = 32" not in (out / "table1.md").read_text()
    assert json.loads((out / "recipe.json").read_text())["recipe"]["train"]["lr"] == 0.1


@pytest.mark.slow
def test_the_same_recipe_again_replaces_a_finished_run(earlier, capsys, one_thread):
    recipe, out, before = earlier
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet")
    assert code == 0 and err == ""
    after = snapshot(out)
    for name in CSVS:  # same recipe, same process settings: the same numbers
        assert after[name] == before[name], name
    assert json.loads(after["run.json"])["started"] >= json.loads(before["run.json"])["started"]


def test_a_folder_not_written_by_lazydrift_is_refused(tmp_path, capsys, one_thread):
    recipe = write_tiny(tmp_path / "r.toml")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.csv").write_text("mine\n")
    for flag in ((), ("--overwrite",)):
        code, err = run(capsys, "run", recipe, "--out", tmp_path / "mine", "--quiet", *flag)
        assert code == 2 and "not written by lazydrift" in one_line(err)
    assert snapshot(tmp_path / "mine") == {"notes.csv": b"mine\n"}


def interrupt_at(monkeypatch, at: int, error=KeyboardInterrupt):
    """Make the training step raise ``error`` when it reaches step ``at`` (counted over the run): the
    loss function is called once per step, inside the optimizer's step block."""
    calls = {"n": 0}
    real = cell_module.loss_function

    def loss_function(name):
        loss = real(name)

        def counted(output, target):
            calls["n"] += 1
            if calls["n"] == at:
                raise error("stopped by the test")
            return loss(output, target)
        return counted

    monkeypatch.setattr(cell_module, "loss_function", loss_function)


@pytest.mark.slow
def test_interrupt_is_recorded_and_resume_equals_the_uninterrupted_run(finished, tmp_path, capsys, one_thread,
                                                                      monkeypatch):
    recipe, reference = finished
    out = tmp_path / "out"
    interrupt_at(monkeypatch, 20 + 13)  # the second cell (width 64), after its checkpoint at step 10
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--set", "checkpoint.every_steps=5")
    monkeypatch.undo()
    assert code == 130 and "interrupted" in one_line(err)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "stopped by the test"
    assert (out / "cells" / "ntk-s0-w64" / "checkpoint.pt").is_file()
    assert not (out / "cells" / "ntk-s0-w64" / "cell.json").exists()

    code, err = run(capsys, "run", recipe, "--out", out, "--quiet")  # unfinished work: not without a flag
    assert code == 2 and "unfinished cells of this recipe (ntk-s0-w64)" in one_line(err) and "--resume" in err
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
    assert code == 0 and err == ""
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    for name in CSVS:  # same process and thread count as the reference: identical by construction
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / "cells" / "ntk-s0-w64" / "checkpoint.pt").exists()


ADAM_AND_MOMENTUM = """
[[protocol]]
name = "adam"
parameterization = "pytorch"
input_scale = "fan_in"
optimizer = "adam"
loss = "cross_entropy"
lr = 0.01

[[protocol]]
name = "momentum"
optimizer = "momentum"
lr = 0.05
"""


@pytest.mark.slow
def test_resume_with_adam_and_momentum_equals_the_uninterrupted_run(tmp_path, capsys, one_thread, monkeypatch):
    """The checkpoint carries Adam's moments and step counts and momentum's buffers: a run interrupted
    mid-cell and resumed writes the same CSVs as an uninterrupted one, bit for bit (same process and
    thread count); resuming without the optimizer's state does not (so the comparison can fail)."""
    recipe = write_tiny(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace("widths = [32, 64]", "widths = [32]") + ADAM_AND_MOMENTUM)
    reference = tmp_path / "reference"
    assert run(capsys, "run", recipe, "--out", reference, "--quiet")[0] == 0

    def interrupted(out, at):
        interrupt_at(monkeypatch, at)
        code, _ = run(capsys, "run", recipe, "--out", out, "--quiet", "--set", "checkpoint.every_steps=5")
        monkeypatch.undo()
        assert code == 130

    for cell, at in (("adam-s0-w32", 13), ("momentum-s0-w32", 20 + 13)):
        out = tmp_path / cell
        interrupted(out, at)
        saved = torch.load(out / "cells" / cell / "checkpoint.pt", weights_only=True)
        assert saved["step"] == 10 and saved["optimizer"]["name"] == cell.split("-")[0]
        state = saved["optimizer"]["per_weight"][0]["state"][0]
        assert torch.count_nonzero(state["exp_avg" if cell.startswith("adam") else "momentum_buffer"]) > 0
        code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
        assert code == 0 and err == ""
        for name in CSVS:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (cell, name)

    out = tmp_path / "stateless"  # the same resume without the optimizer's state: Adam's steps differ
    interrupted(out, 13)
    monkeypatch.setattr(cell_module.Optimizer, "load_state_dict", lambda self, state: None)
    assert run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")[0] == 0
    monkeypatch.undo()
    assert (out / "drift.csv").read_bytes() != (reference / "drift.csv").read_bytes()


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_or_cell_of_another_recipe(finished, tmp_path, capsys, one_thread,
                                                              monkeypatch):
    recipe, reference = finished
    other = tmp_path / "other"
    interrupt_at(monkeypatch, 13)
    code, _ = run(capsys, "run", recipe, "--out", other, "--quiet", "--set", "checkpoint.every_steps=5",
                  "--set", "train.lr=0.25")
    monkeypatch.undo()
    assert code == 130
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "cells" / "ntk-s0-w32")
    shutil.copytree(other / "cells" / "ntk-s0-w32", out / "cells" / "ntk-s0-w32")  # lr 0.25's checkpoint
    before = snapshot(out)
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
    assert code == 2 and "checkpoint.pt was written for another recipe" in one_line(err)
    assert "[train] lr: 0.25 there, 0.5 here" in err
    assert snapshot(out) == before

    json_path = out / "cells" / "ntk-s0-w32" / "cell.json"  # a finished cell of another recipe
    json_path.write_text(json.dumps({**json.loads((reference / "cells" / "ntk-s0-w32" / "cell.json").read_text()),
                                     "fingerprint": "0" * 16}))
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
    assert code == 2 and "cell.json was written for another recipe" in one_line(err)


def test_an_unexpected_error_keeps_its_traceback_and_is_recorded(tmp_path, capsys, one_thread, monkeypatch):
    recipe = write_tiny(tmp_path / "r.toml")
    interrupt_at(monkeypatch, 3, error=ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "ZeroDivisionError: stopped by the test"


@pytest.mark.parametrize("lr, kernel", [("1e8", False), ("1e7", True)])
def test_divergence_stops_with_a_clear_message(tmp_path, capsys, one_thread, lr, kernel):
    # with the kernel on, lr 1e7 gives an infinite kernel at the step where the weights blow up (the
    # loss was still finite before the update); its statistics are NaN, the run is "diverged"
    out = tmp_path / "out"
    code, err = run(capsys, "run", write_tiny(tmp_path / "r.toml"), "--out", out, "--quiet", "--set", f"train.lr={lr}",
                    "--set", f"record.ntk={str(kernel).lower()}", "--set", "model.widths=[16]")
    assert code == 3
    assert "training diverged at step" in one_line(err) and f"learning rate {float(lr)}" in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "diverged" and "diverged at step" in record["error"]
    assert len(pd.read_csv(out / "drift.csv")) > 0  # the rows recorded before the divergence are kept
    assert not list(out.glob("cells/*/checkpoint.pt"))  # a diverged cell is final
    if kernel:
        ntk = pd.read_csv(out / "ntk.csv")
        assert ntk.rel_change.iloc[0] == 0 and ntk.eig_max.iloc[0] > 0  # Theta_0 is finite
        last = ntk.iloc[-1]  # the diverged step: no number is the right number
        assert last[["rel_change", "cosine", "eig_max"]].isna().all()


def test_a_diverged_activation_names_its_own_value(tmp_path, capsys, one_thread, monkeypatch):
    # the message showed the (finite) loss as the activation's value
    from lazydrift.recorder import DriftRecorder
    record = DriftRecorder.record

    def record_inf_at_step_2(self, step, *args, **kwargs):
        out = record(self, step, *args, **kwargs)
        return {k: np.full_like(v, np.inf) for k, v in out.items()} if step == 2 else out
    monkeypatch.setattr(DriftRecorder, "record", record_inf_at_step_2)
    code, err = run(capsys, "run", write_tiny(tmp_path / "r.toml"), "--out", tmp_path / "out", "--quiet",
                    "--set", "record.steps=[1, 2]", "--set", "model.widths=[16]")
    assert code == 3 and "diverged at step 2: hidden.1 activation drift ||h_t - h_0||_2 = inf" in one_line(err)


def test_missing_data_is_one_line(tmp_path, capsys, one_thread):
    r = tmp_path / "r.toml"
    r.write_text(f"[data]\ndataset = 'text8'\ndata_dir = '{tmp_path / 'empty'}'\n[model]\nwidths = [8]\n")
    code, err = run(capsys, "run", r, "--out", tmp_path / "o", "--quiet")
    assert code == 2 and "text8" in one_line(err) and "--download" in err
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_same_seed_same_files(finished, tmp_path, capsys, one_thread):
    recipe, reference = finished
    assert run(capsys, "run", recipe, "--out", tmp_path / "a", "--quiet")[0] == 0
    for name in CSVS:  # a second run in the same process and thread count: bit for bit
        assert (tmp_path / "a" / name).read_bytes() == (reference / name).read_bytes(), name
    assert run(capsys, "run", recipe, "--out", tmp_path / "c", "--quiet", "--seed", "1")[0] == 0
    assert (tmp_path / "c" / "drift.csv").read_bytes() != (reference / "drift.csv").read_bytes()


# -- the pieces: memory estimate, locks ------------------------------------------------------------------
def test_memory_estimate_counts_what_a_cell_allocates(tmp_path, one_thread):
    """Parameters, h_0 and the recorded rows against the tensors and rows of a real (tiny) cell."""
    import torch

    from lazydrift.cell import build_model, make_recorder, recorded_layers
    from lazydrift.preflight import cell_memory
    from lazydrift.recipes import load_recipe
    from lazydrift.recorder import log_schedule
    from lazydrift.tasks import make_task

    recipe = load_recipe(write_tiny(tmp_path / "r.toml"), ['record.layers=["hidden.0", "readout"]'])
    layers = recorded_layers(recipe)
    task = make_task(recipe)
    (cell,) = [c for c in recipe.cells() if c.width == 64]
    model = build_model(recipe, task, cell, torch.device("cpu"))
    parts = cell_memory(recipe, 64, layers)
    assert parts["parameters"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert parts["optimizer state"] == 0  # fused SGD: no gradient tensors
    rec = make_recorder(recipe, model, task, layers)
    with rec:
        for step in log_schedule(recipe.train.steps, recipe.record.points):
            rec.record(step)
    assert parts["h_0"] == sum(h.numel() * h.element_size() for h in rec.h0.values())  # 50 x (64 + 50) floats
    rows = len(rec.frame()) + len(rec.gram_frame())
    assert 8 * 8 * rows <= parts["recorded rows"] <= 10 * 8 * rows  # 8 to 10 eight-byte numbers a row
    unfused = load_recipe(write_tiny(tmp_path / "r.toml"), ["train.fused_sgd=false"])
    assert cell_memory(unfused, 64, layers)["optimizer state"] == parts["parameters"]  # .grad of every weight

    # momentum and Adam: the tensors their optimizer holds after a step (state and gradient buffers)
    from lazydrift.cell import build_optimizer
    from lazydrift.losses import loss_function

    x, y = task.make_sampler(1).next_batch()
    for name, fused in (("momentum", True), ("adam", True), ("adam", False)):
        r = load_recipe(write_tiny(tmp_path / "r.toml"), [f"train.optimizer={name}", "train.lr=0.01",
                                                          f"train.fused_sgd={str(fused).lower()}"])
        (cell,) = [c for c in r.cells() if c.width == 64]
        model = build_model(r, task, cell, torch.device("cpu"))
        opt = build_optimizer(r, cell, model)
        with opt.step():
            loss_function(cell.loss)(model(x), y).backward()
        held = [t for o in opt._per_weight for s in o.state.values() for t in s.values() if t.numel() > 1]
        if fused:
            held.append(opt._step.scratch)  # the one gradient buffer shared by the layers
        # the reference path frees its gradients after the step; count them as held during it
        grads = 0 if fused else sum(p.numel() * p.element_size() for p in model.parameters())
        assert cell_memory(r, 64, layers)["optimizer state"] == sum(t.numel() * t.element_size() for t in held) + grads


def test_locks_exclusive_shared_and_released(tmp_path):
    out = tmp_path / "out"
    cells = [Cell("ntk", "ntk", "embedding", "sgd", "mse", 1.0, 0, w) for w in (8, 16)]
    with rundir.lock(out, cells=cells[:1]):
        with rundir.lock(out, cells=cells[1:]):  # shards share the folder
            with pytest.raises(rundir.BusyError, match=f"in use by process {os.getpid()}"):
                with rundir.lock(out):  # a whole run needs it alone
                    pass
        with pytest.raises(rundir.BusyError, match="ntk-s0-w8 is in use"):
            with rundir.lock(out, cells=cells):  # not the same cell twice
                pass
    with rundir.lock(out):  # all released on leaving the blocks
        pass


# -- across processes (slow) ---------------------------------------------------------------------------
def env_one_thread() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_live_run_holds_the_folder_and_its_death_releases_it(tmp_path, capsys, one_thread):
    """The issue's row 3 with real processes: a second run is refused at once, naming the first;
    SIGKILL (which nothing can catch) releases the lock because the kernel closes the file."""
    recipe = write_tiny(tmp_path / "r.toml", **{"steps = 20": "steps = 1000000"})
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "lazydrift", "run", str(recipe), "--out", str(out), "--quiet"],
                             env=env_one_thread(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "cells" / "ntk-s0-w32").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        before = snapshot(out)
        started = time.monotonic()
        code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--seed", "1")
        assert code == 2 and f"is in use by process {first.pid}" in one_line(err)
        assert time.monotonic() - started < 10  # at once: no waiting for the lock
        assert snapshot(out) == before
    finally:
        first.kill()
        first.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # SIGKILL leaves no last word
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--seed", "1", "--overwrite",
                    "--set", "train.steps=20")
    assert code == 0 and err == ""


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    """Both runs are subprocesses with the same settings (one thread), so the CSVs are identical."""
    recipe = write_tiny(tmp_path / "r.toml", **{"steps = 20": "steps = 600", "every_minutes = 0":
                                                "every_minutes = 0\nevery_steps = 10"})
    cmd = [sys.executable, "-m", "lazydrift", "run", str(recipe), "--quiet", "--out"]
    reference = tmp_path / "reference"  # the entry point as a user types it, run alongside
    uninterrupted = subprocess.Popen(cmd + [str(reference)], env=env_one_thread(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [str(out)], env=env_one_thread(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = out / "cells" / "ntk-s0-w64" / "checkpoint.pt"  # the second cell, mid-training
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run finished before it could be killed"
    assert not (out / "cells" / "ntk-s0-w64" / "cell.json").exists()  # killed mid-cell
    stdout, stderr = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0 and stderr == "", stderr
    assert stdout.startswith(f"lazydrift: wrote {reference}/ (status: completed")

    p = subprocess.run(cmd + [str(out), "--resume"], env=env_one_thread(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["resumed"]
    for name in CSVS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not target.exists()  # removed once the cell finished


# -- the recipe loader never crashes ---------------------------------------------------------------------
scalars = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
                    st.lists(st.integers(-3, 5000), max_size=3))
keys = st.sampled_from(["lr", "steps", "widths", "hidden_layers", "depth", "dataset", "n_probes", "vocab_size", "seed", "name",
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


def test_odd_out_folders_and_recipe_names_are_one_line(tmp_path, capsys, one_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is results/<name>, relative to the working folder
    recipe = write_tiny(tmp_path / "r.toml")
    for args, message in (
        (["--out", "x" * 300], "File name too long"),       # was an OSError traceback (exit 1)
        (["--out", ""], "--out is empty"),                   # was silently results/tiny
        (["--set", "name='../escaped'"], "is not a folder name"),  # was written to ../escaped, outside results/
        (["--set", f"name='{tmp_path / 'abs'}'"], "is not a folder name"),  # was written to that absolute path
        (["--set", "name='..'"], "is not a folder name"),
    ):
        code, err = run(capsys, "run", recipe, "--quiet", *args)
        assert code == 2 and message in one_line(err), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]  # nothing was created


@pytest.mark.parametrize("setting, message", [("model.widths=[32, 64, 32]", "[model] widths lists 32 more than once"),
                                              ("seeds=[1, 0, 1]", "seeds lists 1 more than once"),
                                              ("model.parameterization=['ntk', 'ntk']", "parameterization lists a value twice")])
def test_a_cell_listed_twice_is_refused(tmp_path, capsys, one_thread, setting, message):
    # it used to run: the same cell trained twice into one folder (exit 0, twice the time)
    out = tmp_path / "out"
    code, err = run(capsys, "run", write_tiny(tmp_path / "r.toml"), "--out", out, "--quiet", "--set", setting)
    assert code == 2 and message in one_line(err)
    assert not out.exists()


@pytest.mark.slow
def test_overwrite_deletes_only_what_lazydrift_writes(tmp_path, capsys, one_thread):
    # --overwrite deleted every *.csv, *.md and *.png in the folder, a user's own notes included
    from lazydrift.rundir import COMBINED, PROBES, RECIPE_FILE, RUN_FILE
    out = tmp_path / "out"
    recipe = write_tiny(tmp_path / "r.toml", **{"widths = [32, 64]": "widths = [16, 32, 64]",
                                                 "gram_probes = 8": "gram_probes = 8\nntk = true\nanalogies = true"})
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet")
    assert code == 0 and err == "" and cli.main(["plot", str(out)]) == 0
    written = {p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert {"scaling.csv", "analogy.csv", "kernel.png", "table1.md"} <= written  # the run wrote every kind
    assert written - {PROBES, RECIPE_FILE, RUN_FILE} <= COMBINED, "unregistered: " + str(written - COMBINED)
    (out / "notes.md").write_text("mine")
    (out / "extra.csv").write_text("a\n1\n")
    code, err = run(capsys, "run", write_tiny(tmp_path / "b.toml"), "--out", out, "--quiet", "--overwrite")
    assert code == 0 and (out / "notes.md").read_text() == "mine" and (out / "extra.csv").read_text() == "a\n1\n"
    assert not (out / "scaling.csv").exists() and not (out / "analogy.csv").exists()  # the old run's are gone


def test_a_folder_written_before_the_renames_still_resumes_and_merges(earlier, capsys, one_thread):
    # [model] depth became hidden_layers and losses.csv's "loss" became train_loss; an older
    # folder's records say depth and its cells' losses.csv say loss.  Its cell.json digests
    # were taken under the old key, which fingerprint_digest keeps.
    recipe, out, _ = earlier
    combined = pd.read_csv(out / "losses.csv")
    stored = json.loads((out / "recipe.json").read_text())
    stored["recipe"]["model"]["depth"] = stored["recipe"]["model"].pop("hidden_layers")
    (out / "recipe.json").write_text(json.dumps(stored))
    for path in out.glob("cells/*/losses.csv"):
        path.write_text(path.read_text().replace("step,train_loss", "step,loss", 1))
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/drift.csv")}
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
    assert code == 0 and err == ""
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/drift.csv")} == before  # nothing retrained
    assert run(capsys, "merge", out) == (0, "")
    pd.testing.assert_frame_equal(pd.read_csv(out / "losses.csv"), combined)


def test_a_cell_from_before_protocols_says_so(earlier, capsys, one_thread):
    # such a cell.json has no protocol keys; it was reported as "changed after lazydrift wrote it"
    recipe, out, before = earlier
    path = next(out.glob("cells/*/cell.json"))
    record = json.loads(path.read_text())
    for key in ("protocol", "input_scale", "optimizer", "loss", "lr"):
        record.pop(key)
    path.write_text(json.dumps(record))
    code, err = run(capsys, "merge", out)
    assert code == 2 and "was written by an older lazydrift, before cells were keyed by their training protocol" in one_line(err)


def test_a_damaged_record_is_one_line(earlier, capsys, one_thread):
    # records are written atomically, so one that does not parse was changed later; each was a
    # JSONDecodeError or AttributeError traceback (exit 1)
    recipe, out, _ = earlier
    cell_json = next(out.glob("cells/*/cell.json"))
    cell_json.write_text("")
    before = snapshot(out)
    for args in (["run", recipe, "--out", out, "--quiet", "--resume"], ["merge", out]):
        code, err = run(capsys, *args)
        assert code == 2 and f"{cell_json} cannot be read (not JSON" in one_line(err), args
        assert snapshot(out) == before
    cell_json.unlink()  # as the message says: the cell runs again
    code, _ = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
    assert code == 0 and json.loads(cell_json.read_text())["status"] == "completed"

    (out / "recipe.json").write_text('{"recipe": 5}')
    code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
    assert code == 2 and "recipe.json cannot be read (its recipe is a JSON int" in one_line(err)
    (out / "run.json").write_text("[1, 2]")
    code, err = run(capsys, "plot", out)
    assert code == 2 and "run.json cannot be read (a JSON list, not an object)" in one_line(err)


def test_a_damaged_checkpoint_is_one_line(earlier, capsys, one_thread):
    from lazydrift.checkpoint import Checkpointer, DamagedCheckpointError
    from lazydrift.recipes import load_recipe

    recipe, out, _ = earlier
    cell_dir = next(out.glob("cells/*/"))
    (cell_dir / "cell.json").unlink()  # an unfinished cell, whose checkpoint --resume reads first
    r = load_recipe(recipe)
    checkpointer = Checkpointer(cell_dir, r, next(c for c in r.cells() if c.name == cell_dir.name))
    checkpointer.save({"step": 1})
    whole = checkpointer.path.read_bytes()
    for content, problem in ((b"", "an empty file"), (whole[: len(whole) // 2], "zip archive")):
        checkpointer.path.write_bytes(content)  # was a RuntimeError traceback from torch.load (exit 1)
        code, err = run(capsys, "run", recipe, "--out", out, "--quiet", "--resume")
        assert code == 2 and f"{checkpointer.path} cannot be read (" in one_line(err) and problem in err
        assert "delete it to run that cell again" in err
        with pytest.raises(DamagedCheckpointError, match=problem):  # the training loop's loader says the same
            checkpointer.load()
