"""The kernel option of DriftRecorder ([record] ntk): rows against the tracker used directly and
against the independent Jacobian route, refusals at construction, checkpoints; the runner's
ntk.csv, table1.md rows, resume, scaling.csv rows and memory estimate."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import write_tiny
from lazydrift import NTKMLP, DriftRecorder, fused_sgd, mse_loss
from lazydrift.recipes import CELL_KEYS
from lazydrift.empirical import jacobian_ntk
from lazydrift.kernel_drift import COLUMNS, KernelDriftTracker
from test_kernel_drift import relu_ntk_one_hot_by_hand

F64 = torch.float64


def train_tokens(model, steps, V, seed=0, between=None):
    """SGD on the toy token task y = (x + 1) mod V; ``between(step)`` after each step."""
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        x = torch.randint(V, (16,), generator=g)
        with fused_sgd(model, 1.0):
            mse_loss(model(x), (x + 1) % V).backward()
        if between:
            between(step)


def test_recorder_kernel_rows_equal_the_tracker_used_directly_and_training_is_unchanged():
    V, k, steps = 20, 12, 5
    probes = torch.arange(V)

    plain = NTKMLP(V, 48, V, seed=1)
    train_tokens(plain, steps, V)

    model = NTKMLP(V, 48, V, seed=1)
    rec = DriftRecorder(model, probes=probes, pairs=None, ntk_probes=k, ntk_seed=3)
    with rec:
        rec.record(0)
        train_tokens(model, steps, V, between=lambda s: s in (2, 5) and rec.record(s))

    twin = NTKMLP(V, 48, V, seed=1)
    tracker = KernelDriftTracker(twin, probes[:k], seed=3, method="structured")
    tracker.record(0)
    train_tokens(twin, steps, V, between=lambda s: s in (2, 5) and tracker.record(s))

    # the same computation on the same weights in one process: equal by construction
    pd.testing.assert_frame_equal(rec.kernel_frame(), tracker.frame(), check_exact=True)
    assert list(rec.kernel_frame().columns) == COLUMNS and list(rec.kernel_frame().step) == [0, 2, 5]
    assert rec.kernel_frame().rel_change.iloc[-1] > 1e-3  # training moved the kernel
    assert rec.ntk_probes == k and "ntk_probes=12" in repr(rec) and rec.kernel_seconds > 0
    for a, b in zip(model.parameters(), plain.parameters()):  # recording the kernel does not change training
        assert torch.equal(a, b)


def test_recorder_kernel_against_the_jacobian_route_on_a_tiny_model():
    """nn.Sequential of nn.Linear with biases (float64), output column 1, float targets: every column of
    ntk.csv against numpy on kernels from the Jacobian route (per-example torch.func Jacobians)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x = torch.randn(10, 5, dtype=F64)
    y = torch.randn(10, 3, dtype=F64)
    k = 7
    rec = DriftRecorder(model, layers=["2"], probes=x, ntk_probes=k, ntk_output=1, ntk_targets=y)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    kernels = {}
    with rec:
        kernels[0] = jacobian_ntk(model, x[:k], output=1).numpy()
        rec.record(0)
        for step in range(1, 4):
            opt.zero_grad()
            ((model(x) - y) ** 2).sum().backward()
            opt.step()
        kernels[3] = jacobian_ntk(model, x[:k], output=1).numpy()
        rec.record(3)
    frame = rec.kernel_frame()
    k0, k3 = kernels[0], kernels[3]
    yy = y[:k].numpy() @ y[:k].numpy().T
    # The two routes agree to ~1e-14 relative per entry in float64; rel_change (~1e-1 here) divides a
    # difference of kernels by their norm, so 1e-8 leaves six orders of margin.
    assert frame.rel_change[1] == pytest.approx(np.linalg.norm(k3 - k0) / np.linalg.norm(k0), rel=1e-8)
    assert frame.rel_change[1] > 1e-2
    assert frame.cosine[1] == pytest.approx(np.sum(k3 * k0) / np.linalg.norm(k3) / np.linalg.norm(k0), rel=1e-12)
    assert frame.eig_max[1] == pytest.approx(np.linalg.eigvalsh(k3)[-1], rel=1e-12)
    assert frame.eig_max[0] == pytest.approx(np.linalg.eigvalsh(k0)[-1], rel=1e-12)
    assert frame.target_alignment[1] == pytest.approx(np.sum(k3 * yy) / np.linalg.norm(k3) / np.linalg.norm(yy),
                                                      rel=1e-12)
    assert frame.rel_change[0] == 0 and frame.limit_distance.isna().all()  # no closed form for this model


