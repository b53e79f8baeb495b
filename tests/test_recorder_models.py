"""DriftRecorder on real models, each checked against features taken by hand (the modules called
directly, no hooks) and drift computed by hand in float64.

Tolerances: the hand route runs the same operations on the same chunks as the probe pass, so the
features agree to float32 rounding at most; the recorder computes l2 in float32 with pairwise
summation (relative error ~ log2(n) u < 1e-6 for n <= 2^16 features, u = 6e-8), hence rtol 1e-5.
"""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from lazydrift import DriftRecorder

L2_RTOL = 1e-5


def drift_by_hand(h: torch.Tensor, h0: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(l2, linf) per probe in float64."""
    d = (h.double() - h0.double()).flatten(1)
    return d.norm(dim=1).numpy(), d.abs().amax(dim=1).numpy()


def assert_drift(rec: DriftRecorder, step: int, layer: str, h: torch.Tensor, h0: torch.Tensor) -> None:
    rows = rec.frame().query("step == @step and layer == @layer").sort_values("probe")
    l2, linf = drift_by_hand(h, h0)
    assert len(rows) == len(l2) and (l2 > 0).all()
    np.testing.assert_allclose(rows.l2, l2, rtol=L2_RTOL)
    np.testing.assert_allclose(rows.linf, linf, rtol=L2_RTOL)


def sgd_step(model: nn.Module, loss: torch.Tensor, lr: float = 0.1) -> None:
    model.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)
    model.zero_grad(set_to_none=True)


def in_chunks(fn, x: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    parts = [fn(chunk) for chunk in x.split(size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# -- torchvision resnet18 -------------------------------------------------------------------------
@pytest.mark.slow  # convolutions: 2 s to 14 s here, with the load; the fast tier has test_features' shared module
def test_resnet18_block_outputs_and_the_reused_relu_per_call():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=g)  # chunks of 2 and 1

    def by_hand(chunk):  # block by block; BasicBlock's two calls of self.relu spelled out
        model.eval()
        with torch.no_grad():
            h = model.maxpool(model.relu(model.bn1(model.conv1(chunk))))
            h3 = model.layer3(model.layer2(model.layer1(h)))
            y = model.layer4[0](h3)
            block = model.layer4[1]
            r0 = block.relu(block.bn1(block.conv1(y)))
            r1 = block.relu(block.bn2(block.conv2(r0)) + y)
        return {"layer3": h3, "layer4.1.relu#0": r0, "layer4.1.relu#1": r1}

    hand0 = in_chunks(by_hand, x, 2)
    model.train()
    rec = DriftRecorder(model, layers=["layer3", "layer4.1.relu"], probes=x, probe_batch_size=2)
    with rec:
        assert rec.layers == ["layer3", "layer4.1.relu#0", "layer4.1.relu#1"]
        for name, h in hand0.items():
            torch.testing.assert_close(rec.h0[name], h.flatten(1))
        xt, yt = torch.randn(4, 3, 32, 32, generator=g), torch.randint(10, (4,), generator=g)
        sgd_step(model, F.cross_entropy(model(xt), yt))  # train mode: batch norm statistics move too
        buffers = [b.clone() for b in model.buffers()]
        rec.record(1)
        assert all(m.training for m in model.modules())  # train flags restored
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # running statistics untouched
    hand1 = in_chunks(by_hand, x, 2)
    for name in hand0:
        assert_drift(rec, 1, name, hand1[name], hand0[name])


# -- nn.TransformerEncoder, batch-first and sequence-first --------------------------------------------
def encoder(batch_first: bool) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


class Classifier(nn.Module):
    """Batch-first inputs (probes, time, features); the encoder inside is batch- or sequence-first."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.encoder = encoder(batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if self.batch_first:
            return self.head(self.encoder(x).mean(1))
        return self.head(self.encoder(x.transpose(0, 1)).mean(0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder(batch_first):
    torch.manual_seed(0)
    model = Classifier(batch_first)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 8, generator=g)  # time = probes per chunk: a sequence-first output has the probes' shape
    layers = ["encoder.layers.0", "encoder.layers.1"]
    if not batch_first:
        with pytest.raises(ValueError, match="layer encoder.layers.0: .*shape .*first dimension must index the inputs"):
            with DriftRecorder(model, layers=layers, probes=x):
                pass
    select = None if batch_first else {name: (lambda out: out.transpose(0, 1)) for name in layers}

    def by_hand(chunk):
        model.eval()
        with torch.no_grad():
            h = chunk if batch_first else chunk.transpose(0, 1)
            h0 = model.encoder.layers[0](h)
            h1 = model.encoder.layers[1](h0)
        return {"encoder.layers.0": h0, "encoder.layers.1": h1} if batch_first else \
            {"encoder.layers.0": h0.transpose(0, 1), "encoder.layers.1": h1.transpose(0, 1)}

    hand0 = by_hand(x)
    rec = DriftRecorder(model, layers=layers, probes=x, select=select)
    model.train()
    with rec:
        sgd_step(model, F.cross_entropy(model(torch.randn(6, 4, 8, generator=g)), torch.randint(3, (6,), generator=g)))
        rec.record(1)
    hand1 = by_hand(x)
    for name in layers:
        assert_drift(rec, 1, name, hand1[name], hand0[name])


def test_sequence_first_encoder_fed_probes_first_is_caught_by_value():
    """The shapes agree (the encoder reads the probes as time steps) but rows mix probes."""
    torch.manual_seed(0)
    model = encoder(batch_first=False)
    x = torch.randn(5, 3, 8)
    with pytest.raises(ValueError, match=r"layer layers.0: the first dimension of its output does not index the "
                                         r"inputs: a pass of inputs \[4, 0\] alone .* mixes inputs"):
        with DriftRecorder(model, layers=["layers.0"], probes=x):
            pass


# -- sequence-first nn.LSTM and nn.MultiheadAttention with select= ------------------------------------
class Tagger(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.seq = nn.LSTM(4, 8) if kind == "lstm" else nn.MultiheadAttention(4, 2)  # sequence-first defaults
        self.head = nn.Linear(8 if kind == "lstm" else 4, 3)

    def forward(self, x):
        s = x.transpose(0, 1)
        out = self.seq(s)[0] if self.kind == "lstm" else self.seq(s, s, s)[0]
        return self.head(out[-1])


@pytest.mark.parametrize("kind", ["lstm", "attention"])
def test_sequence_first_layer_with_select(kind):
    torch.manual_seed(0)
    model = Tagger(kind)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 5, 4, generator=g)  # time 5 = probes per chunk: recorded silently before
    with pytest.raises(ValueError, match=r"layer seq: its output \(the first element of the tuple it returns\) has "
                                         r"shape \(5, 2, .*select=\{'seq': lambda out: out\[0\].transpose\(0, 1\)\}"):
        with DriftRecorder(model, layers=["seq"], probes=x, probe_batch_size=5):
            pass

    def by_hand(chunk):
        model.eval()
        with torch.no_grad():
            s = chunk.transpose(0, 1)
            out = model.seq(s)[0] if kind == "lstm" else model.seq(s, s, s)[0]
        return out.transpose(0, 1)

    h0 = by_hand(x)
    rec = DriftRecorder(model, layers=["seq"], probes=x, probe_batch_size=5,
                        select={"seq": lambda out: out[0].transpose(0, 1)})
    with rec:
        model.train()
        sgd_step(model, F.cross_entropy(model(torch.randn(6, 5, 4, generator=g)), torch.randint(3, (6,), generator=g)))
        rec.record(1)
    assert_drift(rec, 1, "seq", by_hand(x), h0)


# -- several inputs: a tuple, a list, a dict ---------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(2, 5)
        self.mix = nn.Tanh()
        self.out = nn.Linear(5, 1)

    def forward(self, a, b):
        return self.out(self.mix(self.a(a) + self.b(b)))


@pytest.mark.parametrize("form", [tuple, list])
def test_two_input_model_with_tuple_or_list_probes(form):
    torch.manual_seed(0)
    model = TwoInputs()
    a, b = torch.randn(6, 3), torch.randn(6, 2)

    def by_hand():
        with torch.no_grad():
            return torch.tanh(model.a(a) + model.b(b))

    h0 = by_hand()
    rec = DriftRecorder(model, layers=["mix"], probes=form([a, b]), probe_batch_size=4)
    with rec:
        sgd_step(model, model(torch.randn(8, 3), torch.randn(8, 2)).pow(2).mean(), lr=0.5)
        rec.record(1)
    assert_drift(rec, 1, "mix", by_hand(), h0)


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.act = nn.ReLU()
        self.out = nn.Linear(6, 2)

    def forward(self, *, tokens, weights):
        return self.out(self.act((self.emb(tokens) * weights[..., None]).sum(1)))


def test_dict_input_model_casts_floating_probes_to_the_model_dtype():
    torch.manual_seed(0)
    model = Bag()
    tokens = torch.randint(10, (5, 3))
    weights = torch.rand(5, 3, dtype=torch.float64)  # cast to float32, the model's dtype

    def by_hand():
        with torch.no_grad():
            return torch.relu((model.emb(tokens) * weights.float()[..., None]).sum(1))

    h0 = by_hand()
    rec = DriftRecorder(model, layers=["act"], probes={"tokens": tokens, "weights": weights})
    assert rec.probes.kwargs["weights"].dtype == torch.float32
    with rec:
        sgd_step(model, model(tokens=torch.randint(10, (8, 3)), weights=torch.rand(8, 3)).pow(2).mean(), lr=0.5)
        rec.record(1)
    assert_drift(rec, 1, "act", by_hand(), h0)


# -- dtypes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_statistics(dtype):
    """The probe pass is the same half-precision computation as by hand; differences of two
    16-bit numbers are exact in float32, so only the float32 norm rounds (and the float64 Gram
    terms agree to float64 rounding)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)).to(dtype)
    x = torch.randn(5, 6)  # float32 probes: cast to the model's dtype

    def by_hand():
        with torch.no_grad():
            return model[1](model[0](x.to(dtype)))

    h0 = by_hand()
    rec = DriftRecorder(model, layers=["1"], probes=x, pairs="all")
    with rec:
        assert rec.h0["1"].dtype == torch.float32
        sgd_step(model, model(torch.randn(8, 6).to(dtype)).float().pow(2).mean(), lr=0.5)
        rec.record(1)
    h = by_hand()
    assert_drift(rec, 1, "1", h, h0)
    gram = rec.gram_frame()
    H = h.double().numpy()
    np.testing.assert_allclose(gram.inner, (H[gram.i] * H[gram.j]).sum(1), rtol=1e-12)


def test_float64_probes_on_a_float32_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        h0 = torch.tanh(model[0](x.float()))
    rec = DriftRecorder(model, layers=["1"], probes=x)
    with rec:
        torch.testing.assert_close(rec.h0["1"], h0)
        sgd_step(model, model(torch.randn(8, 4)).pow(2).mean(), lr=0.5)
        rec.record(1)
    with torch.no_grad():
        assert_drift(rec, 1, "1", torch.tanh(model[0](x.float())), h0)



def test_the_probes_follow_a_model_cast_after_the_recorder_was_built():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    rec = DriftRecorder(model, layers=["1"], probes=x)  # built on the float32 model
    model.double()
    with torch.no_grad():
        h0 = torch.tanh(model[0](x.double()))
    with rec:
        assert rec.h0["1"].dtype == torch.float64  # the statistics of a float64 model are float64
        torch.testing.assert_close(rec.h0["1"], h0, rtol=0, atol=0)
        sgd_step(model, model(torch.randn(8, 4, dtype=torch.float64)).pow(2).mean(), lr=0.5)
        rec.record(1)
    with torch.no_grad():
        assert_drift(rec, 1, "1", torch.tanh(model[0](x.double())), h0)

# -- wrappers ----------------------------------------------------------------------------------------
def test_data_parallel_on_cpu_takes_the_users_names_and_pickles_inside_the_block():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    dp = nn.DataParallel(net)  # without GPUs it runs the module itself
    x = torch.randn(5, 4)
    with torch.no_grad():
        h0 = {"0": net[0](x), "1": net[1](net[0](x))}
    rec = DriftRecorder(dp, layers=["module.0", "1"], probes=x)
    with rec:
        assert rec.layers == ["0", "1"]
        sgd_step(dp, dp(torch.randn(8, 4)).pow(2).mean(), lr=0.5)
        rec.record(1)
        for clone in (pickle.loads(pickle.dumps(dp)), copy.deepcopy(dp)):
            assert all(not m._forward_hooks for m in clone.modules())
        buffer = io.BytesIO()
        torch.save(dp, buffer)
    with torch.no_grad():
        h = {"0": net[0](x), "1": net[1](net[0](x))}
    for name in h:
        assert_drift(rec, 1, name, h[name], h0[name])
    assert repr(rec) == ("DriftRecorder(model=DataParallel, layers=['0', '1'], probes=(5, 4) float32, pairs=10, "
                         "records=1 (steps 1..1), h_0 captured)")


@pytest.mark.slow  # starts a one-process gloo group
def test_distributed_data_parallel_takes_the_users_names(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        ddp = nn.parallel.DistributedDataParallel(net)
        x = torch.randn(5, 4)
        with torch.no_grad():
            h0 = net[1](net[0](x))
        rec = DriftRecorder(ddp, layers=["module.1"], probes=x)
        with rec:
            assert rec.layers == ["1"]
            sgd_step(ddp, ddp(torch.randn(8, 4)).pow(2).mean(), lr=0.5)
            rec.record(1)
            assert all(not m._forward_hooks for m in pickle.loads(pickle.dumps(ddp)).modules())
        with torch.no_grad():
            assert_drift(rec, 1, "1", net[1](net[0](x)), h0)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_torch_compile_takes_the_users_names():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    compiled = torch.compile(net)
    x = torch.randn(5, 4)
    with torch.no_grad():
        h0 = net[1](net[0](x))
    rec = DriftRecorder(compiled, layers=["1", "_orig_mod.0"], probes=x)
    with rec:
        assert rec.layers == ["1", "0"]
        for _ in range(2):
            sgd_step(compiled, compiled(torch.randn(8, 4)).pow(2).mean(), lr=0.5)
            rec.record(_ + 1)
    with torch.no_grad():
        assert_drift(rec, 2, "1", net[1](net[0](x)), h0)


# -- no side effects ---------------------------------------------------------------------------------
class Noisy(nn.Module):
    """Samples noise in every forward pass, train or eval (a noisy net)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)
        self.noisy = nn.Identity()

    def forward(self, x):
        h = self.noisy(self.act(self.fc1(x)) + 0.1 * torch.randn(x.shape[0], 16))
        return self.fc2(h)


def _train_noisy(model: Noisy, rec: DriftRecorder | None = None) -> None:
    for step in range(1, 5):
        sgd_step(model, model(torch.randn(8, 4)).pow(2).mean(), lr=0.5)
        if rec is not None:
            rec.record(step)


def test_noisy_forward_trains_bit_identically_with_and_without_the_recorder():
    torch.manual_seed(0)
    a = Noisy()
    b = copy.deepcopy(a)
    probes = torch.randn(6, 4)
    torch.manual_seed(123)
    with DriftRecorder(a, layers=["act", "noisy"], probes=probes) as rec:
        rec.record(0)
        _train_noisy(a, rec)
    state_a = torch.get_rng_state()
    torch.manual_seed(123)
    _train_noisy(b)
    assert torch.equal(state_a, torch.get_rng_state())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # every probe pass draws the same noise: an untouched model shows no drift, noise included
    assert (rec.frame().query("step == 0").l2 == 0).all()
    assert (rec.frame().query("step == 4").l2 > 0).all()


def test_the_callers_probes_can_change_in_place():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    x = torch.randn(5, 4)
    with torch.no_grad():
        h0 = model(x)
    rec = DriftRecorder(model, layers=["1"], probes=x)
    x.mul_(3)  # before entering: h_0 is still that of the original probes
    with rec:
        torch.testing.assert_close(rec.h0["1"], h0)
        x.normal_()  # the caller reuses its buffer while the recorder runs
        rec.record(1)
    assert (rec.frame().l2 == 0).all()


class MovingAverage(nn.Module):
    """Updates a moving average and a counter in every forward pass, in train and eval mode alike,
    after using the average in its output (buffers the probe and kernel passes must not move; each
    probe's output still depends on that probe alone)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)
        self.register_buffer("average", torch.zeros(16))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        h = self.act(self.fc1(x))
        out = self.fc2(h - self.average)
        self.average.mul_(0.5).add_(0.5 * h.detach().mean(0))
        self.calls += 1
        return out


def test_buffers_updated_in_every_forward_train_bit_identically_with_and_without_the_recorder():
    torch.manual_seed(0)
    a = MovingAverage()
    b = copy.deepcopy(a)
    probes = torch.randn(6, 4)
    torch.manual_seed(123)
    with DriftRecorder(a, layers=["act"], probes=probes, ntk_probes=4) as rec:  # probe and kernel passes
        rec.record(0)
        _train_noisy(a, rec)
    torch.manual_seed(123)
    _train_noisy(b)
    # the reference is the same training without any probe pass: four forward passes, same weights
    assert int(b.calls) == 4 and int(a.calls) == 4
    torch.testing.assert_close(a.average, b.average, rtol=0, atol=0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_probes_that_require_grad_are_copied_as_data():
    # the recorder's copy kept an autograd link to the caller's tensor: deepcopy(rec) failed
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    x = torch.randn(5, 4, requires_grad=True)
    rec = DriftRecorder(model, layers=["1"], probes=x)
    assert not rec.probes.single.requires_grad and rec.probes.single.grad_fn is None
    twin = copy.deepcopy(rec)
    with torch.no_grad():
        h0 = torch.tanh(model[0](x))
    for r in (rec, twin):
        with r:
            torch.testing.assert_close(r.h0["1"], h0, rtol=0, atol=0)
    assert x.grad is None
