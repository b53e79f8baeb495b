"""Checks before any work: the recorded layers exist, ``--out`` can be written, the largest cell fits.

Each failure is a :class:`~lazydrift.errors.UserError` with one line; nothing has been written
when it is raised.

Memory.  The largest cell's footprint on the chosen device is estimated from the recipe alone
(before the data are loaded; for text8 the vocabulary is at most ``vocab_size``) and compared
with what the device has free: ``MemAvailable`` of /proc/meminfo on CPU (``os.sysconf`` where
there is no /proc), ``torch.cuda.mem_get_info`` on CUDA.  In float32 (4 bytes), with V_in, V_out
the input and output sizes, n the width, H the number of hidden layers (the paper's depth is H + 1), P the probes, B the batch:

* parameters: (V_in n + (H - 1) n^2 + n V_out) * 4;
* optimizer state (:func:`lazydrift.optimizers.state_bytes`, the largest over the recipe's
  optimizers): none for fused SGD; momentum one buffer per weight and Adam two (a copy of the
  parameters each), plus one gradient buffer the size of the largest weight; with
  ``fused_sgd = false`` (plain autograd and ``torch.optim``) a gradient per weight instead;
* training activations: each hidden layer keeps its pre-activation and output, B n * 2 H * 4,
  plus the output and residual, 2 B V_out * 4;
* h_0: P * (sum of the recorded layers' sizes) * 4, and the probe buffers as much again for h_t,
  plus |h_t - h_0| of the widest layer (P n * 4) and one probe batch's layer input and output;
* recorded rows: per recorded step and layer, one row per probe (8 numbers of 8 bytes) and one
  per Gram pair (10 numbers), for the log-spaced schedule;
* analogies (text8 with ``[record] analogies``): a second model (h_0 is rebuilt from the seed)
  and h_T, h_0 of every vocabulary word;
* kernel (``[record] ntk``, on k = min(ntk_probes, P) probes): the structured NTK's pass keeps,
  per probe, each hidden layer's input, pre-activation and output and the readout's output (the
  autograd graph, (3 H n + 2 V_out) * 4), and one gradient per layer output from the backward
  ((H n + V_out) * 4); plus float inputs (k V_in * 4), the n x n Gram blocks and kernels
  (about 8 k^2 * 8) and Theta_inf's one-hot inputs (k V_in * 8).  Measured: 0.30 GB added at
  width 30000, V = 2000, k = 256 (benchmarks/bench_ntk.py), where this gives 0.26 GB.

The estimate leaves out the process's fixed cost (about 1 GB for torch and the libraries on CPU)
and allocator slack, so it is a lower bound: a refusal means the run cannot fit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .errors import UserError
from .recipes import Recipe, RecipeError
from .optimizers import state_bytes
from .rundir import RunDirError, has_results, is_lazydrift_folder
from .tasks import task_shape

FLOAT32 = 4


class MemoryCheckError(UserError):
    """The largest cell does not fit in the chosen device's memory."""


def check(recipe: Recipe, device: torch.device, out: Path, layers: list[str]) -> None:
    """Every check, cheapest first; ``layers`` come from :func:`lazydrift.cell.recorded_layers`."""
    check_cells(recipe)
    check_kernel(recipe)
    check_out(out)
    check_memory(recipe, device, layers)


def check_cells(recipe: Recipe) -> None:
    """No cell twice: a repeated width or seed would train the same cell twice into one folder (and a
    shard would wait for its own lock).  Repeated protocols are refused when the recipe is loaded."""
    for where, values in (("[model] widths", recipe.model.widths), ("seeds", recipe.seeds)):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise RecipeError(f"{recipe.path}: {where} lists {', '.join(map(str, repeated))} more than once; "
                              "list each value once")


def check_kernel(recipe: Recipe) -> None:
    """``[record] ntk_output``, an output index, names an output of the task."""
    output = recipe.record.ntk_output
    if recipe.record.ntk and not isinstance(output, str):
        outputs = task_shape(recipe)[1]
        if output >= outputs:
            raise RecipeError(f"{recipe.path}: [record] ntk_output must be an output index in [0, {outputs}) "
                              f"(the task's outputs) or \"random\", got {output}")