def test_first_row_gives_theta0s_distance_to_the_hand_computed_limit():
    """Theta_0 is taken where h_0 is (on entering), even when the first record comes later."""
    V = 10
    model = NTKMLP(V, 64, V, hidden_layers=2, input_scale="embedding", seed=2, dtype=F64)
    rec = DriftRecorder(model, probes=torch.arange(V), ntk_probes=100)  # capped at the 10 probes
    with rec:
        k0 = jacobian_ntk(model, torch.arange(V), output="random").numpy()
        train_tokens(model, 2, V)
        rec.record(2)
    diag, off = relu_ntk_one_hot_by_hand(3, 1.0)  # 2 hidden layers: L = 3; embedding scale c = 1
    k_inf = np.full((V, V), off) + np.eye(V) * (diag - off)
    row = rec.kernel_frame().iloc[0]
    assert rec.ntk_probes == V and row.step == 2 and row.rel_change > 0
    assert row.limit_distance == pytest.approx(np.linalg.norm(k0 - k_inf) / np.linalg.norm(k_inf), rel=1e-9)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)
        self.b.weight = nn.Parameter(self.a.weight[:1].detach().clone())
        self.c = nn.Linear(4, 1)
        self.c.weight = self.b.weight  # shared by two modules

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + self.c(h)


def test_models_the_structured_route_cannot_split_are_refused_at_construction():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="ntk_probes=4: the empirical NTK of Tied cannot be recorded by layer: "
                                         ".*tied weights"):
        DriftRecorder(Tied(), layers=["a"], probes=x, ntk_probes=4)
    mixing = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="ntk_probes=4: .*batch statistics"):
        DriftRecorder(mixing, layers=["0"], probes=x, ntk_probes=4)
    many = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="ntk_probes=4: .*has 3 outputs; pass output=<index> or output='random'"):
        DriftRecorder(many, layers=["0"], probes=x, ntk_probes=4, ntk_output=None)
    with pytest.raises(ValueError, match="ntk_probes: the kernel needs the probes as one tensor"):
        DriftRecorder(many, layers=["0"], probes={"input": x}, ntk_probes=4)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="ntk_probes must be a positive integer"):
            DriftRecorder(many, layers=["0"], probes=x, ntk_probes=bad)
    with pytest.raises(ValueError, match="ntk_targets must have one row per probe \\(6\\)"):
        DriftRecorder(many, layers=["0"], probes=x, ntk_probes=4, ntk_targets=torch.zeros(4))


def test_checkpoint_round_trip_continues_the_same_rows_and_release_keeps_them(tmp_path):
    V = 12
    probes = torch.arange(V)

    def run(split: bool) -> pd.DataFrame:
        model = NTKMLP(V, 32, V, seed=0)
        rec = DriftRecorder(model, probes=probes, ntk_probes=8)
        with rec:
            rec.record(0)
            train_tokens(model, 3, V, between=lambda s: s == 3 and rec.record(3))
            if not split:
                train_tokens(model, 2, V, seed=1)
                rec.record(5)
        if split:  # a checkpoint after step 3, restored into a fresh recorder on the same weights
            state = rec.state_dict()
            rec = DriftRecorder(model, probes=probes, ntk_probes=8)
            rec.load_state_dict(state)
            with rec:
                train_tokens(model, 2, V, seed=1)
                rec.record(5)
        rec.release_model()
        rec.to_csv(tmp_path / str(split))
        return rec.kernel_frame()

    pd.testing.assert_frame_equal(run(False), run(True), check_exact=True)
    assert (tmp_path / "True" / "ntk.csv").read_bytes() == (tmp_path / "False" / "ntk.csv").read_bytes()

    without = DriftRecorder(NTKMLP(V, 32, V, seed=0), probes=probes).state_dict()
    with pytest.raises(ValueError, match="holds no kernel records"):
        DriftRecorder(NTKMLP(V, 32, V, seed=0), probes=probes, ntk_probes=8).load_state_dict(without)
    plain = DriftRecorder(NTKMLP(V, 32, V, seed=0), probes=probes)
    assert plain.ntk_probes is None and plain.kernel_frame().empty and list(plain.kernel_frame().columns) == COLUMNS


def test_reset_forgets_the_kernel_too():
    V = 8
    model = NTKMLP(V, 16, V, seed=0)
    rec = DriftRecorder(model, probes=torch.arange(V), ntk_probes=V)
    with rec:
        rec.record(0)
        train_tokens(model, 1, V)
        rec.record(1)
    rec.reset()
    with rec:  # the trained model is the new reference
        rec.record(0)
    assert list(rec.kernel_frame().step) == [0] and rec.kernel_frame().rel_change[0] == 0


