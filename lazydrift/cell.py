"""One cell of a recipe: train a network with the recorder on its schedule, write the cell's results.

:func:`run_cell` is the whole training run of one (protocol, seed, width), written as one loop in
the spirit of nanoGPT's ``train.py``::

    for step in steps:
        x, y = next batch
        with optimizer.step():            the protocol's optimizer updates the weights inside backward
            loss = loss_fn(model(x), y)   the protocol's loss
            loss.backward()
        stop if the loss is not finite
        log the loss every 10 steps
        record h_t on the schedule; stop if it is not finite
        checkpoint when due

Before the loop it builds the model, recorder, sampler, optimizer and loss from the cell's
protocol (:class:`lazydrift.recipes.Cell`), or restores them from the cell's checkpoint (the
optimizer's state included: Adam's moments, momentum's buffers); after it, it evaluates what
needs the trained model (analogies), frees it, records the noise floor on an untouched copy
and writes the cell's files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics
from .checkpoint import Checkpointer
from .export import write_csv, write_json
from .fingerprints import relative_change
from .kernel_drift import KernelDriftTracker
from .losses import loss_function
from .model import NTKMLP, NoLimitError
from .optimizers import Optimizer
from .recipes import Cell, Recipe, RecipeError, fingerprint_digest
from .recorder import DriftRecorder
from .tasks import Task, sampler_seed
from .train import DivergenceError

LOSS_EVERY = 10  # losses.csv: every 10th step and the last


# -- what a cell records -------------------------------------------------------------------------
def model_layers(hidden_layers: int) -> list[str]:
    """Names of the NTKMLP modules that produce an output in the forward pass, in forward order:
    ``hidden.k`` (post-ReLU features), ``hidden.k.0`` (pre-activations), ``hidden.k.1`` (the ReLU,
    the same tensor as ``hidden.k``) and ``readout``."""
    model = NTKMLP(1, 1, 1, hidden_layers=hidden_layers)
    return [name for name, module in model.named_modules() if name and name != "hidden"]


def recorded_layers(recipe: Recipe) -> list[str]:
    """The recipe's ``[record] layers`` checked against the model and put in its forward order (the
    last hidden layer by default).  This order is stored with each cell and every reader uses it,
    so "the last layer" is the deepest recorded one."""
    names = model_layers(recipe.model.hidden_layers)
    layers = recipe.record.layers or [f"hidden.{recipe.model.hidden_layers - 1}"]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise RecipeError(f"{recipe.path}: [record] layers: {', '.join(map(repr, unknown))} is not a layer of the "
                          f"{recipe.model.hidden_layers}-hidden-layer network; choose from {', '.join(names)}")
    return sorted(dict.fromkeys(layers), key=names.index)


def build_model(recipe: Recipe, task: Task, cell: Cell, device: torch.device) -> NTKMLP:
    m = recipe.model
    return NTKMLP(task.in_features, cell.width, task.out_features, hidden_layers=m.hidden_layers,
                  parameterization=cell.parameterization, input_scale=cell.input_scale,
                  seed=cell.seed, device=device)


def build_optimizer(recipe: Recipe, cell: Cell, model: NTKMLP) -> Optimizer:
    """The cell's optimizer at its learning rate, with the recipe's hyperparameters for it."""
    return Optimizer(model, cell.optimizer, cell.lr, in_backward=recipe.train.fused_sgd,
                     **recipe.optimizer_options(cell.optimizer))


def lr_key(recipe: Recipe, cell: Cell) -> str:
    """Where the cell's learning rate is set, for messages."""
    return f"the lr of [[protocol]] {cell.protocol!r}" if recipe.protocol else "[train] lr"


def make_recorder(recipe: Recipe, model: NTKMLP, task: Task, layers: list[str], kernel: bool = True) -> DriftRecorder:
    r = recipe.record
    k = min(r.gram_probes, len(task.probes))
    pairs = None if k < 2 else list(zip(*metrics.all_pairs(k)))
    return DriftRecorder(model, layers=layers, probes=task.probes, pairs=pairs, probe_batch_size=r.probe_batch_size,
                         stats={"rel_l2": relative_change}, **(kernel_options(recipe, task) if kernel else {}))


