"""DriftRecorder: metric math by hand, and each clause of the recorder's contract (the matrix of
real models is in test_recorder_models.py)."""

import copy
import io
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lazydrift import NTKMLP, DriftRecorder, fused_sgd, log_schedule, mse_loss
from lazydrift import metrics


def test_drift_norms_by_hand():
    h0 = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    h = torch.tensor([[4.0, 6.0, 3.0], [0.0, -2.0, 0.0], [1.0, 1.0, 1.0]])
    l2, linf, ratio = metrics.drift_norms(h, h0)
    # row 0: delta (3, 4, 0): l2 5, linf 4, ratio 1.25; row 1: (0, -2, 0): 2, 2, 1; row 2: zero
    torch.testing.assert_close(l2, torch.tensor([5.0, 2.0, 0.0]))
    torch.testing.assert_close(linf, torch.tensor([4.0, 2.0, 0.0]))
    assert ratio[0] == pytest.approx(1.25) and ratio[1] == pytest.approx(1.0) and torch.isnan(ratio[2])
    mean_abs, max_abs = metrics.neuron_deviation(h, h0)
    torch.testing.assert_close(mean_abs, torch.tensor([1.0, 2.0, 0.0]))
    torch.testing.assert_close(max_abs, torch.tensor([3.0, 4.0, 0.0]))


