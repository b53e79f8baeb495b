"""lazydrift.features: the one feature extractor, checked against the modules called by hand."""

import sys

import pytest
import torch
from torch import nn

from lazydrift import NTKMLP, extract_features
from lazydrift.features import FeatureExtractor


class SharedTwice(nn.Module):
    """One Linear+ReLU block applied twice in a forward pass (a shared module)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.shared = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.shared(self.shared(self.inp(x))))


def _by_hand(model, x):
    with torch.no_grad():
        a = model.inp(x)
        b = model.shared(a)
        return a, b, model.shared(b)


def test_a_module_that_runs_twice_gives_one_output_per_call():
    torch.manual_seed(0)
    model = SharedTwice()
    x = torch.randn(7, 3)
    a, first, second = _by_hand(model, x)
    feats = extract_features(model, x, ["inp", "shared"], batch_size=3)  # chunks 3, 3, 1
    assert list(feats) == ["inp", "shared#0", "shared#1"]
    torch.testing.assert_close(feats["inp"], a, rtol=1e-6, atol=1e-7)  # chunking may reorder sums
    torch.testing.assert_close(feats["shared#0"], first, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(feats["shared#1"], second, rtol=1e-6, atol=1e-7)
    # name#k picks one call; a call the module never makes names the count
    only = extract_features(model, x, ["shared#1"])
    assert list(only) == ["shared#1"]
    torch.testing.assert_close(only["shared#1"], second, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match=r"shared#2: module shared runs 2 time\(s\).*#0 to #1"):
        extract_features(model, x, ["shared#2"])


def test_stops_after_the_last_requested_output_and_leaves_no_hooks():
    torch.manual_seed(0)
    model = SharedTwice()
    ran = []
    model.out.register_forward_hook(lambda *a: ran.append(1))
    extractor = FeatureExtractor(model, ["shared#0"], batch_size=2)
    extractor(torch.randn(6, 3))
    assert ran == []  # an explicit call index: every pass stops at it
    plain = FeatureExtractor(model, ["shared"], batch_size=2)
    plain(torch.randn(6, 3))
    assert ran == [1]  # a plain name: the first chunk runs to the end to count the calls, then stops
    assert plain.calls == {"shared": 2} and plain.names == ["shared#0", "shared#1"]
    assert all(len(m._forward_hooks) == (1 if m is model.out else 0) for m in model.modules())


def test_restores_flags_rng_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU())
    model.train()
    model[2].eval()
    modes = [m.training for m in model.modules()]
    stats = [b.clone() for b in model[1].buffers()]
    x = torch.randn(5, 4)
    rng = torch.get_rng_state()
    feats = extract_features(model, x, ["3"])
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(stats, model[1].buffers()))
    # evaluated in eval mode: batch norm with its running statistics, no dropout
    bn = model[1]
    expected = torch.relu((model[0](x) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(feats["3"], expected.detach(), rtol=1e-6, atol=1e-6)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return {"hidden": self.lin(x), "norm": self.lin(x).norm()}


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out["hidden"] if isinstance(out, dict) else out


def test_dict_and_scalar_outputs_name_the_layer_and_the_fix():
    torch.manual_seed(0)
    model = Wrapper(DictOut())
    x = torch.randn(5, 3)
    with pytest.raises(TypeError, match=r"layer inner returns a dict with keys \['hidden', 'norm'\].*select="):
        extract_features(model, x, ["inner"])
    feats = extract_features(model, x, ["inner"], select={"inner": lambda out: out["hidden"]})
    torch.testing.assert_close(feats["inner"], model.inner.lin(x).detach())
    scalar = Wrapper(nn.Sequential(nn.Linear(3, 4), nn.Flatten(0)))
    with pytest.raises(ValueError, match="layer inner.1: its output has shape"):  # (5*4,) is not (5, ...)
        extract_features(scalar, x, ["inner.1"])

    class Scalar(nn.Module):
        def forward(self, x):
            return x.sum()
    with pytest.raises(ValueError, match="layer inner returns a 0-d tensor"):
        extract_features(Wrapper(Scalar()), x, ["inner"])


def test_unknown_names_list_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['nope'\]; available: inp, shared, shared.0"):
        extract_features(SharedTwice(), torch.randn(2, 3), ["nope"])
    with pytest.raises(ValueError, match="call index"):
        extract_features(SharedTwice(), torch.randn(2, 3), ["shared#x"])
    with pytest.raises(ValueError, match="select= names 'inp'"):
        extract_features(SharedTwice(), torch.randn(2, 3), ["shared"], select={"inp": lambda o: o})
    # a ModuleList never runs itself: it was "did not run during the model's forward pass"
    with pytest.raises(ValueError, match=r"layer hidden is an nn.ModuleList, a container that never runs itself; "
                                         r"record its elements: hidden.0, hidden.1"):
        extract_features(NTKMLP(5, 4, 3), torch.arange(5), ["hidden"])
    # a model without submodules (an nn.GRU, an nn.Linear) listed nothing after "available:"
    with pytest.raises(ValueError, match=r"available: none \(the model has no submodules\); to record the model's "
                                         r"own output, wrap it: nn.Sequential\(model\) and layer '0'"):
        extract_features(nn.Linear(3, 2), torch.randn(2, 3), [""])
    x = torch.randn(2, 3)
    model = nn.Linear(3, 2)
    torch.testing.assert_close(extract_features(nn.Sequential(model), x, ["0"])["0"], model(x).detach(),
                               rtol=0, atol=0)  # the hint works


def test_inputs_of_different_lengths_are_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Identity()

        def forward(self, a, b):
            return self.act(a + b)
    with pytest.raises(ValueError, match=r"same first dimension.*inputs\[0\]: 3, inputs\[1\]: 4"):
        extract_features(Two(), (torch.randn(3, 2), torch.randn(4, 2)), ["act"])
    with pytest.raises(ValueError, match=r"inputs\['b'\] is a 0-d tensor"):
        extract_features(Two(), {"a": torch.randn(3, 2), "b": torch.tensor(1.0)}, ["act"])


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_an_error_of_the_model_says_which_inputs_it_was_given():
    # nn.Embedding's own message, "index out of range in self", names neither the probes nor the id
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    ids = torch.tensor([0, 3, 7, -1, 2])
    with pytest.raises(IndexError) as e:
        extract_features(model, ids, ["1"], batch_size=3)  # the second chunk holds the -1
    assert e.value.__notes__ == ["lazydrift: raised in a pass of the model (eval mode, no grad) on inputs 3 to 4 of "
                                 "5: (2,) int64, integer values in [-1, 2]"]