# -- the runner ------------------------------------------------------------------------------------------
KERNEL_ON = {"gram_probes = 8": "gram_probes = 8\nntk = true\nntk_probes = 30"}


def table_row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label}"))
    return [c.strip() for c in line.strip("| ").split(" | ")[1:]]


@pytest.mark.slow
def test_recipe_writes_ntk_csv_and_table1_rows_that_match_it(tmp_path, one_thread):
    from lazydrift.experiment import run_recipe
    from lazydrift.recipes import load_recipe

    recipe = load_recipe(write_tiny(tmp_path / "r.toml", **KERNEL_ON, **{"widths = [32, 64]": "widths = [32, 64, 128]"}))
    out = tmp_path / "out"
    run_recipe(recipe, out, progress=False)
    ntk = pd.read_csv(out / "ntk.csv")
    assert list(ntk.columns) == [*CELL_KEYS, *COLUMNS]
    for w in (32, 64, 128):
        cell = pd.read_csv(out / "cells" / f"ntk-s0-w{w}" / "ntk.csv")
        assert list(cell.columns) == COLUMNS
        assert list(cell.step) == sorted(pd.read_csv(out / "cells" / f"ntk-s0-w{w}" / "summary.csv").step.unique())
        info = json.loads((out / "cells" / f"ntk-s0-w{w}" / "cell.json").read_text())
        assert info["ntk_probes"] == 30 and 0 < info["ntk_seconds"] < info["seconds"]

    table = (out / "table1.md").read_text()
    change = table_row(table, "‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F")
    limit = table_row(table, "‖Θ_0 − Θ_∞‖_F / ‖Θ_∞‖_F")
    assert change[-2:] == ["–", "–"] and limit[-2:] == ["–", "–"]  # the paper has no kernel numbers
    for k, w in enumerate((32, 64, 128)):
        g = ntk[ntk.width == w]
        last, first = g[g.step == g.step.max()].iloc[0], g[g.step == 0].iloc[0]
        # 4 significant digits shown: half a unit of the 4th digit, relative 5e-4 at most
        assert float(change[k]) == pytest.approx(last.rel_change, rel=5e-4)
        assert float(limit[k]) == pytest.approx(first.limit_distance, rel=5e-4)
        assert g.limit_distance.notna().sum() == 1
    assert "on the first 30 probes" in table

    floor = pd.read_csv(out / "noise_floor.csv")
    kernel_floor = floor[floor.measure == "ntk_rel_change_max"]
    assert list(kernel_floor.width) == [32, 64, 128] and (kernel_floor.value == 0).all()  # CPU: an untouched model reads 0

    scaling = pd.read_csv(out / "scaling.csv")
    kernel = scaling[scaling.layer == "network"]
    assert set(kernel.measure) == {"ntk_rel_change", "ntk_limit_distance"}
    assert (kernel[kernel.measure == "ntk_limit_distance"].step == 0).all()
    assert (kernel[kernel.measure == "ntk_rel_change"].theory == -1).all()
    assert "ntk_rel_change (network)" in (out / "scaling.md").read_text()

    from lazydrift.plots import plot_results

    written = plot_results(out)
    assert out / "kernel.png" in written and (out / "kernel.png").stat().st_size > 10_000


