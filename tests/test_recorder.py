"""DriftRecorder: metric math by hand, and each clause of the recorder's contract."""

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


def test_hooks_removed_on_exit_even_when_loop_raises():
    model = NTKMLP(10, 8, 3, seed=0)
    rec = DriftRecorder(model, probes=torch.arange(10))
    with pytest.raises(ZeroDivisionError):
        with rec:
            assert len(model.hidden[1]._forward_hooks) == 1
            1 / 0
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
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
    assert calls == []  # the readout never ran during probe passes
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
    stored = sum(np.asarray(v).size for rows in rec._drift for k, v in rows.items() if k != "layer")
    assert stored == 10 * 20 * 5  # step, probe, l2, linf, ratio per probe per record: no h_t kept
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