def kernel_options(recipe: Recipe, task: Task) -> dict:
    """The recorder's kernel arguments for ``[record] ntk``: the first ``ntk_probes`` probes, the output
    v . f with v seeded by the recipe's seed (the same v in every cell), and the probes' class labels
    for the kernel-target alignment where the task has them (MNIST)."""
    r = recipe.record
    if not r.ntk:
        return {}
    labels = task.probe_table["label"].to_numpy() if "label" in task.probe_table else None
    return {"ntk_probes": r.ntk_probes, "ntk_output": r.ntk_output, "ntk_seed": recipe.seed,
            "ntk_targets": None if labels is None else torch.tensor(labels)}


# -- the loop ------------------------------------------------------------------------------------
def run_cell(recipe: Recipe, task: Task, cell: Cell, device: torch.device, cell_dir: Path, layers: list[str],
             resume: bool = False, progress: bool = True) -> dict:
    """Train one cell and write its CSVs and cell.json; returns cell.json's content.

    A NaN or infinite loss or recorded activation ends the cell with status ``diverged`` (its
    rows so far are written).  Anything else that stops it (an interrupt, an error) leaves the
    last checkpoint for ``--resume`` and no cell.json.
    """
    t = recipe.train
    cell_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(recipe, task, cell, device)
    rec = make_recorder(recipe, model, task, layers)
    sampler = task.make_sampler(sampler_seed(cell.seed))
    optimizer = build_optimizer(recipe, cell, model)
    loss_fn = loss_function(cell.loss)
    record_at = set(recipe.record_steps())
    ckpt = Checkpointer(cell_dir, recipe, cell)
    done, losses, seconds_before = 0, [], 0.0
    saved = ckpt.load() if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        sampler.load_state_dict(saved["sampler"])
        rec.load_state_dict(saved["recorder"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        done, seconds_before = int(saved["step"]), float(saved["seconds"])
        losses = [(int(s), float(v)) for s, v in saved["losses"]]
        del saved  # its copy of the weights is in the model now

    def state(step: int) -> dict:  # what --resume needs to continue after ``step``
        return {"step": step, "losses": [list(pair) for pair in losses], "model": model.state_dict(),
                "sampler": sampler.state_dict(), "recorder": rec.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "seconds": seconds_before + time.perf_counter() - start}

    status, error, extras = "completed", "", {}
    start = shown = time.perf_counter()
    bar = tqdm(total=t.steps, initial=done, desc=cell.name, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    with rec:  # hooks on, h_0 captured (or restored from the checkpoint)
        if done == 0:
            rec.record(0)
        try:
            for step in range(done + 1, t.steps + 1):
                x, y = (v.to(device, non_blocking=True) for v in sampler.next_batch())
                with optimizer.step():  # the weights are updated inside backward()
                    loss = loss_fn(model(x), y)
                    loss.backward()
                loss = loss.item()
                if not math.isfinite(loss):
                    raise DivergenceError(step, loss, cell.lr, optimizer=cell.optimizer, key=lr_key(recipe, cell))
                done = step
                if step % LOSS_EVERY == 0 or step == t.steps:
                    losses.append((step, loss))
                if step in record_at:
                    for layer, l2 in rec.record(step).items():
                        if not np.isfinite(l2).all():  # the value shown is the drift's, not the loss's
                            bad = np.asarray(l2)[~np.isfinite(l2)].flat[0]
                            raise DivergenceError(step, float(bad), cell.lr, what=f"{layer} activation drift ||h_t - h_0||_2",
                                                  optimizer=cell.optimizer, key=lr_key(recipe, cell))
                if ckpt.due(step) and step < t.steps:
                    ckpt.save(state(step))
                bar.update(1)
                if progress and time.perf_counter() - shown > 1.0:
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    shown = time.perf_counter()
        except DivergenceError as e:
            status, error = "diverged", str(e)
        finally:
            bar.close()
        if status == "completed":
            extras = after_training(recipe, task, cell, model, cell_dir)
    seconds = seconds_before + time.perf_counter() - start

    limits = init_limits(model, task.probes[:recipe.record.gram_probes]) if rec.pairs is not None else None
    rec.release_model()  # free the trained weights before the untouched copy is built
    optimizer.close()
    del model, optimizer, state
    floor = record_noise_floor(recipe, task, cell, device, layers) if recipe.record.noise_floor and status == "completed" else None
    write_cell_outputs(rec, losses, floor, limits, cell_dir)
    info = {**cell.keys(), "status": status, "error": error, "steps_done": done, "layers": layers,
            "fingerprint": fingerprint_digest(recipe.fingerprint()), "seconds": round(seconds, 3), "seconds_per_step": round(seconds / max(1, done), 6),
            "final_loss": losses[-1][1] if losses else None, **extras}
    if rec.ntk_probes is not None:  # how many probes the kernel saw, and its share of ``seconds``
        info.update(ntk_probes=rec.ntk_probes, ntk_seconds=round(rec.kernel_seconds, 3))
    write_json(info, cell_dir / "cell.json")
    ckpt.remove()  # the cell is final: its CSVs hold everything the checkpoint held
    return info


# -- after the loop --------------------------------------------------------------------------------
def after_training(recipe: Recipe, task: Task, cell: Cell, model: NTKMLP, cell_dir: Path) -> dict:
    """Evaluations that need the trained model before it is freed; returns fields for cell.json."""
    extras = {}
    if recipe.record.analogies and task.vocab is not None:  # h_0 from a model rebuilt from the seed
        from . import analogy

        device = next(model.parameters()).device
        extras.update(analogy.evaluate_cell(model, lambda: build_model(recipe, task, cell, device), task.vocab.words,
                                            recipe.train.steps, cell_dir, recipe.record.probe_batch_size))
    return extras


def record_noise_floor(recipe: Recipe, task: Task, cell: Cell, device: torch.device, layers: list[str],
                       passes: int = 5) -> tuple[DriftRecorder, pd.DataFrame | None]:
    """Record an untouched copy of the model (rebuilt from the seed) the same way as the trained one.

    Whatever it measures is evaluation noise (nondeterministic GPU kernels, TF32); on CPU it is 0.
    An untouched model shows the same noise at every step, so ``passes`` probe passes at
    steps spread over the schedule measure it at a fraction of the cost of all of them.  With
    ``[record] ntk`` the copy's empirical NTK is computed twice, as the recorder computes Theta_0
    and a record, and the second row's ``rel_change`` is the kernel's floor: one comparison,
    because each kernel costs about a training step at the paper's widths.  Returns the
    recorder and those kernel rows (None without the kernel).
    """
    steps = recipe.record_steps()
    model = build_model(recipe, task, cell, device)
    rec = make_recorder(recipe, model, task, layers, kernel=False)
    picks = sorted({steps[round(k)] for k in np.linspace(0, len(steps) - 1, min(passes, len(steps)))})
    with rec:
        for step in picks:
            rec.record(step)
    rec.release_model()
    kernel = None
    options = kernel_options(recipe, task)
    if options:
        probes = task.probes[:options["ntk_probes"]].to(device)
        tracker = KernelDriftTracker(model, probes, output=options["ntk_output"], seed=options["ntk_seed"],
                                     limit=None, method="structured")
        tracker.capture()
        tracker.record(steps[-1])
        kernel = tracker.frame()
    return rec, kernel


def init_limits(model: NTKMLP, probes: torch.Tensor) -> dict | None:
    """The model's infinite-width cosines on the Gram probes, for init_theory.csv (None where it has no limit)."""
    try:
        return model.limit_kernels(probes, want=("input_cosine", "feature_cosine"))
    except NoLimitError:
        return None


def write_cell_outputs(rec: DriftRecorder, losses: list[tuple[int, float]],
                       floor: tuple[DriftRecorder, pd.DataFrame | None] | None, limits: dict | None,
                       cell_dir: Path) -> None:
    from . import report

    write_csv(rec.frame(), cell_dir / "drift.csv")
    write_csv(rec.summary(), cell_dir / "summary.csv")
    write_csv(rec.neurons(), cell_dir / "neurons.csv")
    write_csv(pd.DataFrame(losses, columns=["step", "train_loss"]), cell_dir / "losses.csv")  # "loss" is a key (the loss function)
    if rec.pairs is not None:
        gram = rec.gram_frame()
        write_csv(gram, cell_dir / "gram.csv")
        theory = report.init_theory(gram, limits) if limits is not None else pd.DataFrame()
        if len(theory):
            write_csv(theory, cell_dir / "init_theory.csv")
    if rec.ntk_probes is not None:
        write_csv(rec.kernel_frame(), cell_dir / "ntk.csv")
    if floor is not None:
        write_csv(report.noise_floor(*floor), cell_dir / "noise_floor.csv")