@pytest.mark.slow
def test_resume_from_a_checkpoint_gives_the_same_ntk_csv(tmp_path, capsys, one_thread, monkeypatch):
    from lazydrift import cell as cell_module
    from lazydrift.cli import main

    recipe = write_tiny(tmp_path / "r.toml", **KERNEL_ON)
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(reference), "--quiet"]) == 0

    calls = {"n": 0}
    real = cell_module.loss_function

    def loss_function(name):  # called once per training step
        loss = real(name)

        def counted(output, target):
            calls["n"] += 1
            if calls["n"] == 20 + 13:  # the second cell, after its checkpoint at step 10
                raise KeyboardInterrupt("stopped by the test")
            return loss(output, target)
        return counted

    monkeypatch.setattr(cell_module, "loss_function", loss_function)
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--set", "checkpoint.every_steps=5"]) == 130
    monkeypatch.undo()
    assert (out / "cells" / "ntk-s0-w64" / "checkpoint.pt").is_file()
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0
    capsys.readouterr()
    for name in ("ntk.csv", "cells/ntk-s0-w64/ntk.csv", "noise_floor.csv"):  # same process and threads: identical
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_recipe_keys_are_checked(tmp_path, capsys):
    from lazydrift.cli import main
    from lazydrift.recipes import RecipeError, load_recipe

    path = write_tiny(tmp_path / "r.toml", **KERNEL_ON)
    assert load_recipe(path).record.ntk_output == "random"
    assert load_recipe(path, ["record.ntk_output=3"]).record.ntk_output == 3
    for override, message in (("record.ntk_probes=0", "[record] ntk_probes must be >= 1, got 0"),
                              ("record.ntk_output=-1", "[record] ntk_output must be an output index (>= 0)"),
                              ('record.ntk_output="first"', "[record] ntk_output must be \"random\" or an output index"),
                              ("record.ntk=1", "[record] ntk must be true or false")):
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(path, [override])
    # an index past the task's outputs (V = 50) is refused before any data are loaded
    code = main(["run", str(path), "--out", str(tmp_path / "o"), "--set", "record.ntk_output=50"])
    err = capsys.readouterr().err
    assert code == 2 and "[record] ntk_output must be an output index in [0, 50)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_scaling_rows_of_the_kernel_on_a_synthetic_frame_against_numpy():
    """ntk_rel_change fitted at each step and ntk_limit_distance at step 0, each against numpy's polyfit;
    mup has no limit distance (NaN rows are dropped)."""
    from lazydrift import scaling

    rng = np.random.default_rng(0)
    rows = []
    for p in ("ntk", "mup"):
        for seed in (0, 1):
            for w in (128, 256, 512, 1024):
                for step in (0, 1, 10):
                    noise = math.exp(rng.normal(0, 0.05))
                    rows.append({"parameterization": p, "seed": seed, "width": w, "step": step,
                                 "rel_change": 0.0 if step == 0 else 0.3 * step ** 0.5 * w ** -1.0 * noise,
                                 "cosine": 1.0, "eig_max": 1.0, "target_alignment": math.nan,
                                 "limit_distance": 2.0 * w ** -0.5 * noise if step == 0 and p == "ntk" else math.nan})
    ntk = pd.DataFrame(rows)
    table = scaling.scaling_table(scaling.points(None, None, ntk=ntk))
    assert set(table.layer) == {"network"}
    for (p, measure, step), fit in table.set_index(["parameterization", "measure", "step"]).iterrows():
        g = ntk[(ntk.parameterization == p) & (ntk.step == step)]
        value = g.rel_change if measure == "ntk_rel_change" else g.limit_distance
        slope = np.polyfit(np.log(g.width), np.log(value), 1)[0]
        assert fit.slope == pytest.approx(slope, rel=1e-10) and fit.n_points == 8
        assert fit.theory == {"ntk_rel_change": {"ntk": -1.0, "mup": 0.0}, "ntk_limit_distance": {"ntk": -0.5}}[measure][p]
    keys = set(zip(table.parameterization, table.measure, table.step))
    assert keys == {("ntk", "ntk_rel_change", 1), ("ntk", "ntk_rel_change", 10), ("ntk", "ntk_limit_distance", 0),
                    ("mup", "ntk_rel_change", 1), ("mup", "ntk_rel_change", 10)}
    md = scaling.scaling_markdown(pd.concat([table, scaling.scaling_table(scaling.points(
        pd.DataFrame({"parameterization": "ntk", "seed": 0, "width": [128, 256, 512], "layer": "hidden.1",
                      "step": 10, "measure": "l2", "mean": [1.0, 1.1, 1.2], "std": 0.1, "n_probes": 5})))]),
        "hidden.1")
    assert "| ntk_limit_distance (network) |" in md and "(-0.5)" in md


def test_memory_estimate_counts_the_kernels_tensors(tmp_path, monkeypatch):
    """The estimate against the layer inputs, outputs and output gradients the structured pass holds (counted
    by wrapping its per-layer step): at least those, at most twice (the autograd graph's ReLU outputs and
    temporaries are the rest)."""
    from lazydrift import empirical
    from lazydrift.preflight import cell_memory, kernel_memory
    from lazydrift.recipes import load_recipe

    recipe = load_recipe(write_tiny(tmp_path / "r.toml", **KERNEL_ON))
    assert "kernel" not in cell_memory(load_recipe(write_tiny(tmp_path / "off.toml")), 64, ["hidden.1"])
    assert cell_memory(recipe, 64, ["hidden.1"])["kernel"] == kernel_memory(recipe, 64)
    held = {"bytes": 0}
    real = empirical._layer_kernel

    def counting(layer, deltas, n, batch_size):
        tensors = [t for args in layer.args for t in args if isinstance(t, torch.Tensor)] + layer.outputs + deltas
        held["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
        return real(layer, deltas, n, batch_size)

    monkeypatch.setattr(empirical, "_layer_kernel", counting)
    model = NTKMLP(50, 64, 50, seed=0)
    empirical.structured_ntk(model, torch.arange(30), output="random")
    assert held["bytes"] <= kernel_memory(recipe, 64) <= 2 * held["bytes"] + 8 * 30 * 30 * 8 + 30 * 50 * 8
