"""Run a recipe: the data, one training run per cell (parameterization, seed, width), outputs.

This is the glue behind ``lazydrift run``.  What it measures comes from
:mod:`lazydrift.recorder`, what it writes goes through :mod:`lazydrift.export` (atomic files)
and :mod:`lazydrift.report` (tables).

Layout of an output folder::

    OUT/run.json                  recipe, versions, device, git commit, wall time, status
    OUT/probes.csv                which inputs the probes are
    OUT/cells/<cell>/             one folder per cell: its CSVs, cell.json, checkpoint.pt
    OUT/summary.csv, drift.csv, neurons.csv, losses.csv, gram*.csv, init_theory*.csv,
    OUT/noise_floor.csv, table1.md   the cells combined (lazydrift.report.aggregate)

A cell saves a checkpoint (model, sampler RNG, recorder rows, step) every N steps or minutes;
``--resume`` skips finished cells and continues an unfinished one from its checkpoint, giving
the same CSVs bit for bit on CPU as an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import metrics
from .export import atomic_write, write_csv, write_json
from .model import NTKMLP
from .recipes import Recipe, RecipeError
from .recorder import DriftRecorder, log_schedule
from .train import DivergenceError, TrainState, train


# -- the task -----------------------------------------------------------------------------------
@dataclass
class Task:
    """A training task: inputs, targets, a batch sampler and the probe set."""

    name: str
    in_features: int
    out_features: int
    make_sampler: Callable[[int], object]  # seed -> object with next_batch(), state_dict(), load_state_dict()
    probes: torch.Tensor                   # inputs (token ids or float rows)
    probe_table: pd.DataFrame              # probe -> what it is (word, image row, label)
    input_cosines: np.ndarray              # cosine between the probes' inputs (rho^(1))
    info: dict
    vocab: object = None                   # text8 tasks: the Vocabulary


def probe_seed(seed: int) -> int:
    return seed + 2


def sampler_seed(seed: int) -> int:
    return seed + 1


def text8_task(recipe: Recipe) -> Task:
    """Skip-gram on text8 one-hot tokens: centre word in, one context word out (one-hot target)."""
    from . import text8

    d = recipe.data
    tokens = text8.load_tokens(d.dataset, d.data_dir, max_tokens=d.max_tokens or None, download=d.download)
    vocab = text8.build_vocab(tokens, d.vocab_size)
    ids = text8.encode(tokens, vocab)
    V = len(vocab.words)
    n_probes = d.n_probes or V
    g = torch.Generator().manual_seed(probe_seed(recipe.seed))
    probe_ids = torch.randperm(V, generator=g)[:n_probes].sort().values
    table = pd.DataFrame({"probe": np.arange(n_probes), "token_id": probe_ids.numpy(),
                          "word": [vocab.words[i] for i in probe_ids.tolist()],
                          "count": [vocab.counts[i] for i in probe_ids.tolist()]})
    return Task(
        name=d.dataset, in_features=V, out_features=V,
        make_sampler=lambda seed: text8.SkipGramSampler(ids, d.window, recipe.train.batch_size, seed),
        probes=probe_ids, probe_table=table,
        input_cosines=np.eye(n_probes),  # distinct one-hot vectors are orthogonal
        info={"task": f"skip-gram on {d.dataset} (V = {V} one-hot words in and out, window {d.window})",
              "tokens": len(tokens), "tokens_in_vocab": int(len(ids)), "vocab_size": V,
              "vocab_coverage": round(float(len(ids) / max(1, len(tokens))), 4), "window": d.window,
              "probes": (f"all {V} vocabulary tokens" if n_probes == V else
                         f"{n_probes} distinct vocabulary tokens sampled with seed {probe_seed(recipe.seed)}")},
        vocab=vocab,
    )


class ArraySampler:
    """Uniform minibatches (with replacement) of rows of (x, y), from a private generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self):
        idx = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def mnist_task(recipe: Recipe) -> Task:
    """MNIST images on the unit sphere, one-hot (10-dimensional) targets, the Euclidean loss."""
    from . import mnist

    d = recipe.data
    x, labels = mnist.load_mnist_subset(d.n_train, seed=recipe.seed, train=True, root=d.mnist_root or None,
                                  data_dir=d.data_dir, download=d.download)
    y = mnist.one_hot(labels, 10, dtype=x.dtype)
    n_probes = d.n_probes or len(x)
    g = torch.Generator().manual_seed(probe_seed(recipe.seed))
    probe_rows = torch.randperm(len(x), generator=g)[:n_probes].sort().values
    probes = x[probe_rows]
    table = pd.DataFrame({"probe": np.arange(n_probes), "row": probe_rows.numpy(),
                          "label": labels[probe_rows].numpy()})
    cos = (probes.double() @ probes.double().T).clamp(-1, 1).numpy()
    return Task(
        name="mnist", in_features=x.shape[1], out_features=10,
        make_sampler=lambda seed: ArraySampler(x, y, recipe.train.batch_size, seed),
        probes=probes, probe_table=table, input_cosines=cos,
        info={"task": f"MNIST, {len(x)} training images on the unit sphere, one-hot (10-dimensional) targets",
              "n_train": len(x), "probes": f"{n_probes} training images sampled with seed {probe_seed(recipe.seed)}"},
    )


