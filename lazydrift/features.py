"""One feature extractor: the outputs of chosen layers of any ``nn.Module`` for given inputs.

The recorder's probe pass is this extractor, and everything else that needs hidden features
(the analogy evaluation, the noise floor, the tests) calls it too, so "the features of layer L
at inputs X" has one definition:

* **Names.** Layers are named as in ``model.named_modules()``. Wrappers are looked through:
  for ``torch.compile(model)``, ``nn.DataParallel`` and ``DistributedDataParallel`` the user's
  own names work, with or without the ``_orig_mod.`` / ``module.`` prefixes, and the pass runs
  the wrapped module itself (eagerly, on one device, with no collective calls).
* **Every call.** A module that runs several times in one forward pass (torchvision's
  ``BasicBlock`` calls ``self.relu`` twice, a shared block, an RNN cell in a loop) gives one
  output per call, named ``name#0``, ``name#1``, ...  A plain name means every call and keeps
  its plain form when the module runs once; ``name#k`` picks call k.  (torchvision's
  ``feature_extraction`` names the second call ``relu_1`` from an FX trace; here calls are
  counted by forward hooks, so untraceable models work too.)
* **Inputs first.** Each output's first dimension must index the inputs.  Every chunk is
  checked for it, and ``check=True`` also reruns a subset of the inputs alone and requires the
  same rows back, which catches layers that mix inputs while keeping the shape (attention or
  normalization across the batch, a sequence-first layer fed batch-first).  ``select`` maps a
  layer name to a function from the module's output to an inputs-first tensor: for tuples,
  dicts and sequence-first outputs (``lambda out: out[0].transpose(0, 1)`` for a
  sequence-first ``nn.LSTM``).  Without one, a tensor is taken as it is and a tuple or list by
  its first element; a dict or a 0-d tensor is an error naming the layer.
* **Any input form.** ``inputs`` is a tensor (``model(x)``), a tuple or list
  (``model(*inputs)``) or a dict (``model(**inputs)``); every tensor in it is split into chunks
  of ``batch_size`` along its first dimension, floating tensors are cast to the model's
  floating dtype and everything is moved to the model's device.
* **No side effects.** The pass runs in eval mode under ``torch.no_grad()`` and restores every
  submodule's train/eval flag and every buffer (a forward that updates a moving average or a
  counter whatever the mode leaves no trace); it forks the RNG of every device in use
  (``torch.random.fork_rng``) and seeds it with ``seed``, so the caller's RNG does not move and
  a model that samples noise in its forward sees the same noise on every pass; its forward
  hooks exist only while it runs, so nothing is left on the model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

Select = Callable[[object], torch.Tensor]


class _StopForward(BaseException):
    """Ends a pass once every requested output is captured (BaseException: not swallowed by a
    model's own ``except Exception``)."""


# -- wrappers, names ---------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The module that does the work inside torch.compile / DataParallel / DDP wrappers, and the
    name prefixes those wrappers add, outermost first."""
    prefixes = []
    while True:
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            prefixes.append("_orig_mod.")
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            prefixes.append("module.")
            model = model.module
        else:
            return model, prefixes


def parse_name(name: str) -> tuple[str, int | None]:
    """``"layer4.1.relu#1"`` -> ("layer4.1.relu", 1); a plain name -> (name, None): every call."""
    if not isinstance(name, str):
        raise TypeError(f"layer names are strings, got {name!r}")
    base, sep, call = name.partition("#")
    if not sep:
        return name, None
    if not call.isdigit():
        raise ValueError(f"layer {name!r}: after '#' comes the call index (0 for the first call, 1, ...)")
    return base, int(call)


def call_name(module_name: str, call: int) -> str:
    return f"{module_name}#{call}"


def model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def model_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (or buffer); None if it has none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


# -- inputs ------------------------------------------------------------------------------------------
class Batch:
    """Inputs in one of three forms, as ``model(*args, **kwargs)`` takes them, rows along dim 0."""

    def __init__(self, inputs, what: str = "inputs"):
        if isinstance(inputs, torch.Tensor):
            self.args, self.kwargs = (inputs,), {}
        elif isinstance(inputs, Mapping):
            self.args, self.kwargs = (), dict(inputs)
        elif isinstance(inputs, (tuple, list)):
            self.args, self.kwargs = tuple(inputs), {}
        else:
            raise TypeError(f"{what} must be a tensor, a tuple or list of tensors (model(*{what})) or a dict of "
                            f"tensors (model(**{what})); got {type(inputs).__name__}")
        tensors = {label: t for label, t in self._labelled() if isinstance(t, torch.Tensor)}
        if not tensors:
            raise ValueError(f"{what} holds no tensor: give at least one tensor whose first dimension indexes them")
        sizes = {}
        for label, t in tensors.items():
            if t.dim() == 0:
                raise ValueError(f"{what}{label} is a 0-d tensor: every tensor needs a first dimension that indexes "
                                 "the inputs (wrap a tensor shared by all inputs into the model instead)")
            sizes[label] = t.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{what}: every tensor must have the same first dimension (the number of inputs); got "
                             + ", ".join(f"{what}{k}: {v}" for k, v in sizes.items())
                             + " (wrap a tensor shared by all inputs into the model instead)")
        self.n = next(iter(sizes.values()))
        if self.n == 0:
            raise ValueError(f"{what} is empty: its first dimension must be at least 1")
        self.single = self.args[0] if isinstance(inputs, torch.Tensor) else None

    def _labelled(self):
        yield from ((f"[{k}]", t) for k, t in enumerate(self.args))
        yield from ((f"[{k!r}]", t) for k, t in self.kwargs.items())

    def _map(self, fn) -> "Batch":
        out = Batch.__new__(Batch)
        out.args = tuple(fn(t) if isinstance(t, torch.Tensor) else t for t in self.args)
        out.kwargs = {k: fn(t) if isinstance(t, torch.Tensor) else t for k, t in self.kwargs.items()}
        out.single = out.args[0] if self.single is not None else None
        first = next(t for t in (*out.args, *out.kwargs.values()) if isinstance(t, torch.Tensor))
        out.n = first.shape[0]
        return out

    def to(self, device: torch.device, float_dtype: torch.dtype | None, copy: bool = False) -> "Batch":
        """Moved to ``device``, floating tensors cast to ``float_dtype``; ``copy`` forces a private copy."""
        def move(t):
            dtype = float_dtype if (float_dtype is not None and t.is_floating_point()) else t.dtype
            # detached: inputs are data; a copy of an input that requires grad would keep the caller's graph
            return t.detach().to(device=device, dtype=dtype, copy=copy)
        return self._map(move)

    def rows(self, index) -> "Batch":
        """The inputs ``index`` selects (a slice or an index tensor)."""
        if isinstance(index, slice):
            return self._map(lambda t: t[index])
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def __call__(self, model: nn.Module):
        return model(*self.args, **self.kwargs)

    def describe(self) -> str:
        parts = [f"{k}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for k, t in self._labelled()
                 if isinstance(t, torch.Tensor)]
        return parts[0].split(": ", 1)[1] if self.single is not None else "{" + ", ".join(parts) + "}"


@contextlib.contextmanager
def own_rng(devices: Sequence[torch.device], seed: int | None) -> Iterator[None]:
    """Fork the RNG of the CPU and of every CUDA device in ``devices``; seed them with ``seed``."""
    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in devices if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
        yield


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Every buffer of ``model`` holds its entry value again on exit.

    Eval mode stops batch norm from updating its statistics, but a forward pass may update
    other buffers whatever the mode (an exponential moving average, a step counter, a cache);
    a measurement pass must leave no trace of them in training.  Buffers changed in place are
    copied back and buffers the forward reassigned are put back.
    """
    saved = [(module, name, buffer, buffer._version, buffer.detach().clone())
             for module in model.modules() for name, buffer in module._buffers.items() if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, buffer, version, value in saved:
                module._buffers[name] = buffer
                if buffer._version != version:
                    buffer.copy_(value)


@contextlib.contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every submodule's own train/eval flag and every buffer
    (:func:`preserved_buffers`) restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), preserved_buffers(model):
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def match_tolerance(dtype: torch.dtype) -> float:
    """Largest relative difference, max|a - b| / max|b|, between an output row computed in a
    batched pass and in a pass of fewer inputs that still counts as the same row.

    The two differ only by the order of floating-point sums (a few units of eps per layer,
    growing like sqrt(depth) for random rounding), far below sqrt(eps) for any practical depth;
    a layer that mixes inputs changes a row by O(1).  sqrt(eps): 3.5e-4 in float32, 0.088 in
    bfloat16, 0.031 in float16.
    """
    return math.sqrt(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def _integer_ranges(batch: Batch) -> str:
    """", ids in [lo, hi]" for each integer tensor of ``batch`` (token ids out of range are a common cause)."""
    ranges = [f"[{int(t.min())}, {int(t.max())}]" for t in (*batch.args, *batch.kwargs.values())
              if isinstance(t, torch.Tensor) and t.numel() and not t.is_floating_point() and not t.is_complex()
              and t.dtype != torch.bool]
    return f", integer values in {', '.join(ranges)}" if ranges else ""


# -- the extractor -----------------------------------------------------------------------------------
class FeatureExtractor:
    """Chosen layers' outputs of ``model`` for any inputs (see the module docstring).

    Args:
        model: any ``nn.Module`` (torch.compile / DataParallel / DDP wrappers are looked through).
        layers: module names, ``name#k`` for the k-th call of a module that runs several times.
        select: layer name -> function from that module's output to an inputs-first tensor.
        batch_size: inputs per forward pass.
        dtype: cast the outputs to this dtype (None: as the model produces them).
        flatten: return (inputs, features) matrices instead of the outputs' own shapes.
        stop_early: end each pass once every requested output is captured (after the first
            pass, which runs to the end to count how often each module runs).
        seed: the RNG seed of every pass (None: fork the RNG but do not seed it).
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str], *,
                 select: Mapping[str, Select] | None = None, batch_size: int = 1024,
                 dtype: torch.dtype | None = None, flatten: bool = False, stop_early: bool = True,
                 seed: int | None = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.root, self._prefixes = unwrap(model)
        self._modules = dict(self.root.named_modules())
        if isinstance(layers, str):
            layers = [layers]
        requests = [self._resolve(name) for name in dict.fromkeys(layers)]
        unknown = [name for name, r in zip(dict.fromkeys(layers), requests) if r is None]
        if unknown:
            hint = ("; to record the model's own output, wrap it: nn.Sequential(model) and layer '0'"
                    if "" in unknown or not self.available() else "")
            available = ", ".join(self.available()) or "none (the model has no submodules)"
            raise ValueError(f"unknown layer name(s) {unknown}; available: {available}{hint}")
        if not requests:
            raise ValueError("layers= must name at least one module")
        containers = [m for m, _ in requests if isinstance(self._modules[m], (nn.ModuleList, nn.ModuleDict))]
        if containers:  # they hold modules but never run themselves, so no hook on them ever fires
            name = containers[0]
            children = [f"{name}.{child}" for child, _ in self._modules[name].named_children()]
            raise ValueError(f"layer {name} is an nn.{type(self._modules[name]).__name__}, a container that never runs "
                             f"itself; record its elements: {', '.join(children) or '(it is empty)'}")
        self._requests: list[tuple[str, int | None]] = list(dict.fromkeys(requests))
        self._select: dict[tuple[str, int | None], Select] = {}
        for name, fn in (select or {}).items():
            key = self._resolve(name)
            if key is None or not any(m == key[0] for m, _ in self._requests):
                raise ValueError(f"select= names {name!r}, which is not one of the recorded layers "
                                 f"{[self.display(m, c) for m, c in self._requests]}")
            if not callable(fn):
                raise TypeError(f"select[{name!r}] must be a function from the module's output to a tensor")
            self._select[key] = fn
        self.batch_size, self.dtype, self.flatten = batch_size, dtype, flatten
        self.stop_early, self.seed = stop_early, seed
        self.calls: dict[str, int] = {}  # module name -> calls per forward pass, learned on the first pass

    # names ---------------------------------------------------------------------------------------
    def available(self) -> list[str]:
        return [name for name in self._modules if name]

    def _resolve(self, name: str) -> tuple[str, int | None] | None:
        base, call = parse_name(name)
        candidates = [base]
        for prefix in self._prefixes:  # the user may spell the wrappers' prefixes or not
            if candidates[-1].startswith(prefix):
                candidates.append(candidates[-1][len(prefix):])
        for candidate in candidates:
            if candidate and candidate in self._modules:
                return candidate, call
        return None

    def display(self, module_name: str, call: int | None) -> str:
        return module_name if call is None else call_name(module_name, call)

    def _targets(self) -> list[tuple[str, int]] | None:
        """Every (module, call) to capture, in the order asked; None until call counts are known."""
        out = []
        for module_name, call in self._requests:
            if call is not None:
                out.append((module_name, call))
            elif module_name in self.calls:
                out.extend((module_name, c) for c in range(self.calls[module_name]))
            else:
                return None
        return list(dict.fromkeys(out))

    def _key(self, module_name: str, call: int) -> str:
        plain = (module_name, None) in self._requests and (module_name, call) not in self._requests
        return module_name if plain and self.calls.get(module_name) == 1 else call_name(module_name, call)

    @property
    def names(self) -> list[str] | None:
        """The output names (``name#k`` for modules that run several times); None before the first pass."""
        targets = self._targets()
        return None if targets is None else [self._key(m, c) for m, c in targets]

    # one pass --------------------------------------------------------------------------------------
    def _select_output(self, module_name: str, call: int, output, size: int) -> torch.Tensor:
        once = call == 0 and self.calls.get(module_name, 1) == 1
        label = f"layer {module_name if once else call_name(module_name, call)}"
        fn = self._select.get((module_name, call), self._select.get((module_name, None)))
        hint = f"select={{'{module_name}': lambda out: ...}}"
        took = ""
        if fn is not None:
            h = fn(output)
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"{label}: select returned {type(h).__name__}; it must return a tensor whose first "
                                "dimension indexes the inputs")
            took = " (after select)"
        elif isinstance(output, torch.Tensor):
            h = output
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            h, took = output[0], f" (the first element of the {type(output).__name__} it returns)"
            hint = f"select={{'{module_name}': lambda out: out[0].transpose(0, 1)}}"
        elif isinstance(output, Mapping):
            raise TypeError(f"{label} returns a {type(output).__name__} with keys {list(output)}; pick the tensor to "
                            f"record with select={{'{module_name}': lambda out: out[KEY]}}")
        else:
            raise TypeError(f"{label} returns {type(output).__name__}; pick the tensor to record with {hint}")
        if h.dim() == 0:
            raise ValueError(f"{label} returns a 0-d tensor{took} (one number per pass, not one row per input); "
                             f"record a layer whose output has the inputs along its first dimension, or use {hint}")
        if h.shape[0] != size:
            if fn is None and hint.endswith("...}"):
                hint = f"select={{'{module_name}': lambda out: out.transpose(0, 1)}}"
            raise ValueError(f"{label}: its output{took} has shape {tuple(h.shape)} in a pass of {size} input(s): "
                             "the first dimension must index the inputs. A sequence-first output (time, batch, ...) "
                             f"needs {hint}")
        return h

    def _pass(self, batch: Batch) -> dict[tuple[str, int], torch.Tensor]:
        """Outputs of every requested (module, call) for ``batch``, chunk by chunk, in one buffer each."""
        wanted_modules = list(dict.fromkeys(m for m, _ in self._requests))
        explicit = {(m, c) for m, c in self._requests if c is not None}
        plain = {m for m, c in self._requests if c is None}
        out: dict[tuple[str, int], torch.Tensor] = {}
        raw_dtype: dict[tuple[str, int], torch.dtype] = {}
        state: dict = {}

        def hook_for(module_name: str):
            def hook(module, args, output):
                counts = state["counts"]
                call = counts.get(module_name, 0)
                counts[module_name] = call + 1
                if module_name not in plain and (module_name, call) not in explicit:
                    return None
                h = self._select_output(module_name, call, output, state["size"]).detach()
                if self.flatten:
                    h = h.reshape(h.shape[0], -1)
                key = (module_name, call)
                buffer = out.get(key)
                if buffer is None:
                    raw_dtype[key] = h.dtype
                    buffer = out[key] = h.new_empty((batch.n, *h.shape[1:]), dtype=self.dtype or h.dtype)
                elif buffer.shape[1:] != h.shape[1:]:
                    raise ValueError(f"layer {self.display(module_name, call)}: output rows of shape "
                                     f"{tuple(h.shape[1:])} in one chunk and {tuple(buffer.shape[1:])} in another; "
                                     "give inputs of one shape or pick a fixed-shape tensor with select=")
                buffer[state["start"]:state["start"] + state["size"]].copy_(h)  # a copy: later in-place ops can't reach it
                state["captured"].add(key)
                state["remaining"].discard(key)
                if self.stop_early and state["stop"] and not state["remaining"]:
                    raise _StopForward
                return None
            return hook

        handles = [self._modules[m].register_forward_hook(hook_for(m)) for m in wanted_modules]
        devices = [t.device for t in (*self.root.parameters(), *self.root.buffers())]
        try:
            with own_rng(devices, self.seed), eval_no_grad(self.root):
                for start in range(0, batch.n, self.batch_size):
                    size = min(self.batch_size, batch.n - start)
                    targets = self._targets()
                    state.update(start=start, size=size, counts={}, captured=set(), stop=targets is not None,
                                 remaining=set(targets or ()))
                    chunk = batch.rows(slice(start, start + size))
                    try:
                        chunk(self.root)
                        finished = True
                    except _StopForward:
                        finished = False
                    except Exception as e:  # the model's own error ("index out of range in self"): say where
                        if hasattr(e, "add_note"):  # Python >= 3.11
                            e.add_note(f"lazydrift: raised in a pass of the model (eval mode, no grad) on inputs "
                                       f"{start} to {start + size - 1} of {batch.n}: {chunk.describe()}"
                                       + _integer_ranges(chunk))
                        raise
                    if finished:
                        self._learn_calls(state["counts"], plain)
                    missing = [t for t in self._targets() if t not in state["captured"]]
                    if missing:
                        raise RuntimeError("; ".join(self._missing_message(m, c, state["counts"]) for m, c in missing))
        finally:
            for handle in handles:
                handle.remove()
        self._raw_dtype = raw_dtype
        return {t: out[t] for t in self._targets()}

    def _learn_calls(self, counts: dict[str, int], plain: set[str]) -> None:
        for module_name in plain:
            n = counts.get(module_name, 0)
            if n == 0:
                raise RuntimeError(f"layer {module_name} did not run during the model's forward pass "
                                   "(a module the forward skips, or one a fused fast path bypasses in eval mode)")
            known = self.calls.setdefault(module_name, n)
            if known != n:
                raise RuntimeError(f"layer {module_name} ran {n} time(s) in this forward pass and {known} in an "
                                   "earlier one; name the call to record as name#k")

    def _missing_message(self, module_name: str, call: int, counts: dict[str, int]) -> str:
        n = counts.get(module_name, 0)
        if n == 0:
            return f"layer {module_name} did not run during the model's forward pass"
        return (f"layer {call_name(module_name, call)}: module {module_name} runs {n} time(s) per forward pass "
                f"(calls #0 to #{n - 1})")

    # the public call -----------------------------------------------------------------------------
    def prepare(self, inputs, copy: bool = False, what: str = "inputs") -> Batch:
        """``inputs`` on the model's device, floating tensors in its floating dtype."""
        batch = Batch(inputs, what)
        if batch.single is not None and hasattr(self.root, "check_input"):
            self.root.check_input(batch.single)
        return batch.to(model_device(self.root), model_float_dtype(self.root), copy=copy)

    def __call__(self, inputs, *, check: bool = False) -> dict[str, torch.Tensor]:
        """Each layer's output for ``inputs`` (first dimension = inputs), by output name.

        ``check=True`` also verifies that the first dimension indexes the inputs by value: a
        pass over a subset of them (the last and the first; the first alone when there are
        two) must give the same rows (see :func:`match_tolerance`).
        """
        batch = inputs if isinstance(inputs, Batch) else self.prepare(inputs)
        outputs = self._pass(batch)
        if check and batch.n >= 2:
            self._check_rows(batch, outputs)
        return {self._key(m, c): h for (m, c), h in outputs.items()}

    def _check_rows(self, batch: Batch, outputs: dict) -> None:
        index = torch.tensor([batch.n - 1, 0] if batch.n >= 3 else [0])
        subset = batch.rows(index)
        alone = self._pass(subset)
        for key, h in outputs.items():
            tol = match_tolerance(self._raw_dtype[key])
            rows = h.index_select(0, index.to(h.device))
            if alone[key].shape == rows.shape and relative_difference(alone[key], rows) <= tol:
                continue
            if alone[key].shape == rows.shape:  # a layer whose output is random is not comparable
                seed = self.seed
                self.seed = (seed or 0) + 1
                try:
                    again = self._pass(subset)[key]
                finally:
                    self.seed = seed
                if relative_difference(again, alone[key]) > tol:
                    continue
            module_name, call = key
            which = f"inputs {index.tolist()}" if len(index) > 1 else "input 0"
            raise ValueError(
                f"layer {self._key(module_name, call)}: the first dimension of its output does not index the inputs: "
                f"a pass of {which} alone gives rows of shape {tuple(alone[key].shape)} that differ from the same rows "
                f"of the pass of all {batch.n} ({tuple(h.shape)}, relative difference "
                f"{relative_difference(alone[key], rows) if alone[key].shape == rows.shape else float('inf'):.3g} > "
                f"{tol:.2g}): the layer mixes inputs (a sequence-first layer, attention or normalization across the "
                f"batch). Pass select={{'{module_name}': lambda out: ...}} returning an inputs-first tensor, e.g. "
                "out.transpose(0, 1) for a sequence-first output. If its rows are the inputs' and only round "
                "differently (a deep low-precision model), skip this check: check_probes=False (DriftRecorder), "
                "check=False (extract_features)")


def extract_features(model: nn.Module, inputs, layers: str | Sequence[str], *,
                     select: Mapping[str, Select] | None = None, batch_size: int = 1024,
                     dtype: torch.dtype | None = None, flatten: bool = False, check: bool = True,
                     seed: int | None = 0) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` of ``model`` for ``inputs``, by name (``name#k`` per call of a
    module that runs several times), each with the inputs along its first dimension.

    One forward pass per ``batch_size`` inputs in eval mode, without grad, with the RNG forked
    and seeded, hooks removed and train flags restored afterwards; the forward stops once the
    last requested output is known.  ``check`` verifies that each output's first dimension
    indexes the inputs (see :class:`FeatureExtractor`).  Example::

        feats = extract_features(resnet, images, ["layer4", "layer4.1.relu"])
        feats["layer4.1.relu#0"], feats["layer4.1.relu#1"]   # BasicBlock runs its ReLU twice
    """
    extractor = FeatureExtractor(model, layers, select=select, batch_size=batch_size, dtype=dtype,
                                 flatten=flatten, seed=seed)
    return extractor(inputs, check=check)
