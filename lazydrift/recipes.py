"""Recipes: plain TOML experiment files, validated before anything runs.

A recipe has top-level keys (name, description, seed, device) and the sections [data],
[model], [train], [record] and [checkpoint], and optionally [[protocol]] tables; every key, its
type and its default is a field of the dataclasses below.  Any mistake (a missing file, a TOML
syntax error, an unknown key, a wrong type, an impossible value) raises :class:`RecipeError`
with one line naming the file and the key.

A *protocol* is how a network is parameterized and trained: parameterization, input scale,
optimizer, loss and learning rate (:class:`Protocol`).  A recipe names its protocols in one of
two ways (:meth:`Recipe.protocols`):

* the grid: ``[model] parameterization`` and ``[train] optimizer``, ``loss`` and ``lr``, each a
  value or a list; the protocols are every combination, named by the parameterization and the
  values of the other keys that are lists (``ntk``, ``ntk-adam``, ``mup-lr0.1``);
* ``[[protocol]]`` tables, each with a ``name`` and any of ``parameterization``,
  ``input_scale``, ``optimizer``, ``loss``, ``lr`` (a key left out takes the [model] / [train]
  value): a list of bundles, not a product, for comparing candidate protocols.

A recipe is a grid of cells, one training run each: protocols x seeds x widths
(:meth:`Recipe.cells`).  It has a fingerprint (:meth:`Recipe.fingerprint`): everything in it
that can change a result.  An output folder belongs to one fingerprint (:mod:`lazydrift.rundir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .kernels import INPUT_SCALES
from .losses import LOSSES
from .model import PARAMETERIZATIONS
from .optimizers import HYPERPARAMETERS, OPTIMIZERS

DATASETS = ("text8-mini", "text8", "mnist")
DEVICES = ("auto", "cpu", "cuda")
# Keys that cannot change a result: labels, where data and checkpoints live, how often to save,
# which device (CPU and CUDA agree to float32 rounding, see README "Reliability").  Everything
# else is the recipe's fingerprint.
NOT_IN_FINGERPRINT = ("name", "description", "device", "data.data_dir", "data.download", "data.mnist_root",
                      "checkpoint.every_steps", "checkpoint.every_minutes")


class RecipeError(UserError, ValueError):
    """A recipe cannot be used; the message names the file and the key."""


@dataclass
class DataConfig:
    dataset: str = "text8-mini"   # text8-mini (offline, embedded) | text8 | mnist
    data_dir: str = "data"        # cache and download folder
    download: bool = False        # allow downloading missing data
    max_tokens: int = 0           # text8: keep the first N tokens (0 = all)
    vocab_size: int = 2000        # text8: the V most frequent words are the one-hot inputs/outputs
    window: int = 2               # text8: skip-gram context window
    n_train: int = 10000          # mnist: training images sampled without replacement
    mnist_root: str = ""          # mnist: folder with MNIST/raw (default: $LAZYDRIFT_MNIST_ROOT, then data_dir)
    n_probes: int = 512           # probes: a seeded sample of distinct inputs (0 = all)


@dataclass
class ModelConfig:
    widths: list[int] = field(default_factory=lambda: [1000, 3000])
    hidden_layers: int = 2        # number of hidden layers (the paper's depth L = hidden_layers + 1 weight layers)
    parameterization: str | list[str] = "ntk"  # ntk | mup | standard | pytorch, or a list to compare them
    input_scale: str = "embedding"  # embedding (scale 1) | fan_in (1/sqrt(V), Definition 1)


@dataclass
class TrainConfig:
    lr: float | list[float] = 1.0  # base learning rate (times each layer's factor), or a list
    optimizer: str | list[str] = "sgd"  # sgd | momentum | adam (lazydrift.optimizers), or a list
    loss: str | list[str] = "mse"  # mse ((1/2B) sum ||f - y||^2) | cross_entropy, or a list
    steps: int = 1000
    batch_size: int = 256
    # The optimizers' own hyperparameters; unset = PyTorch's default (lazydrift.optimizers.HYPERPARAMETERS).
    momentum: float | None = None  # momentum: b <- momentum * b + g (default 0.9)
    beta1: float | None = None    # adam (default 0.9)
    beta2: float | None = None    # adam (default 0.999)
    eps: float | None = None      # adam (default 1e-8)
    fused_sgd: bool = True        # the update inside backward (SGD: no gradient tensors; momentum, Adam:
                                  # one reused gradient buffer); false: plain autograd and torch.optim
    tf32: bool = False            # allow TF32 matmuls on CUDA (faster, ~1e-3 relative error)


@dataclass
class RecordConfig:
    layers: list[str] = field(default_factory=list)  # module names; empty = last hidden layer
    points: int = 20              # about this many log-spaced recorded steps (plus 0 and the last)
    steps: list[int] = field(default_factory=list)  # record at exactly these steps instead (plus 0 and the last)
    gram_probes: int = 64         # Gram trajectories for all pairs of the first N probes (0 = none)
    noise_floor: bool = True      # also record an untouched copy of the model
    probe_batch_size: int = 1024
    analogies: bool = False       # text8: word-analogy accuracy of h_0 and h_T for every vocabulary word
    ntk: bool = False             # also record the network's empirical NTK at each recorded step (ntk.csv)
    ntk_probes: int = 256         # ... on the first N probes (capped at the number of probes)
    ntk_output: str | int = "random"  # its scalar output: "random" (v . f, v a unit vector seeded by seed) or an index


@dataclass
class CheckpointConfig:
    every_steps: int = 0          # 0 = by wall time only
    every_minutes: float = 10.0   # 0 = never by wall time


@dataclass
class ProtocolConfig:
    """A ``[[protocol]]`` table; a key left out (None) takes the [model] / [train] value."""

    name: str = ""
    parameterization: str | None = None
    input_scale: str | None = None
    optimizer: str | None = None
    loss: str | None = None
    lr: float | None = None


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    seed: int = 0
    seeds: list[int] = field(default_factory=list)  # several model seeds (empty = [seed])
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    protocol: list[ProtocolConfig] = field(default_factory=list)  # [[protocol]] tables (empty: the grid)
    path: str = ""                # where it was loaded from (not a TOML key)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) or [self.seed]

    def protocols(self) -> list["Protocol"]:
        """The recipe's protocols, in order: its [[protocol]] tables, else the grid of [model]
        parameterization x [train] optimizer x loss x lr (see the module doc)."""
        m, t = self.model, self.train
        if self.protocol:
            return [Protocol(p.name, p.parameterization or m.parameterization, p.input_scale or m.input_scale,
                             p.optimizer or t.optimizer, p.loss or t.loss, t.lr if p.lr is None else p.lr)
                    for p in self.protocol]
        axes = {"parameterization": _as_list(m.parameterization), "optimizer": _as_list(t.optimizer),
                "loss": _as_list(t.loss), "lr": _as_list(t.lr)}
        out = []
        for values in itertools.product(*axes.values()):
            v = dict(zip(axes, values))
            label = [v["parameterization"]] + [f"lr{v[k]:g}" if k == "lr" else str(v[k])
                                               for k in ("optimizer", "loss", "lr") if len(axes[k]) > 1]
            out.append(Protocol("-".join(label), v["parameterization"], m.input_scale, v["optimizer"], v["loss"], v["lr"]))
        return out

    def cells(self) -> list["Cell"]:
        """Every (protocol, seed, width) of the recipe, in this order (shards deal them out)."""
        return [Cell(p.name, p.parameterization, p.input_scale, p.optimizer, p.loss, p.lr, s, w)
                for p, s, w in itertools.product(self.protocols(), self.seed_list, self.model.widths)]

    def optimizer_options(self, optimizer: str) -> dict:
        """The [train] hyperparameters of ``optimizer`` that the recipe sets (the rest: PyTorch's defaults)."""
        return {k: getattr(self.train, k) for k in HYPERPARAMETERS[optimizer] if getattr(self.train, k) is not None}

    def record_steps(self) -> list[int]:
        """The recorded steps: 0, ``[record] steps`` (or ~``points`` log-spaced steps) and the last."""
        from .recorder import log_schedule

        if self.record.steps:
            return sorted({0, *self.record.steps, self.train.steps})
        return log_schedule(self.train.steps, self.record.points)

    def fingerprint(self) -> dict:
        """The recipe minus the keys that cannot change a result (``NOT_IN_FINGERPRINT``)."""
        d = self.to_dict()
        for key in NOT_IN_FINGERPRINT:
            section, _, name = key.rpartition(".")
            (d[section] if section else d).pop(name)
        return d


@dataclass(frozen=True)
class Protocol:
    """How a network is parameterized and trained (a [[protocol]] table, or one point of the grid)."""

    name: str
    parameterization: str
    input_scale: str
    optimizer: str
    loss: str
    lr: float


@dataclass(frozen=True)
class Cell:
    """One training run of a recipe: a protocol (its name and values), a seed and a width."""

    protocol: str
    parameterization: str
    input_scale: str
    optimizer: str
    loss: str
    lr: float
    seed: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.protocol}-s{self.seed}-w{self.width}"

    def keys(self) -> dict:
        return dataclasses.asdict(self)