def make_task(recipe: Recipe) -> Task:
    return mnist_task(recipe) if recipe.data.dataset == "mnist" else text8_task(recipe)


# -- cells ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One training run of a recipe."""

    parameterization: str
    seed: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.parameterization}-s{self.seed}-w{self.width}"

    def keys(self) -> dict:
        return {"parameterization": self.parameterization, "seed": self.seed, "width": self.width}


def recipe_cells(recipe: Recipe) -> list[Cell]:
    return [Cell(p, s, w) for p, s, w in itertools.product(recipe.parameterizations, recipe.seed_list, recipe.model.widths)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def build_model(recipe: Recipe, task: Task, cell: Cell, device: torch.device) -> NTKMLP:
    m = recipe.model
    return NTKMLP(task.in_features, cell.width, task.out_features, depth=m.depth,
                  parameterization=cell.parameterization, input_scale=m.input_scale,
                  seed=cell.seed, device=device)


def make_recorder(recipe: Recipe, model: NTKMLP, task: Task) -> DriftRecorder:
    r = recipe.record
    k = min(r.gram_probes, len(task.probes))
    pairs = None if k < 2 else list(zip(*metrics.all_pairs(k)))
    return DriftRecorder(model, layers=r.layers or None, probes=task.probes, pairs=pairs,
                         probe_batch_size=r.probe_batch_size)


class Checkpointer:
    """Saves a cell's state every ``every_steps`` steps or ``every_minutes`` minutes, atomically."""

    def __init__(self, path: Path, every_steps: int, every_minutes: float, fingerprint: str):
        self.path, self.every_steps, self.every_seconds = path, every_steps, every_minutes * 60
        self.fingerprint = fingerprint
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self.last >= self.every_seconds

    def save(self, payload: dict) -> None:
        with atomic_write(self.path, "wb") as f:
            torch.save({**payload, "fingerprint": self.fingerprint}, f)
        self.last = time.monotonic()

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            raise RecipeError(f"{self.path}: this checkpoint was written by a different recipe or cell; "
                              "delete it or write to another --out folder")
        return state


def recipe_fingerprint(recipe: Recipe, cell: Cell) -> str:
    """What must not change between a run and its resumption (checkpoint cadence and device may)."""
    d = recipe.to_dict()
    for key in ("checkpoint", "device", "description", "seeds"):
        d.pop(key, None)
    d["model"].pop("widths")
    d["model"].pop("parameterization")
    d.pop("seed")
    d["cell"] = cell.keys()
    d["probe_seed"] = probe_seed(recipe.seed)
    return json.dumps(d, sort_keys=True)


def _to_device(batch, device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


def run_cell(recipe: Recipe, task: Task, cell: Cell, device: torch.device, cell_dir: Path,
             resume: bool = False, progress: bool = True) -> dict:
    """Train one cell with the recorder on its schedule; write the cell's CSVs and cell.json."""
    t = recipe.train
    cell_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(recipe, task, cell, device)
    rec = make_recorder(recipe, model, task)
    sampler = task.make_sampler(sampler_seed(cell.seed))
    schedule = log_schedule(t.steps, recipe.record.points)
    ckpt = Checkpointer(cell_dir / "checkpoint.pt", recipe.checkpoint.every_steps,
                        recipe.checkpoint.every_minutes, recipe_fingerprint(recipe, cell))
    state = TrainState()
    saved = ckpt.load() if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        sampler.load_state_dict(saved["sampler"])
        rec.load_state_dict(saved["recorder"])
        state = TrainState(step=int(saved["step"]), losses=[(int(s), float(v)) for s, v in saved["losses"]])
        torch.set_rng_state(saved["torch_rng"])
    elapsed_before = float(saved["seconds"]) if saved else 0.0
    start = time.perf_counter()
    latest = {}

    def checkpoint(step: int) -> None:
        ckpt.save({"step": step, "losses": [list(x) for x in state.losses], "model": model.state_dict(),
                   "sampler": sampler.state_dict(), "recorder": rec.state_dict(),
                   "torch_rng": torch.get_rng_state(), "seconds": elapsed_before + time.perf_counter() - start})

    def on_step(step: int, loss: float) -> None:
        if step in schedule_set:
            l2 = rec.record(step)[rec.layers[-1]]
            if not np.all(np.isfinite(l2)):
                raise DivergenceError(step, loss, t.lr, what=f"{rec.layers[-1]} activation")
            latest["l2"] = f"{np.mean(l2):.4g}"
        if ckpt.due(step) and step < t.steps:
            checkpoint(step)

    schedule_set = set(schedule)
    status, error = "completed", ""
    with rec:
        if state.step == 0:
            rec.record(0)
        try:
            state = train(model, lambda: _to_device(sampler.next_batch(), device), t.steps, t.lr,
                          on_step=on_step, fused=t.fused_sgd, state=state, progress=progress,
                          desc=cell.name, postfix=lambda: {"l2": latest.get("l2", "-")})
        except DivergenceError as e:
            status, error = "diverged", str(e)
        extras = after_training(recipe, task, cell, model, rec, cell_dir) if status == "completed" else {}
    seconds = elapsed_before + time.perf_counter() - start
    rec.release_model()  # free the trained weights before the untouched copy is built
    del model
    floor = None
    if recipe.record.noise_floor and status == "completed":
        floor = record_noise_floor(recipe, task, cell, device, schedule)
    write_cell_outputs(cell, rec, state, floor, task, cell_dir)
    info = {**cell.keys(), "status": status, "error": error, "steps_done": state.step,
            "seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(1, state.step), 6),
            "final_loss": state.losses[-1][1] if state.losses else None, **extras}
    write_json(info, cell_dir / "cell.json")
    if status == "completed":
        ckpt.path.unlink(missing_ok=True)  # the CSVs now hold everything it held
    return info


def after_training(recipe: Recipe, task: Task, cell: Cell, model, rec: DriftRecorder, cell_dir: Path) -> dict:
    """Evaluations that need the trained model before it is freed; returns fields for cell.json."""
    extras = {}
    if recipe.record.analogies and task.vocab is not None:  # h_0 from a model rebuilt from the seed
        from . import analogy

        device = next(model.parameters()).device
        extras.update(analogy.evaluate_cell(model, lambda: build_model(recipe, task, cell, device), task.vocab.words,
                                            recipe.train.steps, cell_dir, recipe.record.probe_batch_size))
    return extras


def record_noise_floor(recipe: Recipe, task: Task, cell: Cell, device: torch.device, steps: list[int],
                       passes: int = 5) -> DriftRecorder:
    """Record an untouched copy of the model (rebuilt from the seed) the same way as the trained one.

    Whatever it measures is evaluation noise (nondeterministic kernels, TF32); on CPU it is 0.
    An untouched model shows the same noise at every step, so ``passes`` probe passes at
    steps spread over the schedule measure it at a fraction of the cost of all of them.
    """
    model = build_model(recipe, task, cell, device)
    rec = make_recorder(recipe, model, task)
    picks = sorted({steps[round(k)] for k in np.linspace(0, len(steps) - 1, min(passes, len(steps)))})
    with rec:
        for step in picks:
            rec.record(step)
    rec.release_model()
    return rec


def write_cell_outputs(cell: Cell, rec: DriftRecorder, state: TrainState, floor: DriftRecorder | None,
                       task: Task, cell_dir: Path) -> None:
    from . import report

    write_csv(rec.frame(), cell_dir / "drift.csv")
    write_csv(rec.summary(), cell_dir / "summary.csv")
    write_csv(rec.neurons(), cell_dir / "neurons.csv")
    write_csv(pd.DataFrame(state.losses, columns=["step", "loss"]), cell_dir / "losses.csv")
    if rec.pairs is not None:
        gram = rec.gram_frame()
        write_csv(gram, cell_dir / "gram.csv")
        theory = report.init_theory(gram, task.input_cosines)
        if len(theory):
            write_csv(theory, cell_dir / "init_theory.csv")
    if floor is not None:
        write_csv(report.noise_floor(floor), cell_dir / "noise_floor.csv")


# -- the whole recipe ----------------------------------------------------------------------------
def environment() -> dict:
    import gensim
    import pandas
    import torchvision

    from . import __version__

    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=here).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    timeout=5, cwd=here).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "versions": {"lazydrift": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__, "pandas": pandas.__version__,
                     "gensim": gensim.__version__},
        "git_commit": commit, "git_dirty": dirty, "host": platform.node(), "platform": platform.platform(),
    }


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch_threads": torch.get_num_threads(),
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_recipe(recipe: Recipe, out_dir: str | Path, device: str | None = None, progress: bool = True,
               resume: bool = False, cells: list[Cell] | None = None, shard: tuple[int, int] | None = None) -> dict:
    """Run the recipe's cells (or the given subset) and write every output; returns run.json's content.

    ``shard=(i, N)`` runs only cells i, i + N, ... of them, records itself in ``shard-i-of-N.json``
    instead of run.json and leaves the combined files to ``lazydrift merge`` (lazydrift.shard).
    """
    from . import report
    from .shard import shard_cells, shard_record_name

    out = Path(out_dir)
    dev = resolve_device(device or recipe.device)
    torch.backends.cuda.matmul.allow_tf32 = recipe.train.tf32
    torch.backends.cudnn.allow_tf32 = recipe.train.tf32
    cells = recipe_cells(recipe) if cells is None else cells
    cells = cells if shard is None else shard_cells(cells, *shard)
    record = out / ("run.json" if shard is None else shard_record_name(*shard))
    if not resume:  # a fresh run replaces this folder's earlier results for these cells
        for cell in cells:
            shutil.rmtree(out / "cells" / cell.name, ignore_errors=True)
    started = time.time()
    run = {"recipe": recipe.to_dict(), "recipe_path": recipe.path, "seed": recipe.seed, "status": "running",
           "resumed": resume, **environment(), **device_info(dev), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if shard is not None:
        run["shard"] = {"index": shard[0], "count": shard[1], "cells": [c.name for c in cells]}
    write_json(run, record)
    try:
        task = make_task(recipe)
    except BaseException as e:  # missing data and the like: say so in run.json too
        run.update(status="failed", error=f"{type(e).__name__}: {e}")
        write_json(run, record)
        raise
    run["data"] = task.info
    write_csv(task.probe_table, out / "probes.csv")
    run["cells"] = []
    for cell in cells:
        cell_dir = out / "cells" / cell.name
        done = cell_dir / "cell.json"
        if resume and done.is_file() and json.loads(done.read_text()).get("status") == "completed":
            info = json.loads(done.read_text())
        else:
            info = run_cell(recipe, task, cell, dev, cell_dir, resume=resume, progress=progress)
        run["cells"].append(info)
        if shard is None:  # shards leave the combined files to `lazydrift merge`
            report.aggregate(out, recipe, task.info)  # after every cell, so a later failure loses nothing
        if info["status"] != "completed":
            run["status"], run["error"] = info["status"], info["error"]
            break
    else:
        run["status"] = "completed"
    run["wall_seconds"] = round(time.time() - started, 3)
    write_json(run, record)
    return run
