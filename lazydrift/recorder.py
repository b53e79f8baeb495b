"""DriftRecorder: forward hooks that measure how chosen layers move on a fixed probe set.

Use it inside any training loop::

    rec = DriftRecorder(model, layers=["hidden.1"], probes=x_probe)
    with rec:                      # registers hooks, captures h_0 on the probes
        for step in range(1, steps + 1):
            ...                    # your own forward / backward / optimizer step
            rec.record(step)       # probe pass without grad, one row per (layer, probe)
    rec.frame(); rec.summary(); rec.to_csv("results/run")

The hooks are inert during the user's own forward passes (they return None and store
nothing), so the model computes exactly what it computes without the recorder.  A probe pass
runs in eval mode under ``torch.no_grad()``, restores every submodule's train/eval flag
afterwards, and stops the forward pass as soon as the recorded layers have produced their
outputs (no readout is computed).  Only statistics are kept, never the history of h_t.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import metrics
from .export import write_csv

MAX_AUTO_PAIRS_PROBES = 256  # "all pairs" by default up to this many probes


class _StopProbe(Exception):
    """Raised inside a hook to end a probe pass once every recorded layer has fired."""


class DriftRecorder:
    """Record drift of module outputs from their values at initialization.

    Args:
        model: any ``nn.Module``.
        layers: module names (as in ``model.named_modules()``) whose outputs are recorded.
            Default for :class:`~lazydrift.model.NTKMLP`: its last hidden layer.
        probes: the fixed inputs x on which h_t(x) is evaluated (first dimension = probes).
        pairs: Gram trajectories to record: ``"all"`` (every pair i < j), a list of (i, j)
            probe-index pairs, ``None`` (none), or ``"auto"`` (all pairs when there are at
            most 256 probes, else none).
        probe_batch_size: probes per forward pass.
        stop_early: end each probe pass once the recorded layers have fired.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None,
                 probes: torch.Tensor | None = None, *, pairs="auto",
                 probe_batch_size: int = 1024, stop_early: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        modules = dict(model.named_modules())
        available = [name for name in modules if name]
        if layers is None:
            if not hasattr(model, "default_record_layers"):
                raise ValueError("layers= is required for this model; available layer names: "
                                 + ", ".join(available))
            layers = model.default_record_layers()
        if isinstance(layers, str):
            layers = [layers]
        layers = list(dict.fromkeys(layers))
        if not layers:
            raise ValueError("layers= must name at least one module")
        unknown = [name for name in layers if name not in modules or not name]
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}; available: {', '.join(available)}")
        self.layers = layers
        self._modules = {name: modules[name] for name in layers}

        if not isinstance(probes, torch.Tensor) or probes.dim() == 0 or probes.shape[0] == 0:
            raise ValueError("probes= must be a non-empty tensor whose first dimension indexes probes")
        if hasattr(model, "check_input"):
            model.check_input(probes)
        device = next((p.device for p in model.parameters()), probes.device)
        self.probes = probes.to(device)
        self.n_probes = probes.shape[0]
        if probe_batch_size < 1:
            raise ValueError(f"probe_batch_size must be >= 1, got {probe_batch_size}")
        self.probe_batch_size = probe_batch_size
        self.stop_early = stop_early
        self.pairs = self._resolve_pairs(pairs)

        self.h0: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._active = False
        self._capturing = False
        self._captured: dict[str, torch.Tensor] = {}
        self._drift: list[dict] = []
        self._gram: list[dict] = []
        self._neurons: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}

    # -- setup -----------------------------------------------------------------------------
    def _resolve_pairs(self, pairs) -> tuple[np.ndarray, np.ndarray] | None:
        if pairs is None or pairs == "none":
            return None
        if isinstance(pairs, str):
            if pairs == "auto":
                return metrics.all_pairs(self.n_probes) if self.n_probes <= MAX_AUTO_PAIRS_PROBES else None
            if pairs == "all":
                return metrics.all_pairs(self.n_probes)
            raise ValueError(f"pairs must be 'all', 'auto', None or a list of (i, j); got {pairs!r}")
        arr = np.asarray(list(pairs), dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError("pairs must be a list of (i, j) probe-index pairs")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_probes):
            raise ValueError(f"pair indices must lie in [0, {self.n_probes}), the probe indices")
        return arr[:, 0].copy(), arr[:, 1].copy()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not self._capturing or name in self._captured:
                return None  # inert outside probe passes: the model's output is untouched
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._captured[name] = out.detach().reshape(out.shape[0], -1).clone()
            if self.stop_early and len(self._captured) == len(self.layers):
                raise _StopProbe
            return None
        return hook

    def __enter__(self) -> "DriftRecorder":
        if self._active:
            raise RuntimeError("this DriftRecorder is already active")
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self._modules.items()]
        self._active = True
        try:
            if not self.h0:  # a recorder restored from a checkpoint keeps its h_0
                self.h0 = self._probe_pass()
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove_hooks()
        return False

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._active = False

    # -- probe passes ---------------------------------------------------------------------------
    def _probe_pass(self) -> dict[str, torch.Tensor]:
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        out: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                start = 0
                for batch in self.probes.split(self.probe_batch_size):
                    self._captured = {}
                    self._capturing = True
                    try:
                        self.model(batch)
                    except _StopProbe:
                        pass
                    finally:
                        self._capturing = False
                    missing = [n for n in self.layers if n not in self._captured]
                    if missing:
                        raise RuntimeError(f"layer(s) {missing} did not run during the model's forward pass")
                    for name, h in self._captured.items():
                        if name not in out:  # filled chunk by chunk: no second copy from a concatenation
                            out[name] = h if len(h) == self.n_probes else h.new_empty((self.n_probes, *h.shape[1:]))
                        if out[name] is not h:
                            out[name][start:start + len(h)] = h
                    start += len(batch)
        finally:
            self._captured = {}
            for module, mode in modes:
                module.training = mode
        return {name: out[name] for name in self.layers}

    def features(self) -> dict[str, torch.Tensor]:
        """Run a probe pass now and return h_t for each recorded layer (probes x neurons)."""
        self._require_active("features")
        return self._probe_pass()

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(f"DriftRecorder.{what}() must be called inside its `with` block "
                               "(the hooks are removed when the block exits)")

    # -- recording -----------------------------------------------------------------------------
    def record(self, step: int) -> dict[str, np.ndarray]:
        """Evaluate the probes without grad and append one row per (layer, probe).

        Returns each layer's l2 per probe at this step (for progress bars and divergence checks).
        """
        self._require_active("record")
        hs = self._probe_pass()
        probe = np.arange(self.n_probes)
        l2_by_layer = {}
        for name in self.layers:
            h, h0 = hs[name], self.h0[name]
            l2, linf, ratio, mean_abs, max_abs = metrics.drift_stats(h, h0)
            l2_by_layer[name] = l2.cpu().numpy()
            self._drift.append({"step": np.full(self.n_probes, step), "layer": [name] * self.n_probes,
                                "probe": probe, "l2": l2_by_layer[name], "linf": linf.cpu().numpy(),
                                "ratio": ratio.cpu().numpy()})
            self._neurons[name] = (step, mean_abs.cpu().numpy(), max_abs.cpu().numpy())
            if self.pairs is not None:
                i, j = self.pairs
                terms = metrics.gram_terms(h0, h, torch.as_tensor(i, device=h.device),
                                           torch.as_tensor(j, device=h.device))
                self._gram.append({"step": np.full(len(i), step), "layer": [name] * len(i),
                                   "i": i, "j": j, **terms})
        return l2_by_layer

    # -- results -------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """Tidy rows: step, layer, probe, l2, linf, ratio."""
        cols = ["step", "layer", "probe", "l2", "linf", "ratio"]
        if not self._drift:
            return pd.DataFrame(columns=cols)
        return pd.concat([pd.DataFrame(rows) for rows in self._drift], ignore_index=True)[cols]

    def summary(self) -> pd.DataFrame:
        """Per (layer, step, measure): mean and sample s.d. over probes, and the probe count."""
        return summarize_drift(self.frame(), ["layer", "step"])

    def neurons(self) -> pd.DataFrame:
        """Per neuron of each layer, at the last recorded step: mean and max over probes of |h_t - h_0|."""
        parts = [pd.DataFrame({"layer": name, "step": step, "neuron": np.arange(len(mean_abs)),
                               "mean_abs_dev": mean_abs, "max_abs_dev": max_abs})
                 for name, (step, mean_abs, max_abs) in self._neurons.items()]
        cols = ["layer", "step", "neuron", "mean_abs_dev", "max_abs_dev"]
        return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)

    def gram_frame(self) -> pd.DataFrame:
        """Tidy Gram rows: step, layer, i, j, inner, cosine, inner0, cross, quadratic."""
        cols = ["step", "layer", "i", "j", "inner", "cosine", "inner0", "cross", "quadratic"]
        if not self._gram:
            return pd.DataFrame(columns=cols)
        return pd.concat([pd.DataFrame(rows) for rows in self._gram], ignore_index=True)[cols]

    def to_csv(self, directory: str | Path) -> list[Path]:
        """Write drift.csv, summary.csv, neurons.csv (and gram.csv when pairs are recorded)."""
        directory = Path(directory)
        written = [write_csv(self.frame(), directory / "drift.csv"),
                   write_csv(self.summary(), directory / "summary.csv"),
                   write_csv(self.neurons(), directory / "neurons.csv")]
        if self.pairs is not None:
            written.append(write_csv(self.gram_frame(), directory / "gram.csv"))
        return written

    def release_model(self) -> None:
        """Drop the model, the probes and h_0 (after the run) to free memory; the results stay."""
        if self._active:
            raise RuntimeError("release_model() must be called after the `with` block")
        self.model = None
        self._modules = {}
        self.probes = None
        self.h0 = {}

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """h_0 and every row recorded so far, as tensors and plain Python values."""
        return {
            "h0": {name: t.cpu() for name, t in self.h0.items()},
            "drift": [_rows_to_tensors(r) for r in self._drift],
            "gram": [_rows_to_tensors(r) for r in self._gram],
            "neurons": {name: (step, torch.from_numpy(a), torch.from_numpy(b))
                        for name, (step, a, b) in self._neurons.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if self._active:
            raise RuntimeError("load_state_dict() must be called before entering the recorder")
        device = self.probes.device
        self.h0 = {name: t.to(device) for name, t in state["h0"].items()}
        self._drift = [_rows_from_tensors(r) for r in state["drift"]]
        self._gram = [_rows_from_tensors(r) for r in state["gram"]]
        self._neurons = {name: (int(step), a.numpy(), b.numpy())
                         for name, (step, a, b) in state["neurons"].items()}


def summarize_drift(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Long-format mean / sample s.d. / count over probes of l2, linf and ratio per ``keys``."""
    long = frame.melt(id_vars=keys + ["probe"], value_vars=["l2", "linf", "ratio"],
                      var_name="measure", value_name="value")
    long["value"] = long["value"].astype(float)
    out = (long.groupby(keys + ["measure"], sort=True)["value"]
           .agg(mean="mean", std="std", n_probes="count").reset_index())
    return out[keys + ["measure", "mean", "std", "n_probes"]]


def _rows_to_tensors(rows: dict) -> dict:
    return {k: (list(v) if k == "layer" else torch.from_numpy(np.asarray(v))) for k, v in rows.items()}


def _rows_from_tensors(rows: dict) -> dict:
    return {k: (list(v) if k == "layer" else v.numpy()) for k, v in rows.items()}


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