def test_gram_terms_add_up_and_match_numpy():
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(6, 50, generator=g)
    h = h0 + 0.1 * torch.randn(6, 50, generator=g)
    i, j = metrics.all_pairs(6)
    t = metrics.gram_terms(h0, h, torch.as_tensor(i), torch.as_tensor(j))
    H0, H = h0.double().numpy(), h.double().numpy()
    D = H - H0
    np.testing.assert_allclose(t["inner"], (H[i] * H[j]).sum(1), rtol=1e-12)
    np.testing.assert_allclose(t["inner0"] + t["cross"] + t["quadratic"], t["inner"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t["cross"], (H0[i] * D[j]).sum(1) + (D[i] * H0[j]).sum(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t["quadratic"], (D[i] * D[j]).sum(1), rtol=1e-12, atol=1e-12)
    cos = (H[i] * H[j]).sum(1) / np.linalg.norm(H[i], axis=1) / np.linalg.norm(H[j], axis=1)
    np.testing.assert_allclose(t["cosine"], cos, rtol=1e-12)


def test_pair_change_stats_by_hand():
    f = pd.DataFrame({"step": [0, 1, 2], "layer": "a", "i": 0, "j": 1, "inner": [2.0, 3.0, 1.5]})
    s = metrics.pair_change_stats(f).iloc[0]
    assert s.total_variation == pytest.approx(1.0 + 1.5)
    assert s.max_change == pytest.approx(1.0)
    assert s.rel_change == pytest.approx(0.5 / 2.0)


def _train(model, steps, rec=None, lr=0.5):
    g = torch.Generator().manual_seed(7)
    for step in range(1, steps + 1):
        x = torch.randint(model.in_features, (16,), generator=g)
        y = torch.randint(model.out_features, (16,), generator=g)
        with fused_sgd(model, lr):
            mse_loss(model(x), y).backward()
        if rec is not None:
            rec.record(step)


def test_recorder_does_not_change_training():
    a = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    b = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    probes = torch.arange(30)
    with DriftRecorder(a, probes=probes) as rec:
        _train(a, 5, rec)
    _train(b, 5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    x = torch.arange(30)
    assert torch.equal(a(x), b(x))
    # and the outputs with hooks attached equal those without
    with DriftRecorder(a, probes=probes):
        out_hooked = a(x)
    assert torch.equal(out_hooked, a(x))


def test_drift_values_match_a_manual_computation():
    model = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    probes = torch.tensor([0, 5, 9])
    h0 = model.hidden[0](probes)
    h0 = model.hidden[1](h0).detach().clone()
    with DriftRecorder(model, probes=probes) as rec:
        _train(model, 3, rec)
    with torch.no_grad():
        h = model.hidden[1](model.hidden[0](probes))
    last = rec.frame().query("step == 3")
    np.testing.assert_allclose(last.l2, (h - h0).norm(dim=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(last.linf, (h - h0).abs().amax(1).numpy(), rtol=1e-6)
    assert (last.l2 > 0).all()


def test_restores_train_eval_modes_and_evaluates_in_eval_mode():
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    rec = DriftRecorder(model, layers=["2"], probes=torch.randn(5, 4))
    with rec:
        rec.record(1)
        assert [m.training for m in model.modules()] == modes
        model[2].train()
        rec.record(2)  # dropout in train mode would change h; eval mode gives zero drift
        assert model[2].training
    assert (rec.frame().l2 == 0).all()


def test_no_hooks_on_the_model_inside_the_block_and_pickling_works():
    model = NTKMLP(10, 8, 3, seed=0)
    rec = DriftRecorder(model, probes=torch.arange(10))
    with pytest.raises(ZeroDivisionError):
        with rec:
            rec.record(0)
            # hooks exist only during a probe pass: the model saves, pickles and copies as it is
            assert all(not m._forward_hooks for m in model.modules())
            clone = pickle.loads(pickle.dumps(model))
            torch.save(model, io.BytesIO())
            assert torch.equal(copy.deepcopy(model)(torch.arange(10)), clone(torch.arange(10)))
            1 / 0
    with pytest.raises(RuntimeError, match="inside its `with` block"):
        rec.record(3)


def test_any_module_several_layers_and_early_stop():
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    calls = []
    model[4].register_forward_hook(lambda *a: calls.append(1))
    probes = torch.randn(7, 3)
    rec = DriftRecorder(model, layers=["1", "3"], probes=probes, probe_batch_size=3)
    with rec:
        with torch.no_grad():
            model[0].weight.add_(0.1)
        rec.record(1)
    # the readout ran once: the first chunk of the first pass runs to the end to count each module's
    # calls; the other 2 chunks of that pass, the check pass and the record's 3 chunks stop early
    assert calls == [1]
    f = rec.frame()
    assert set(f.layer) == {"1", "3"} and len(f) == 2 * 7
    expected = (torch.tanh(model[0](probes)) - rec.h0["1"]).norm(dim=1)
    np.testing.assert_allclose(f[f.layer == "1"].l2, expected.detach().numpy(), rtol=1e-6)


def test_h0_on_model_device_and_only_statistics_stored():
    model = NTKMLP(20, 64, 20, seed=0)
    rec = DriftRecorder(model, probes=torch.arange(20), pairs=None)
    with rec:
        for step in range(1, 11):
            rec.record(step)
    assert rec.h0["hidden.1"].device == model.readout.weight.device
    stored = sum(np.asarray(v).size for block in rec._drift for k, v in block.items() if k not in ("step", "layer"))
    assert stored == 10 * 20 * 3  # l2, linf, ratio per probe per record: no h_t kept
    assert len(rec.neurons()) == 64


def test_clear_errors_for_bad_layer_and_probes():
    model = NTKMLP(10, 8, 3, seed=0)
    with pytest.raises(ValueError, match="available: .*hidden.1"):
        DriftRecorder(model, layers=["hidden.7"], probes=torch.arange(10))
    with pytest.raises(ValueError, match=r"\(batch, 10\)"):
        DriftRecorder(model, probes=torch.randn(4, 9))
    with pytest.raises(ValueError, match="available"):
        DriftRecorder(nn.Sequential(nn.Linear(2, 2)), probes=torch.randn(3, 2))


def test_summary_uses_sample_sd_and_csv_columns(tmp_path):
    model = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    with DriftRecorder(model, probes=torch.arange(12)) as rec:
        _train(model, 2, rec)
    f, s = rec.frame(), rec.summary()
    last = f[f.step == 2]
    row = s[(s.step == 2) & (s.measure == "l2")].iloc[0]
    assert row["mean"] == pytest.approx(last.l2.mean())
    assert row["std"] == pytest.approx(np.std(last.l2.to_numpy(), ddof=1))
    assert row.n_probes == 12
    rec.to_csv(tmp_path)
    assert list(pd.read_csv(tmp_path / "drift.csv").columns) == ["step", "layer", "probe", "l2", "linf", "ratio"]
    assert list(pd.read_csv(tmp_path / "summary.csv").columns) == ["layer", "step", "measure", "mean", "std", "n_probes"]
    assert list(pd.read_csv(tmp_path / "neurons.csv").columns) == ["layer", "step", "neuron", "mean_abs_dev", "max_abs_dev"]
    gram = pd.read_csv(tmp_path / "gram.csv")  # 12 probes <= 256: all pairs by default
    assert list(gram.columns) == ["step", "layer", "i", "j", "inner", "cosine", "inner0", "cross", "quadratic"]
    assert len(gram[gram.step == 2]) == 12 * 11 // 2


def test_state_dict_round_trip():
    model = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    rec = DriftRecorder(model, probes=torch.arange(8))
    with rec:
        _train(model, 2, rec)
    other = DriftRecorder(model, probes=torch.arange(8))
    other.load_state_dict(rec.state_dict())
    pd.testing.assert_frame_equal(other.frame(), rec.frame())
    pd.testing.assert_frame_equal(other.gram_frame(), rec.gram_frame())
    with other:  # keeps the restored h_0 instead of capturing a new one
        assert torch.equal(other.h0["hidden.1"], rec.h0["hidden.1"])


def test_log_schedule():
    s = log_schedule(1000, 10)
    assert s[0] == 0 and s[-1] == 1000 and s == sorted(set(s))
    assert 1 in s and len(s) <= 12
    assert log_schedule(3, 30) == [0, 1, 2, 3]


def test_reentry_captures_h0_afresh_or_says_what_to_do():
    model = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    probes = torch.arange(6)
    rec = DriftRecorder(model, probes=probes)
    with rec:
        pass  # no records: a later entry simply captures h_0 again
    model.reset_parameters(seed=1)
    with rec:
        with torch.no_grad():
            expected = model.hidden[1](model.hidden[0](probes))
        torch.testing.assert_close(rec.h0["hidden.1"], expected, rtol=0, atol=0)  # the same computation
        rec.record(0)
    with rec:  # the model did not change: the recording continues
        rec.record(1)
    model.reset_parameters(seed=2)  # re-initialized: the stored rows belong to the old h_0
    with pytest.raises(RuntimeError, match=r"already holds records \(steps 0..1\).*rec.reset\(\).*load_state_dict"):
        with rec:
            pass
    rec.reset()
    with rec:
        rec.record(0)
    assert (rec.frame().l2 == 0).all() and list(rec.frame().step.unique()) == [0]


def test_a_step_is_recorded_once_and_is_an_integer():
    model = NTKMLP(10, 8, 3, seed=0)
    with DriftRecorder(model, probes=torch.arange(10)) as rec:
        rec.record(3)
        with pytest.raises(ValueError, match=r"record\(3\): step 3 is already recorded"):
            rec.record(3)
        with pytest.raises(TypeError, match="step must be an integer"):
            rec.record(1.5)
        with pytest.raises(TypeError, match="step must be an integer"):
            rec.record(True)
        rec.record(np.int64(4))
    f = rec.frame()
    assert f.groupby("step").size().to_dict() == {3: 10, 4: 10}
    assert rec.summary().query("step == 3 and measure == 'l2'").n_probes.item() == 10



def test_pairs_are_integer_probe_indices():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU())
    x = torch.randn(4, 3)
    for bad in ([(0.5, 1.7)], [(0, 1.0)], [("0", "1")]):  # never truncated to (0, 1)
        with pytest.raises(TypeError, match="integer probe indices"):
            DriftRecorder(model, layers=["1"], probes=x, pairs=bad)
    assert DriftRecorder(model, layers=["1"], probes=x, pairs=[]).pairs is None
    rec = DriftRecorder(model, layers=["1"], probes=x, pairs=[(np.int64(3), 0), torch.tensor([2, 1])])
    with rec:
        rec.record(0)
    g = rec.gram_frame()
    with torch.no_grad():
        h = model(x).double()
    assert g[["i", "j"]].values.tolist() == [[3, 0], [2, 1]]
    np.testing.assert_allclose(g.inner, [h[3] @ h[0], h[2] @ h[1]], rtol=1e-12)

def test_memory_guard_refuses_with_the_estimate():
    model = NTKMLP(5000, 8, 2, seed=0)
    with pytest.raises(ValueError, match=r"would store 12,497,500 Gram rows \(12,497,500 probe pairs x 1 layer.*"
                                         r"about 0.50 GB.*max_gram_rows=10,000,000.*pairs=k .*k = 4472"):
        DriftRecorder(model, probes=torch.arange(5000), pairs="all")
    # the budget counts every record: 45 pairs a record, a budget of 100 rows holds two records
    rec = DriftRecorder(model, probes=torch.arange(10), pairs="all", max_gram_rows=100)
    with rec:
        rec.record(0)
        rec.record(1)
        with pytest.raises(RuntimeError, match=r"record\(2\) would store 135 Gram rows .*90 stored so far"):
            rec.record(2)
    assert len(rec.gram_frame()) == 90 and rec.frame().step.max() == 1
    # 4472 * 4471 / 2 = 9,997,156 <= 10M < 4473 * 4472 / 2: the suggested k is the largest that fits
    assert 4472 * 4471 // 2 <= 10_000_000 < 4473 * 4472 // 2
    assert len(DriftRecorder(model, probes=torch.arange(20), pairs=5).pairs[0]) == 10


def test_own_statistics_and_the_coordinate_check(tmp_path):
    model = NTKMLP(30, 40, 30, input_scale="embedding", seed=0)
    probes = torch.arange(7)
    stats = {"coord_abs_mean": metrics.coord_abs_mean, "cos0": lambda h, h0: torch.cosine_similarity(h, h0)}
    with DriftRecorder(model, probes=probes, stats=stats) as rec:
        _train(model, 2, rec)
    with torch.no_grad():
        h = model.hidden[1](model.hidden[0](probes)).double()
    h0 = rec.h0["hidden.1"].double()
    last = rec.frame().query("step == 2")
    np.testing.assert_allclose(last.coord_abs_mean, h.abs().mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(last.cos0, ((h * h0).sum(1) / h.norm(dim=1) / h0.norm(dim=1)).numpy(), rtol=1e-6)
    s = rec.summary()
    assert set(s.measure) == {"l2", "linf", "ratio", "coord_abs_mean", "cos0"}
    assert s.query("step == 2 and measure == 'coord_abs_mean'")["mean"].item() == pytest.approx(last.coord_abs_mean.mean())
    rec.to_csv(tmp_path)
    assert list(pd.read_csv(tmp_path / "drift.csv").columns)[-2:] == ["coord_abs_mean", "cos0"]
    with pytest.raises(ValueError, match=r"stats\['bad'\] returned shape \(1,\)"):
        with DriftRecorder(model, probes=probes, stats={"bad": lambda h, h0: h.sum().reshape(1)}) as bad:
            bad.record(0)
    with pytest.raises(ValueError, match="stats= key 'l2'"):
        DriftRecorder(model, probes=probes, stats={"l2": metrics.coord_abs_mean})


def test_per_call_layers_survive_a_checkpoint():
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
    shared = model[1]
    net = nn.Sequential(model[0], shared, nn.Linear(6, 6), shared)  # one Tanh, called twice
    probes = torch.randn(4, 3)
    rec = DriftRecorder(net, layers=["1"], probes=probes)
    with rec:
        rec.record(0)
    assert rec.layers == ["1#0", "1#1"]
    other = DriftRecorder(net, layers=["1"], probes=probes)
    other.load_state_dict(rec.state_dict())
    assert other.layers == ["1#0", "1#1"]
    with torch.no_grad():
        net[2].weight.add_(0.1)  # trained since the checkpoint: h_0 must not be captured again
    with other:
        torch.testing.assert_close(other.h0["1#1"], rec.h0["1#1"], rtol=0, atol=0)
        other.record(1)
    with torch.no_grad():
        t0 = torch.tanh(net[0](probes))
        expected = (torch.tanh(net[2](t0)) - rec.h0["1#1"]).norm(dim=1)
    np.testing.assert_allclose(other.frame().query("step == 1 and layer == '1#1'").l2, expected.numpy(), rtol=1e-5)
    assert (other.frame().query("step == 1 and layer == '1#0'").l2 == 0).all()


def test_fused_sgd_without_with_trains():
    a = NTKMLP(12, 16, 5, seed=1, dtype=torch.float64)
    b = NTKMLP(12, 16, 5, seed=1, dtype=torch.float64)
    x, y = torch.arange(12), torch.arange(12) % 5
    handle = fused_sgd(a, 0.3)  # as the README words it, no `with`: active until close()
    mse_loss(a(x), y).backward()
    opt = torch.optim.SGD(b.param_groups(0.3), lr=0.3)
    mse_loss(b(x), y).backward()
    opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
        assert pa.grad is None
    handle.close()
    before = [p.clone() for p in a.parameters()]
    mse_loss(a(x), y).backward()  # plain autograd again: gradients, no update
    assert all(torch.equal(p, q) and p.grad is not None for p, q in zip(a.parameters(), before))
    with fused_sgd(a, 0.1):
        with fused_sgd(a, 0.2):
            assert a.readout.sgd_lr == 0.2
        assert a.readout.sgd_lr == 0.1  # blocks nest
    assert a.readout.sgd_lr is None
    with pytest.raises(ValueError, match="lazydrift layers"):
        fused_sgd(nn.Linear(2, 2), 0.1)


def test_a_record_that_fails_part_way_stores_nothing():
    # a stats= function failing on the second layer left the first layer's rows of that step behind,
    # and calling record(step) again after fixing it duplicated them
    model = NTKMLP(10, 8, 3, hidden_layers=2, seed=0)
    calls = []

    def fails_once_on_the_second_layer(h, h0):
        calls.append(1)
        if len(calls) == 4:  # records 0: calls 1, 2; record 1: call 3 (hidden.0), 4 (hidden.1)
            raise ZeroDivisionError("a bug in the user's statistic")
        return h.abs().mean(dim=1)

    rec = DriftRecorder(model, layers=["hidden.0", "hidden.1"], probes=torch.arange(10), ntk_probes=4,
                        stats={"size": fails_once_on_the_second_layer})
    with rec:
        rec.record(0)
        with pytest.raises(ZeroDivisionError):
            rec.record(1)
        rec.record(1)
    f = rec.frame()
    assert f.groupby(["step", "layer"]).size().to_dict() == {(s, layer): 10 for s in (0, 1)
                                                            for layer in ("hidden.0", "hidden.1")}
    assert rec.gram_frame().groupby("step").size().to_dict() == {0: 2 * 45, 1: 2 * 45}
    assert rec.kernel_frame().step.tolist() == [0, 1]