CELL_KEYS = [f.name for f in dataclasses.fields(Cell)]  # a cell's coordinates: the key columns of every result


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


# Keys renamed since results were first stored: (section, new name) -> old name.  Stored records
# (recipe.json, checkpoints) are read with the new names (:func:`stored_recipe_from_dict`), and
# digests are taken under the old ones, so a folder written before a rename still resumes and merges.
RENAMED_KEYS = {("model", "hidden_layers"): "depth"}


def fingerprint_digest(fingerprint: dict) -> str:
    """A short stable name for a fingerprint (SHA-256 of its canonical JSON, 16 hex digits), under
    the keys' first names (:data:`RENAMED_KEYS`)."""
    canonical = {k: dict(v) if isinstance(v, dict) else v for k, v in fingerprint.items()}
    for (section, new), old in RENAMED_KEYS.items():
        if new in canonical.get(section, {}):
            canonical[section][old] = canonical[section].pop(new)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def stored_recipe_from_dict(raw: dict, path: str | Path = "<recipe>") -> Recipe:
    """:func:`recipe_from_dict` for a recipe lazydrift stored (recipe.json, a checkpoint): keys it
    stored under an older name (:data:`RENAMED_KEYS`) are read under the new one.  A recipe a
    person writes must use the new names (:func:`recipe_from_dict` says which)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for (section, new), old in RENAMED_KEYS.items():
        if isinstance(raw.get(section), dict) and old in raw[section] and new not in raw[section]:
            raw[section][new] = raw[section].pop(old)
    return recipe_from_dict(raw, path)


def fingerprint_differences(theirs: dict, ours: dict) -> list[str]:
    """``"[train] lr: 0.5 there, 0.01 here"`` for every key whose value differs (recipe key syntax)."""
    def show(value) -> str:
        return "absent" if value is _ABSENT else json.dumps(value)

    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key, _ABSENT), ours.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"[{key}] {d}" for d in fingerprint_differences(a, b)]
        elif a != b:
            out.append(f"{key}: {show(a)} there, {show(b)} here")
    return out


_ABSENT = object()


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
            "record": RecordConfig, "checkpoint": CheckpointConfig}
PROTOCOLS = "protocol"  # the key of the [[protocol]] tables
PROTOCOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # part of cell folder names


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``section.key=value`` strings, TOML values) and validate a recipe."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None
    for item in overrides or []:
        _apply_override(raw, item, path)
    recipe = recipe_from_dict(raw, path)
    if not recipe.name:
        recipe.name = path.stem
    return recipe


def _apply_override(raw: dict, item: str, path: Path) -> None:
    if "=" not in item:
        raise RecipeError(f"{path}: --set {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word is a string
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{path}: --set {item!r}: {part} is not a section")
    node[parts[-1]] = parsed


def recipe_from_dict(raw: dict, path: str | Path = "<recipe>") -> Recipe:
    """Build a validated :class:`Recipe` from parsed TOML."""
    top = {}
    sections = {}
    known_top = [f.name for f in dataclasses.fields(Recipe)
                 if f.name not in SECTIONS and f.name not in ("path", PROTOCOLS)]
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise RecipeError(f"{path}: [{key}] must be a table (a [{key}] section)")
            if key == "model" and "depth" in value:  # the old name of hidden_layers; depth now means the paper's L
                raise RecipeError(f"{path}: [model] depth is now called hidden_layers (the number of hidden layers; "
                                  f"the paper's depth L is one more): rename it to hidden_layers = {value['depth']!r}")
            sections[key] = _build(SECTIONS[key], value, path, f"[{key}] ")
        elif key == PROTOCOLS:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise RecipeError(f"{path}: {PROTOCOLS} must be [[{PROTOCOLS}]] tables, each with a name")
            sections[key] = [_build(ProtocolConfig, v, path, f"[[{PROTOCOLS}]] #{k + 1} ") for k, v in enumerate(value)]
        elif key in known_top:
            top[key] = value
        else:
            raise RecipeError(f"{path}: unknown key {key!r} (known: {', '.join(known_top + list(SECTIONS))}, "
                              f"[[{PROTOCOLS}]])")
    recipe = _build(Recipe, top, path, "", extra=sections)
    recipe.path = str(path)
    _check_values(recipe, path)
    return recipe


def _build(cls, values: dict, path, prefix: str, extra: dict | None = None):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = dict(extra or {})
    for key, value in values.items():
        if key not in fields or key in SECTIONS or key in ("path", PROTOCOLS):
            known = [k for k in fields if k not in SECTIONS and k not in ("path", PROTOCOLS)]
            raise RecipeError(f"{path}: unknown key {prefix}{key!r} (known: {', '.join(known)})")
        kwargs[key] = _check_type(value, hints[key], path, f"{prefix}{key}")
    return cls(**kwargs)


def _check_type(value, hint, path, where: str):
    origin = typing.get_origin(hint)
    if origin is types.UnionType:
        options = typing.get_args(hint)
        for option in options:
            try:
                return _check_type(value, option, path, where)
            except RecipeError:
                pass
        names = " or ".join(_type_name(o) for o in options if o is not NONE)
        raise RecipeError(f"{path}: {where} must be a {names}, got {value!r}")
    if hint is NONE:  # an unset optional key (TOML has no null; recipe.json stores it as null)
        if value is not None:
            raise RecipeError(f"{path}: {where} must be unset, got {value!r}")
        return None
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise RecipeError(f"{path}: {where} must be a list of {item.__name__}, got {value!r}")
        return [_check_type(v, item, path, f"{where}[{k}]") for k, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecipeError(f"{path}: {where} must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path}: {where} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: {where} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: {where} must be a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled recipe type {hint}")  # pragma: no cover


NONE = type(None)
TYPE_NAMES = {float: ("finite number", "finite numbers"), int: ("integer", "integers"), str: ("string", "strings"),
              bool: ("true or false", "booleans")}


def _type_name(hint) -> str:
    if typing.get_origin(hint) is list:
        return f"list of {TYPE_NAMES[typing.get_args(hint)[0]][1]}"
    return TYPE_NAMES[hint][0]


SEED_LIMIT = 2 ** 62  # torch's generators take < 2**64; the data seeds add small offsets (tasks.py)


def _check_values(r: Recipe, path) -> None:
    def fail(where: str, msg: str):
        raise RecipeError(f"{path}: {where} {msg}")

    def choice(where, value, options):
        if value not in options:
            fail(where, f"must be one of {', '.join(options)}, got {value!r}")

    choice("device", r.device, DEVICES)
    if not 0 <= r.seed < SEED_LIMIT:
        fail("seed", f"must be in [0, 2**62), got {r.seed}")
    d, m, t, rec, c = r.data, r.model, r.train, r.record, r.checkpoint
    choice("[data] dataset", d.dataset, DATASETS)
    for where, value, low in (("[data] max_tokens", d.max_tokens, 0), ("[data] vocab_size", d.vocab_size, 2),
                              ("[data] window", d.window, 1), ("[data] n_train", d.n_train, 1),
                              ("[data] n_probes", d.n_probes, 0), ("[model] hidden_layers", m.hidden_layers, 1),
                              ("[train] steps", t.steps, 0), ("[train] batch_size", t.batch_size, 1),
                              ("[record] points", rec.points, 1), ("[record] probe_batch_size", rec.probe_batch_size, 1),
                              ("[record] gram_probes", rec.gram_probes, 0),
                              ("[checkpoint] every_steps", c.every_steps, 0)):
        if value < low:
            fail(where, f"must be >= {low}, got {value}")
    if not m.widths:
        fail("[model] widths", "must list at least one width")
    for k, w in enumerate(m.widths):
        if w < 1:
            fail(f"[model] widths[{k}]", f"must be >= 1, got {w}")
    for k, s in enumerate(r.seeds):
        if not 0 <= s < SEED_LIMIT:
            fail(f"seeds[{k}]", f"must be in [0, 2**62), got {s}")
    _check_protocols(r, fail, choice)
    for k, step in enumerate(rec.steps):
        if not 1 <= step <= t.steps:
            fail(f"[record] steps[{k}]", f"must be a training step in [1, [train] steps = {t.steps}], got {step}")
    if c.every_minutes < 0:
        fail("[checkpoint] every_minutes", f"must be >= 0, got {c.every_minutes}")
    if d.dataset.startswith("text8") and d.n_probes > d.vocab_size:
        fail("[data] n_probes", f"({d.n_probes}) cannot exceed the number of inputs, [data] vocab_size ({d.vocab_size})")
    if rec.analogies and not d.dataset.startswith("text8"):
        fail("[record] analogies", f"needs a text8 dataset (words), got [data] dataset {d.dataset!r}")
    _check_ntk(rec, fail)
    if d.dataset == "mnist" and d.n_probes > d.n_train:
        fail("[data] n_probes", f"({d.n_probes}) cannot exceed the number of inputs, [data] n_train ({d.n_train})")


GRID_KEYS = (("[model] parameterization", "parameterization", PARAMETERIZATIONS), ("[train] optimizer", "optimizer", OPTIMIZERS),
             ("[train] loss", "loss", LOSSES), ("[train] lr", "lr", None))


def _check_protocols(r: Recipe, fail, choice) -> None:
    """The protocol keys ([model] parameterization, input_scale, [train] optimizer, loss, lr, each
    value or list, or [[protocol]] tables), and the optimizers' hyperparameters."""
    m, t = r.model, r.train
    choice("[model] input_scale", m.input_scale, INPUT_SCALES)
    grid = {"parameterization": m.parameterization, "optimizer": t.optimizer, "loss": t.loss, "lr": t.lr}
    for where, key, options in GRID_KEYS:
        values = _as_list(grid[key])
        if not values:
            fail(where, "must list at least one value")
        if len(set(values)) < len(values):
            fail(where, f"lists a value twice: {values}")
        if r.protocol and isinstance(grid[key], list):
            fail(where, f"is a list, which [[{PROTOCOLS}]] tables cannot be combined with; give each protocol its own {key}")
        for v in values:
            if options is None:
                if not v > 0:
                    fail(where, f"must be a positive finite number, got {v}")
            else:
                choice(where, v, options)
    names = set()
    for k, p in enumerate(r.protocol, 1):
        label = f"[[{PROTOCOLS}]] #{k}"
        if not PROTOCOL_NAME.fullmatch(p.name):
            fail(f"{label} name", f"must be letters, digits and _ . + - (it names the cell folders), got {p.name!r}")
        if p.name in names:
            fail(f"{label} name", f"{p.name!r} names two protocols; give each its own name")
        names.add(p.name)
        label = f"[[{PROTOCOLS}]] {p.name!r}"
        for key, options in (("parameterization", PARAMETERIZATIONS), ("input_scale", INPUT_SCALES),
                             ("optimizer", OPTIMIZERS), ("loss", LOSSES)):
            if getattr(p, key) is not None:
                choice(f"{label} {key}", getattr(p, key), options)
        if p.lr is not None and not p.lr > 0:
            fail(f"{label} lr", f"must be a positive finite number, got {p.lr}")
    used = {p.optimizer for p in r.protocols()}
    for optimizer, defaults in HYPERPARAMETERS.items():
        for key in defaults:
            value = getattr(t, key)
            if value is None:
                continue
            if optimizer not in used:
                fail(f"[train] {key}", f"is a hyperparameter of {optimizer}, which no protocol of this recipe uses "
                                       f"(optimizers: {', '.join(sorted(used))}); remove it")
            if key == "eps" and not value > 0:
                fail(f"[train] {key}", f"must be > 0, got {value}")
            if key != "eps" and not 0 <= value < 1:
                fail(f"[train] {key}", f"must be in [0, 1), got {value}")


def _check_ntk(rec: RecordConfig, fail) -> None:
    """[record] ntk_probes and ntk_output (the kernel's options; checked whether or not ntk is on)."""
    if rec.ntk_probes < 1:
        fail("[record] ntk_probes", f"must be >= 1, got {rec.ntk_probes}")
    if isinstance(rec.ntk_output, str):
        if rec.ntk_output != "random":
            fail("[record] ntk_output", f"must be \"random\" or an output index, got {rec.ntk_output!r}")
        return
    if rec.ntk_output < 0:  # the upper end needs the task's outputs: lazydrift.preflight.check_kernel
        fail("[record] ntk_output", f"must be an output index (>= 0) or \"random\", got {rec.ntk_output}")