# -- the output folder ----------------------------------------------------------------------------
def check_out(out: Path) -> None:
    """``out`` is a folder (or can be created) that this process can write, and not someone else's."""
    try:
        _check_out(out)
    except OSError as e:  # a name too long for the filesystem, a loop of symbolic links, ...
        raise RunDirError(f"--out {out}: {e.strerror or e}; choose another --out") from None


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a folder; choose another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise RunDirError(f"--out {out}: {existing} is not a folder; choose another --out")
    try:  # really create a file: permission bits do not tell (root, read-only mounts, ACLs)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise RunDirError(f"--out {out}: cannot write in {existing} ({e.strerror}); choose another --out") from None
    if has_results(out) and not is_lazydrift_folder(out):
        raise RunDirError(f"--out {out}: the folder is not empty and was not written by lazydrift; "
                          "choose an empty or new folder")


# -- memory ----------------------------------------------------------------------------------------
def cell_memory(recipe: Recipe, width: int, layers: list[str]) -> dict[str, int]:
    """Bytes the cell of ``width`` needs at its peak, by part (see the module doc)."""
    d_in, d_out, probes = task_shape(recipe)
    hidden_layers, r, t = recipe.model.hidden_layers, recipe.record, recipe.train
    weights = [d_in * width] + [width * width] * (hidden_layers - 1) + [width * d_out]
    params = sum(weights) * FLOAT32
    sizes = [d_out if layer == "readout" else width for layer in layers]
    batch = min(r.probe_batch_size, probes)
    records = len(recipe.record_steps())
    k = min(r.gram_probes, probes)
    parts = {
        "parameters": params,
        "optimizer state": max(state_bytes(p.optimizer, weights, t.fused_sgd, FLOAT32) for p in recipe.protocols()),
        "training activations": (t.batch_size * width * 2 * hidden_layers + 2 * t.batch_size * d_out) * FLOAT32,
        "h_0": probes * sum(sizes) * FLOAT32,
        "probe buffers": (probes * sum(sizes) + probes * max(sizes) + 2 * batch * width) * FLOAT32,
        "recorded rows": records * len(layers) * (probes * 8 + (k * (k - 1) // 2) * 10) * 8,
    }
    if r.analogies:
        parts["analogies"] = params + 2 * d_in * width * FLOAT32
    if r.ntk:
        parts["kernel"] = kernel_memory(recipe, width)
    return parts


def kernel_memory(recipe: Recipe, width: int) -> int:
    """Bytes of one structured NTK of the cell of ``width`` on its kernel probes (see the module doc)."""
    d_in, d_out, probes = task_shape(recipe)
    k, hidden_layers = min(recipe.record.ntk_probes, probes), recipe.model.hidden_layers
    float_inputs = k * d_in * FLOAT32 if recipe.data.dataset == "mnist" else 0
    return ((3 * hidden_layers * width + 2 * d_out) + (hidden_layers * width + d_out)) * k * FLOAT32 + float_inputs \
        + 8 * k * k * 8 + k * d_in * 8


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes free, where the number comes from) on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device} (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available on this machine (MemAvailable, /proc/meminfo)"
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages, "free on this machine (os.sysconf)"


def check_memory(recipe: Recipe, device: torch.device, layers: list[str]) -> None:
    width = max(recipe.model.widths)  # every part grows with the width; the rest is the same for all cells
    parts = cell_memory(recipe, width, layers)
    need = sum(parts.values())
    free, source = available_memory(device)
    if need > free:
        detail = ", ".join(f"{name} {human_bytes(b)}" for name, b in parts.items() if b)
        raise MemoryCheckError(f"{recipe.path}: the largest cell (width {width}) needs at least {human_bytes(need)} "
                               f"({detail}) but {device.type} has {human_bytes(free)} {source}; "
                               "lower [model] widths (or [data] n_probes, [record] gram_probes) or use a larger device")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError  # pragma: no cover
