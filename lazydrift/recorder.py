"""DriftRecorder: measure how chosen layers of any model move on a fixed probe set.

Use it inside any training loop::

    rec = DriftRecorder(model, layers=["hidden.1"], probes=x_probe)
    with rec:                      # captures h_0 on the probes
        for step in range(1, steps + 1):
            ...                    # your own forward / backward / optimizer step
            rec.record(step)       # probe pass without grad: one row per (layer, probe)
    rec.frame(); rec.summary(); rec.to_csv("results/run")

A probe pass is :class:`lazydrift.features.FeatureExtractor`'s pass (eval mode, no grad, the
RNG forked and seeded, train flags restored, hooks only while it runs, every call of a module
recorded, probes-first outputs checked), so the model computes exactly what it computes
without the recorder and training with and without it gives the same weights.  Statistics are
computed in float32 (float64 for a float64 model) and Gram terms in float64, whatever the
model's dtype.  Only statistics are kept, never the history of h_t.

With ``ntk_probes=k`` the recorder also follows the empirical NTK Theta_t of the network on
its first k probes (:class:`lazydrift.kernel_drift.KernelDriftTracker`, structured route of
:func:`lazydrift.empirical.empirical_ntk`): Theta_0 is computed where h_0 is captured, and each
``record(step)`` adds one row of ``ntk.csv`` (relative change, cosine, largest eigenvalue,
target alignment, and on the first row the distance of Theta_0 to its closed-form limit).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import metrics
from .export import write_csv
from .empirical import StructureError, structured_ntk
from .features import FeatureExtractor, model_device, model_float_dtype, own_rng, parse_name, unwrap
from .kernel_drift import COLUMNS as KERNEL_COLUMNS
from .kernel_drift import KernelDriftTracker

MAX_AUTO_PAIRS_PROBES = 256  # "all pairs" by default up to this many probes
MAX_GRAM_ROWS = 10_000_000  # default budget of stored Gram rows (GRAM_ROW_BYTES each)
GRAM_ROW_BYTES = 40  # five float64 terms per (record, layer, pair); i and j are stored once
DRIFT_COLUMNS = ["l2", "linf", "ratio"]
GRAM_COLUMNS = ["inner", "cosine", "inner0", "cross", "quadratic"]

Stat = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DriftRecorder:
    """Record drift of module outputs from their values at initialization.

    Args:
        model: any ``nn.Module`` (``torch.compile``, ``DataParallel`` and DDP wrappers are
            looked through: the user's own layer names work).
        layers: module names (as in ``model.named_modules()``) whose outputs are recorded; a
            module that runs several times per forward pass is recorded per call, as
            ``name#0``, ``name#1``, ... (``name#k`` records call k only).  Default for
            :class:`~lazydrift.model.NTKMLP`: its last hidden layer.
        probes: the fixed inputs x on which h_t(x) is evaluated: a tensor (``model(x)``), a
            tuple or list of tensors (``model(*x)``) or a dict of tensors (``model(**x)``),
            each with the probes along its first dimension.  The recorder keeps its own copy,
            floating tensors cast to the model's floating dtype.
        pairs: Gram trajectories to record: ``"all"`` (every pair i < j), an integer k (every
            pair among the first k probes), a list of (i, j) integer probe-index pairs,
            ``None`` or ``[]`` (none), or ``"auto"`` (all pairs when there are at most 256 probes, else none).
        probe_batch_size: probes per forward pass.
        stop_early: end each probe pass once the recorded layers have produced their outputs.
        select: layer name -> function from the module's output to a probes-first tensor
            (tuples, dicts, sequence-first outputs); see :mod:`lazydrift.features`.
        stats: name -> ``fn(h_t, h_0)`` returning one value per probe: extra columns of
            drift.csv and measures of summary.csv (e.g. ``metrics.coord_abs_mean``, the
            coordinate check).  h_t and h_0 are (probes, features) matrices.
        max_gram_rows: the budget of stored Gram rows (GRAM_ROW_BYTES = 40 bytes each): a
            record that would exceed it is refused with the estimate.
        check_probes: when h_0 is captured, rerun probes {last, first} alone and require the
            same rows (the outputs' first dimension indexes the probes).
        ntk_probes: also record the empirical NTK on the first ``ntk_probes`` probes (capped at
            the number of probes); None (default): no kernel.  Needs probes given as one tensor
            and a model the structured route splits by layer (``nn.Linear``, ``nn.Embedding``,
            lazydrift layers, other modules with their own parameters, no tied weights, outputs
            that do not mix probes): anything else is refused here, with the reason.  Each record
            costs one forward and one backward pass over those probes (about one training step
            at 256 probes; README, "Kernel drift").
        ntk_output: the scalar output whose kernel is followed: ``"random"`` (v . f for a seeded
            unit vector v, whose limit is Theta_inf), an output index, or None (one output).
        ntk_seed: seeds v for ``ntk_output="random"``.
        ntk_targets: optional targets of the probes, (probes,) class ids or (probes, k) values,
            for the kernel-target alignment column (NaN without).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | str | None = None,
                 probes=None, *, pairs="auto", probe_batch_size: int = 1024, stop_early: bool = True,
                 select: Mapping[str, Callable] | None = None, stats: Mapping[str, Stat] | None = None,
                 max_gram_rows: int = MAX_GRAM_ROWS, check_probes: bool = True, ntk_probes: int | None = None,
                 ntk_output: int | str | None = "random", ntk_seed: int = 0, ntk_targets=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        root, _ = unwrap(model)
        if layers is None:
            if not hasattr(root, "default_record_layers"):
                names = [name for name, _ in root.named_modules() if name]
                raise ValueError("layers= is required for this model; available layer names: " + ", ".join(names))
            layers = root.default_record_layers()
        if not isinstance(probe_batch_size, int) or isinstance(probe_batch_size, bool) or probe_batch_size < 1:
            raise ValueError(f"probe_batch_size must be >= 1, got {probe_batch_size!r}")
        self.model = model
        self._stat_dtype = _statistics_dtype(root)
        self._extractor = FeatureExtractor(model, layers, select=select, batch_size=probe_batch_size,
                                           dtype=self._stat_dtype, flatten=True, stop_early=stop_early)
        if probes is None:
            raise ValueError("probes= is required: the inputs whose features are followed, probes along the first "
                             "dimension (a tensor, a tuple or list of tensors, or a dict of tensors)")
        self.probes = self._extractor.prepare(probes, copy=True, what="probes")  # our own copy
        self.n_probes = self.probes.n
        self.probe_batch_size, self.stop_early, self.check_probes = probe_batch_size, stop_early, check_probes
        self.stats = self._check_stats(stats)
        if not isinstance(max_gram_rows, int) or max_gram_rows < 0:
            raise ValueError(f"max_gram_rows must be a non-negative integer, got {max_gram_rows!r}")
        self.max_gram_rows = max_gram_rows
        self.h0: dict[str, torch.Tensor] = {}
        self._restored = False
        self._active = False
        self._drift: list[dict] = []  # one block a (record, layer): step, layer, a value per probe per measure
        self._gram: list[dict] = []  # one block a (record, layer): step, layer, a value per pair per term
        self._steps: list[int] = []
        self._neurons: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
        self.pairs = self._resolve_pairs(pairs)
        self._layers = [self._extractor.display(m, c) for m, c in self._extractor._requests]
        self._check_gram_budget(len(self._layers), 1, "DriftRecorder(...)", ValueError)
        self._ntk_k: int | None = None
        self._kernel = None if ntk_probes is None else self._kernel_tracker(root, ntk_probes, ntk_output, ntk_seed,
                                                                              ntk_targets)

    # -- setup -----------------------------------------------------------------------------
    def _check_stats(self, stats) -> dict[str, Stat]:
        stats = dict(stats or {})
        for name, fn in stats.items():
            if not isinstance(name, str) or not name.isidentifier() or name in ("step", "layer", "probe", *DRIFT_COLUMNS):
                raise ValueError(f"stats= key {name!r}: a column name (an identifier other than step, layer, probe, "
                                 f"{', '.join(DRIFT_COLUMNS)})")
            if not callable(fn):
                raise TypeError(f"stats[{name!r}] must be a function fn(h_t, h_0) -> one value per probe")
        return stats

    def _kernel_tracker(self, root: nn.Module, ntk_probes, output, seed: int, targets) -> KernelDriftTracker:
        """The kernel's tracker on the first ``ntk_probes`` probes, after a two-probe trial of the
        structured route (so an unsupported model is refused now, not at the first record)."""
        if isinstance(ntk_probes, bool) or not isinstance(ntk_probes, (int, np.integer)) or ntk_probes < 1:
            raise ValueError(f"ntk_probes must be a positive integer (the first k probes) or None, got {ntk_probes!r}")
        if self.probes.single is None:
            raise ValueError(f"ntk_probes: the kernel needs the probes as one tensor (model(x)); got "
                             f"{self.probes.describe()}")
        k = self._ntk_k = min(int(ntk_probes), self.n_probes)
        x = self.probes.single[:k]
        if targets is not None:
            targets = torch.as_tensor(targets)
            if targets.dim() == 0 or targets.shape[0] != self.n_probes:
                raise ValueError(f"ntk_targets must have one row per probe ({self.n_probes}), got shape "
                                 f"{tuple(targets.shape)}")
            targets = targets[:k]
        try:
            with own_rng([model_device(root)], 0):
                structured_ntk(root, x[:2], output=output, seed=seed)
        except (StructureError, ValueError) as e:
            raise ValueError(f"ntk_probes={ntk_probes}: the empirical NTK of {type(root).__name__} cannot be "
                             f"recorded by layer: {e}") from None
        return KernelDriftTracker(root, x, output=output, targets=targets, seed=seed, method="structured")

    def _kernel_pass(self, step: int | None = None) -> None:
        """Theta_0 (``step=None``) or a row at ``step``, with the RNG forked as in a probe pass."""
        with own_rng([self.probes.single.device], 0):
            if step is None:
                self._kernel.capture()
            else:
                self._kernel.record(step)

    def _resolve_pairs(self, pairs) -> tuple[np.ndarray, np.ndarray] | None:
        if pairs is None or (isinstance(pairs, str) and pairs == "none"):
            return None
        if isinstance(pairs, str):
            if pairs == "auto":
                return metrics.all_pairs(self.n_probes) if self.n_probes <= MAX_AUTO_PAIRS_PROBES else None
            if pairs == "all":
                return metrics.all_pairs(self.n_probes)
            raise ValueError(f"pairs must be 'all', 'auto', None, an integer k or a list of (i, j); got {pairs!r}")
        if isinstance(pairs, (int, np.integer)) and not isinstance(pairs, bool):
            if not 2 <= pairs <= self.n_probes:
                raise ValueError(f"pairs={pairs}: all pairs of the first k probes needs 2 <= k <= {self.n_probes}")
            return metrics.all_pairs(int(pairs))
        try:  # integers only: np.asarray(..., dtype=int64) would truncate (0.5, 1.7) to (0, 1) silently
            rows = [tuple(operator.index(v) for v in pair) for pair in pairs]
        except TypeError:
            raise TypeError(f"pairs must be a list of (i, j) pairs of integer probe indices; got {pairs!r}") from None
        if not rows:
            return None  # an empty list: no pairs
        arr = np.asarray(rows, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError("pairs must be a list of (i, j) probe-index pairs")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_probes):
            raise ValueError(f"pair indices must lie in [0, {self.n_probes}), the probe indices")
        return arr[:, 0].copy(), arr[:, 1].copy()

    def _check_gram_budget(self, n_layers: int, records: int, where: str, error: type) -> None:
        """Refuse before storing more Gram rows than ``max_gram_rows`` (the memory guard)."""
        if self.pairs is None:
            return
        n_pairs = len(self.pairs[0])
        stored = sum(len(block["inner"]) for block in self._gram)
        needed = stored + n_pairs * n_layers * records
        if needed <= self.max_gram_rows:
            return
        per_layer = self.max_gram_rows // max(1, n_layers * (len(self._steps) + records))
        k = int((1 + np.sqrt(1 + 8 * per_layer)) / 2)
        raise error(f"{where} would store {needed:,} Gram rows ({n_pairs:,} probe pairs x {n_layers} layer(s) a record, "
                    f"{stored:,} stored so far; about {needed * GRAM_ROW_BYTES / 1e9:.2f} GB) over the budget of "
                    f"max_gram_rows={self.max_gram_rows:,} ({GRAM_ROW_BYTES} bytes a row). Choose fewer pairs: "
                    f"pairs=k records all pairs among the first k probes (k(k-1)/2 per layer and record; k = {k} "
                    f"fits {len(self._steps) + records} record(s)), pairs=[(i, j), ...] the pairs you "
                    "need, pairs=None none; or raise max_gram_rows")

    @property
    def ntk_probes(self) -> int | None:
        """How many probes the kernel is recorded on (None: no kernel)."""
        return self._ntk_k

    @property
    def layers(self) -> list[str]:
        """The recorded layers' names as they appear in the results (``name#k`` per call)."""
        return list(self._layers)

    # -- entering ----------------------------------------------------------------------------------
    def __enter__(self) -> "DriftRecorder":
        if self._active:
            raise RuntimeError("this DriftRecorder is already active")
        if self.model is None:
            raise RuntimeError("this DriftRecorder's model was released (release_model()); build a new one")
        if self._restored:  # restored from a checkpoint on purpose: keep its h_0
            self._restored = False
        else:
            h0 = self._probe_pass(check=self.check_probes)
            if self._steps and not _same(h0, self.h0):
                raise RuntimeError(
                    f"this DriftRecorder already holds records (steps {self._steps[0]}..{self._steps[-1]}) measured "
                    "from an h_0 the model no longer produces (it changed since the recorder was last entered). "
                    "To start over from the model as it is now: rec.reset(), then enter again; to continue from "
                    "the old h_0: rec.load_state_dict(rec.state_dict()), then enter again")
            self.h0 = h0
            if not self._steps:
                self._check_gram_budget(len(h0), 1, "DriftRecorder", ValueError)
                if self._kernel is not None:
                    self._kernel_pass()  # Theta_0, where h_0 is captured
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._active = False
        return False

    def reset(self) -> None:
        """Forget h_0 and every record: the next ``with`` block starts a new recording."""
        if self._active:
            raise RuntimeError("reset() must be called outside the `with` block")
        self.h0, self._drift, self._gram, self._steps, self._neurons = {}, [], [], [], {}
        if self._kernel is not None:
            self._kernel.reset()
        self._restored = False

    # -- probe passes ---------------------------------------------------------------------------
    def _probe_pass(self, check: bool = False) -> dict[str, torch.Tensor]:
        root = unwrap(self.model)[0]
        # The model may have been moved or cast (model.to(...), .double()) since the recorder was
        # built: the probes follow it, and so does the statistics' dtype until h_0 is captured.
        self.probes = self.probes.to(model_device(root), model_float_dtype(root))
        if not self.h0:
            self._stat_dtype = self._extractor.dtype = _statistics_dtype(root)
        hs = self._extractor(self.probes, check=check)
        self._layers = list(hs)
        return hs

    def features(self) -> dict[str, torch.Tensor]:
        """Run a probe pass now and return h_t for each recorded layer (probes x features)."""
        self._require_active("features")
        return self._probe_pass()

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(f"DriftRecorder.{what}() must be called inside its `with` block "
                               "(h_0 is captured when the block is entered)")

    # -- recording -----------------------------------------------------------------------------
    def record(self, step: int) -> dict[str, np.ndarray]:
        """Evaluate the probes without grad and store one row per (layer, probe) at ``step``.

        Returns each layer's l2 per probe at this step (for progress bars and divergence checks).
        """
        self._require_active("record")
        if isinstance(step, bool) or isinstance(step, float):
            raise TypeError(f"record(step): step must be an integer, got {step!r}")
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(f"record(step): step must be an integer, got {step!r}") from None
        if step in self._steps:
            raise ValueError(f"record({step}): step {step} is already recorded; record each step once "
                             "(a repeated step would duplicate its rows)")
        hs = self._probe_pass()
        if set(hs) != set(self.h0):
            raise RuntimeError(f"record({step}): the probe pass gives layers {list(hs)} but h_0 holds {list(self.h0)}")
        self._check_gram_budget(len(hs), 1, f"record({step})", RuntimeError)
        # Everything is computed before anything is stored: a failure part way (a stats= function,
        # the kernel, Ctrl-C) leaves no rows of this step, so record(step) can simply be called again.
        drift, gram, neurons, l2_by_layer = [], [], {}, {}
        for name, h in hs.items():
            if self.h0[name].device != h.device:  # the model moved after h_0 was captured
                self.h0[name] = self.h0[name].to(h.device)
            h0 = self.h0[name]
            if h.shape != h0.shape:
                raise RuntimeError(f"record({step}): layer {name} gives {tuple(h.shape)} but h_0 is "
                                   f"{tuple(h0.shape)}; the layer changed shape since h_0 was captured")
            l2, linf, ratio, mean_abs, max_abs = metrics.drift_stats(h, h0)
            block = {"step": step, "layer": name, "l2": _numpy(l2), "linf": _numpy(linf), "ratio": _numpy(ratio)}
            for stat, fn in self.stats.items():
                block[stat] = self._stat(stat, fn, h, h0)
            drift.append(block)
            l2_by_layer[name] = block["l2"]
            neurons[name] = (step, _numpy(mean_abs), _numpy(max_abs))
            if self.pairs is not None:
                i, j = (torch.as_tensor(a, device=h.device) for a in self.pairs)
                gram.append({"step": step, "layer": name, **metrics.gram_terms(h0, h, i, j)})
        if self._kernel is not None:
            self._kernel_pass(step)  # the last step that can fail; it stores its row only on success
        self._drift += drift
        self._gram += gram
        self._neurons.update(neurons)
        self._steps.append(step)
        return l2_by_layer

    def _stat(self, name: str, fn: Stat, h: torch.Tensor, h0: torch.Tensor) -> np.ndarray:
        value = fn(h, h0)
        value = torch.as_tensor(value)
        if value.shape != (self.n_probes,):
            raise ValueError(f"stats[{name!r}] returned shape {tuple(value.shape)}; it must return one value per "
                             f"probe, shape ({self.n_probes},)")
        return _numpy(value.detach().to(self._stat_dtype))

    # -- results -------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """Tidy rows: step, layer, probe, l2, linf, ratio (and one column per ``stats`` entry)."""
        cols = ["step", "layer", "probe", *DRIFT_COLUMNS, *self.stats]
        if not self._drift:
            return pd.DataFrame(columns=cols)
        probe = np.arange(self.n_probes)
        parts = [pd.DataFrame({"step": np.full(len(b["l2"]), b["step"], dtype=np.int64), "layer": b["layer"],
                               "probe": probe, **{c: b[c] for c in cols[3:]}}) for b in self._drift]
        return pd.concat(parts, ignore_index=True)[cols]

    def summary(self) -> pd.DataFrame:
        """Per (layer, step, measure): mean and sample s.d. over probes, and the probe count."""
        return summarize_drift(self.frame(), ["layer", "step"], [*DRIFT_COLUMNS, *self.stats])

    def neurons(self) -> pd.DataFrame:
        """Per neuron of each layer, at its last record: mean and max over probes of |h_t - h_0|."""
        parts = [pd.DataFrame({"layer": name, "step": step, "neuron": np.arange(len(mean_abs)),
                               "mean_abs_dev": mean_abs, "max_abs_dev": max_abs})
                 for name, (step, mean_abs, max_abs) in self._neurons.items()]
        cols = ["layer", "step", "neuron", "mean_abs_dev", "max_abs_dev"]
        return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)

    def gram_frame(self) -> pd.DataFrame:
        """Tidy Gram rows: step, layer, i, j, inner, cosine, inner0, cross, quadratic."""
        cols = ["step", "layer", "i", "j", *GRAM_COLUMNS]
        if not self._gram or self.pairs is None:
            return pd.DataFrame(columns=cols)
        i, j = self.pairs
        parts = [pd.DataFrame({"step": np.full(len(i), b["step"], dtype=np.int64), "layer": b["layer"], "i": i,
                               "j": j, **{c: b[c] for c in GRAM_COLUMNS}}) for b in self._gram]
        return pd.concat(parts, ignore_index=True)[cols]

    def kernel_frame(self) -> pd.DataFrame:
        """One row per recorded step of the kernel (``ntk.csv``): step, rel_change, cosine, eig_max,
        target_alignment, limit_distance (see :mod:`lazydrift.kernel_drift`); empty without
        ``ntk_probes``."""
        return pd.DataFrame(columns=KERNEL_COLUMNS) if self._kernel is None else self._kernel.frame()

    @property
    def kernel_seconds(self) -> float:
        """Seconds spent computing kernels (0 without ``ntk_probes``)."""
        return 0.0 if self._kernel is None else self._kernel.seconds

    def to_csv(self, directory: str | Path) -> list[Path]:
        """Write drift.csv, summary.csv, neurons.csv (and gram.csv when pairs are recorded, ntk.csv
        with ``ntk_probes``)."""
        directory = Path(directory)
        written = [write_csv(self.frame(), directory / "drift.csv"),
                   write_csv(self.summary(), directory / "summary.csv"),
                   write_csv(self.neurons(), directory / "neurons.csv")]
        if self.pairs is not None:
            written.append(write_csv(self.gram_frame(), directory / "gram.csv"))
        if self._kernel is not None:
            written.append(write_csv(self.kernel_frame(), directory / "ntk.csv"))
        return written

    def release_model(self) -> None:
        """Drop the model, the probes and h_0 (after the run) to free memory; the results stay."""
        if self._active:
            raise RuntimeError("release_model() must be called after the `with` block")
        self.model = None
        self._extractor = None
        self.probes = None
        self.h0 = {}
        if self._kernel is not None:
            self._kernel.release_model()

    def __repr__(self) -> str:
        model = "released" if self.model is None else type(self.model).__name__
        probes = "released" if self.probes is None else self.probes.describe()
        pairs = "none" if self.pairs is None else f"{len(self.pairs[0]):,}"
        steps = f"{len(self._steps)} (steps {min(self._steps)}..{max(self._steps)})" if self._steps else "0"
        stats = f", stats={list(self.stats)}" if self.stats else ""
        stats += f", ntk_probes={self._ntk_k}" if self._kernel is not None else ""
        state = "active" if self._active else ("h_0 captured" if self.h0 else "h_0 not captured")
        return (f"DriftRecorder(model={model}, layers={self.layers}, probes={probes}, pairs={pairs}{stats}, "
                f"records={steps}, {state})")

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """h_0 and every record so far, as tensors and plain Python values."""
        return {
            "h0": {name: t.cpu() for name, t in self.h0.items()},
            "drift": [_block_to_tensors(b) for b in self._drift],
            "gram": [_block_to_tensors(b) for b in self._gram],
            "steps": list(self._steps),
            "neurons": {name: (step, torch.from_numpy(a), torch.from_numpy(b))
                        for name, (step, a, b) in self._neurons.items()},
            "kernel": None if self._kernel is None else self._kernel.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore h_0 and the records (an explicit checkpoint restore): the next ``with`` block
        keeps this h_0 (and Theta_0) instead of capturing a new one.  A recorder with
        ``ntk_probes`` needs a state saved with the kernel; kernel records in a state are
        dropped by a recorder without it."""
        if self._active:
            raise RuntimeError("load_state_dict() must be called before entering the recorder")
        if self.model is None:
            raise RuntimeError("load_state_dict(): this DriftRecorder's model was released")
        requested = {parse_name(name)[0] for name in self._layers}
        unknown = [name for name in state["h0"] if parse_name(name)[0] not in requested]
        if unknown:
            raise ValueError(f"load_state_dict(): the checkpoint records layer(s) {unknown}, this recorder "
                             f"{self._layers}")
        kernel = state.get("kernel")
        if self._kernel is not None:
            if kernel is None:
                raise ValueError(f"load_state_dict(): the checkpoint holds no kernel records, but this recorder "
                                 f"records the kernel (ntk_probes={self._ntk_k}): its Theta_0 would be taken from "
                                 "the trained model. Build the recorder without ntk_probes, or start afresh")
            self._kernel.load_state_dict(kernel)
        device = model_device(unwrap(self.model)[0])
        self.h0 = {name: t.to(device=device, dtype=self._stat_dtype) for name, t in state["h0"].items()}
        self._layers = list(self.h0) or self._layers
        self._drift = [_block_from_tensors(b) for b in state["drift"]]
        self._gram = [_block_from_tensors(b, drop=("i", "j")) for b in state["gram"]]
        steps = state.get("steps")
        self._steps = [int(s) for s in steps] if steps is not None else list(dict.fromkeys(b["step"] for b in self._drift))
        self._neurons = {name: (int(step), a.numpy(), b.numpy()) for name, (step, a, b) in state["neurons"].items()}
        self._restored = True


def _statistics_dtype(model: nn.Module) -> torch.dtype:
    """float64 for a float64 model, else float32 (bfloat16 and float16 models included)."""
    return torch.float64 if model_float_dtype(model) == torch.float64 else torch.float32


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k].to(a[k].device))
                                        for k in a)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def summarize_drift(frame: pd.DataFrame, keys: list[str], measures: Sequence[str] = DRIFT_COLUMNS) -> pd.DataFrame:
    """Long-format mean / sample s.d. / count over probes of each measure per ``keys``."""
    long = frame.melt(id_vars=keys + ["probe"], value_vars=list(measures), var_name="measure", value_name="value")
    long["value"] = long["value"].astype(float)
    if "layer" in keys:  # layers in the order they appear (the recorder's forward order), not as strings
        long["layer"] = pd.Categorical(long["layer"], categories=list(dict.fromkeys(frame["layer"])))
    out = (long.groupby(keys + ["measure"], sort=True, observed=True)["value"]
           .agg(mean="mean", std="std", n_probes="count").reset_index())
    if "layer" in keys:
        out["layer"] = out["layer"].astype(str)
    return out[keys + ["measure", "mean", "std", "n_probes"]]


def _block_to_tensors(block: dict) -> dict:
    return {k: (v if k in ("step", "layer") else torch.from_numpy(np.asarray(v))) for k, v in block.items()}


def _block_from_tensors(block: dict, drop: tuple[str, ...] = ()) -> dict:
    out = {}
    for k, v in block.items():
        if k in ("probe", *drop):  # older checkpoints stored these per row
            continue
        if k == "step":
            out[k] = int(v) if not isinstance(v, torch.Tensor) or v.dim() == 0 else int(v[0])
        elif k == "layer":
            out[k] = v if isinstance(v, str) else v[0]
        else:
            out[k] = v.numpy()
    return out


def log_schedule(steps: int, points: int = 30) -> list[int]:
    """Steps at which to record: 0, about ``points`` log-spaced steps in [1, steps], and ``steps``.

    Log spacing resolves the fast early change and keeps the number of probe passes (and so
    the recorder's overhead) independent of the run length.
    """
    if steps < 0 or points < 1:
        raise ValueError("steps must be >= 0 and points >= 1")
    if steps == 0:
        return [0]
    grid = np.unique(np.round(np.geomspace(1, steps, num=min(points, steps))).astype(int))
    return sorted({0, *grid.tolist(), steps})
