"""Run a recipe: data, one model per width, the training loop with a DriftRecorder, outputs.

This is the glue behind ``lazydrift run``: everything it measures comes from
:mod:`lazydrift.recorder` and :mod:`lazydrift.metrics`, everything it writes goes through
:mod:`lazydrift.export` (atomic files) and :mod:`lazydrift.report` (tables).
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import metrics
from .export import write_csv, write_json, write_text
from .model import NTKMLP
from .recipes import Recipe
from .recorder import DriftRecorder, log_schedule
from .train import DivergenceError, TrainState, train


@dataclass
class Task:
    """A training task: inputs, targets, a batch sampler and the probe set."""

    name: str
    in_features: int
    out_features: int
    make_sampler: Callable[[int], object]  # seed -> object with next_batch() and state_dict()
    probes: torch.Tensor                   # inputs (ids or float rows)
    probe_table: pd.DataFrame              # probe -> what it is (word, image index, label)
    input_cosines: np.ndarray              # cosine between the probes' inputs (rho^(1))
    info: dict


# -- data ------------------------------------------------------------------------------------
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
        info={"tokens": len(tokens), "tokens_in_vocab": int(len(ids)), "vocab_size": V,
              "vocab_coverage": float(len(ids) / max(1, len(tokens))), "window": d.window,
              "probes": f"{n_probes} distinct vocabulary tokens sampled with seed {probe_seed(recipe.seed)}"},
    )


class _ArraySampler:
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
    x, labels = mnist.load_mnist_subset(d.n_train, seed=recipe.seed, train=True,
                                        root=d.mnist_root or None, data_dir=d.data_dir, download=d.download)
    y = torch.nn.functional.one_hot(labels.long(), 10).to(x.dtype)
    n_probes = d.n_probes or len(x)
    g = torch.Generator().manual_seed(probe_seed(recipe.seed))
    probe_rows = torch.randperm(len(x), generator=g)[:n_probes].sort().values
    probes = x[probe_rows]
    table = pd.DataFrame({"probe": np.arange(n_probes), "row": probe_rows.numpy(),
                          "label": labels[probe_rows].numpy()})
    cos = (probes.double() @ probes.double().T).clamp(-1, 1).numpy()
    return Task(
        name="mnist", in_features=x.shape[1], out_features=10,
        make_sampler=lambda seed: _ArraySampler(x, y, recipe.train.batch_size, seed),
        probes=probes, probe_table=table, input_cosines=cos,
        info={"n_train": len(x), "probes": f"{n_probes} training images sampled with seed {probe_seed(recipe.seed)}"},
    )


def make_task(recipe: Recipe) -> Task:
    return mnist_task(recipe) if recipe.data.dataset == "mnist" else text8_task(recipe)


# -- one width ---------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def build_model(recipe: Recipe, task: Task, width: int, device: torch.device) -> NTKMLP:
    m = recipe.model
    return NTKMLP(task.in_features, width, task.out_features, depth=m.depth,
                  parameterization=m.parameterization, input_scale=m.input_scale,
                  seed=recipe.seed, device=device)


def make_recorder(recipe: Recipe, model: NTKMLP, task: Task) -> DriftRecorder:
    r = recipe.record
    k = min(r.gram_probes, len(task.probes))
    pairs = None if k < 2 else list(zip(*metrics.all_pairs(k)))
    return DriftRecorder(model, layers=r.layers or None, probes=task.probes, pairs=pairs,
                         probe_batch_size=r.probe_batch_size)


def _to_device(batch, device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


@dataclass
class WidthResult:
    width: int
    recorder: DriftRecorder
    state: TrainState
    seconds: float
    status: str
    error: str = ""
    floor: DriftRecorder | None = None


def run_width(recipe: Recipe, task: Task, width: int, device: torch.device, progress: bool = True) -> WidthResult:
    """Train one width with the recorder on its schedule; returns the recorder and the losses."""
    t = recipe.train
    model = build_model(recipe, task, width, device)
    rec = make_recorder(recipe, model, task)
    sampler = task.make_sampler(sampler_seed(recipe.seed))
    schedule = set(log_schedule(t.steps, recipe.record.points))
    latest = {}

    def on_step(step: int, loss: float) -> None:
        if step in schedule:
            rec.record(step)
            l2 = rec._drift[-1]["l2"]
            if not np.all(np.isfinite(l2)):
                raise DivergenceError(step, float("nan"), t.lr, what=f"{rec.layers[-1]} activation")
            latest["l2"] = f"{np.mean(l2):.4g}"

    start = time.perf_counter()
    state = TrainState()
    status, error = "completed", ""
    with rec:
        rec.record(0)
        try:
            state = train(model, lambda: _to_device(sampler.next_batch(), device), t.steps, t.lr,
                          on_step=on_step, fused=t.fused_sgd, progress=progress,
                          desc=f"width {width}", postfix=lambda: {"l2": latest.get("l2", "-")})
        except DivergenceError as e:
            status, error = "diverged", str(e)
    seconds = time.perf_counter() - start
    result = WidthResult(width, rec, state, seconds, status, error)
    del model
    if recipe.record.noise_floor and status == "completed":
        result.floor = record_noise_floor(recipe, task, width, device, sorted(schedule))
    return result


def record_noise_floor(recipe: Recipe, task: Task, width: int, device: torch.device, steps: list[int]) -> DriftRecorder:
    """Record an untouched copy of the model (rebuilt from the seed) at the same steps.

    Whatever it measures is evaluation noise (nondeterministic kernels, TF32); on CPU it is 0.
    """
    model = build_model(recipe, task, width, device)
    rec = make_recorder(recipe, model, task)
    with rec:
        for step in steps:
            rec.record(step)
    return rec


# -- outputs -------------------------------------------------------------------------------------
def with_width(frame: pd.DataFrame, width: int) -> pd.DataFrame:
    return frame.assign(width=width)[["width", *frame.columns]]


def environment() -> dict:
    import gensim
    import pandas
    import torchvision

    from . import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).parent).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "versions": {"lazydrift": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__, "pandas": pandas.__version__,
                     "gensim": gensim.__version__},
        "git_commit": commit, "git_dirty": dirty, "host": platform.node(), "platform": platform.platform(),
    }


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return info


def run_recipe(recipe: Recipe, out_dir: str | Path, device: str | None = None, progress: bool = True) -> dict:
    """Run every width of ``recipe`` and write all outputs to ``out_dir``; returns run.json's content."""
    from . import report

    out = Path(out_dir)
    dev = resolve_device(device or recipe.device)
    torch.backends.cuda.matmul.allow_tf32 = recipe.train.tf32
    torch.backends.cudnn.allow_tf32 = recipe.train.tf32
    started = time.time()
    run = {"recipe": recipe.to_dict(), "recipe_path": recipe.path, "seed": recipe.seed, "status": "running",
           **environment(), **device_info(dev), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(run, out / "run.json")

    task = make_task(recipe)
    run["data"] = task.info
    write_csv(task.probe_table, out / "probes.csv")
    results: list[WidthResult] = []
    for width in recipe.model.widths:
        res = run_width(recipe, task, width, dev, progress=progress)
        results.append(res)
        run.setdefault("widths", []).append({"width": width, "seconds": round(res.seconds, 3),
                                             "seconds_per_step": round(res.seconds / max(1, res.state.step), 5),
                                             "steps_done": res.state.step, "status": res.status,
                                             "final_loss": res.state.losses[-1][1] if res.state.losses else None})
        write_outputs(recipe, task, results, out)  # after every width, so a later failure loses nothing
        if res.status != "completed":
            run["status"], run["error"] = res.status, res.error
            break
    else:
        run["status"] = "completed"
    run["wall_seconds"] = round(time.time() - started, 3)
    write_json(run, out / "run.json")
    report.write_table1(recipe, results, out, task)
    return run


def write_outputs(recipe: Recipe, task: Task, results: list[WidthResult], out: Path) -> None:
    """drift.csv, summary.csv, neurons.csv, losses.csv and the Gram / theory / noise-floor files."""
    from . import report

    write_csv(pd.concat([with_width(r.recorder.frame(), r.width) for r in results]), out / "drift.csv")
    write_csv(pd.concat([with_width(r.recorder.summary(), r.width) for r in results]), out / "summary.csv")
    write_csv(pd.concat([with_width(r.recorder.neurons(), r.width) for r in results]), out / "neurons.csv")
    write_csv(pd.concat([pd.DataFrame(r.state.losses, columns=["step", "loss"]).assign(width=r.width)
                         [["width", "step", "loss"]] for r in results]), out / "losses.csv")
    if any(r.recorder.pairs is not None for r in results):
        report.write_gram_outputs(results, task, out)
