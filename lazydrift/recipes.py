"""Recipes: plain TOML experiment files, validated before anything runs.

A recipe has top-level keys (name, description, seed, device) and the sections [data],
[model], [train], [record] and [checkpoint]; every key, its type and its default is a field
of the dataclasses below.  Any mistake (a missing file, a TOML syntax error, an unknown key,
a wrong type, an impossible value) raises :class:`RecipeError` with one line naming the file
and the key.

A recipe is a grid of cells, one training run each (:meth:`Recipe.cells`), and has a
fingerprint (:meth:`Recipe.fingerprint`): everything in it that can change a result.  An output
folder belongs to one fingerprint (:mod:`lazydrift.rundir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

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
    depth: int = 2                # hidden layers (the paper's L = depth + 1 weight layers)
    parameterization: str | list[str] = "ntk"  # ntk | mup | standard, or a list to compare them
    input_scale: str = "embedding"  # embedding (scale 1) | fan_in (1/sqrt(V), Definition 1)


@dataclass
class TrainConfig:
    lr: float = 1.0
    steps: int = 1000
    batch_size: int = 256
    fused_sgd: bool = True        # SGD step inside backward (no gradient tensors)
    tf32: bool = False            # allow TF32 matmuls on CUDA (faster, ~1e-3 relative error)


@dataclass
class RecordConfig:
    layers: list[str] = field(default_factory=list)  # module names; empty = last hidden layer
    points: int = 20              # about this many log-spaced recorded steps (plus 0 and the last)
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
    path: str = ""                # where it was loaded from (not a TOML key)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    @property
    def parameterizations(self) -> list[str]:
        p = self.model.parameterization
        return [p] if isinstance(p, str) else list(p)

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) or [self.seed]

    def cells(self) -> list["Cell"]:
        """Every (parameterization, seed, width) of the recipe, in this order (shards deal them out)."""
        return [Cell(p, s, w) for p, s, w in itertools.product(self.parameterizations, self.seed_list,
                                                                  self.model.widths)]

    def fingerprint(self) -> dict:
        """The recipe minus the keys that cannot change a result (``NOT_IN_FINGERPRINT``)."""
        d = self.to_dict()
        for key in NOT_IN_FINGERPRINT:
            section, _, name = key.rpartition(".")
            (d[section] if section else d).pop(name)
        return d


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
        return dataclasses.asdict(self)


CELL_KEYS = [f.name for f in dataclasses.fields(Cell)]  # a cell's coordinates: the key columns of every result


def fingerprint_digest(fingerprint: dict) -> str:
    """A short stable name for a fingerprint (SHA-256 of its canonical JSON, 16 hex digits)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


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
    known_top = [f.name for f in dataclasses.fields(Recipe) if f.name not in SECTIONS and f.name != "path"]
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise RecipeError(f"{path}: [{key}] must be a table (a [{key}] section)")
            sections[key] = _build(SECTIONS[key], value, path, f"[{key}] ")
        elif key in known_top:
            top[key] = value
        else:
            raise RecipeError(f"{path}: unknown key {key!r} (known: {', '.join(known_top + list(SECTIONS))})")
    recipe = _build(Recipe, top, path, "", extra=sections)
    recipe.path = str(path)
    _check_values(recipe, path)
    return recipe


def _build(cls, values: dict, path, prefix: str, extra: dict | None = None):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = dict(extra or {})
    for key, value in values.items():
        if key not in fields or key in SECTIONS or key == "path":
            known = [k for k in fields if k not in SECTIONS and k != "path"]
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
        names = " or ".join(getattr(o, "__name__", None) or f"list of {typing.get_args(o)[0].__name__}" for o in options)
        raise RecipeError(f"{path}: {where} must be a {names}, got {value!r}")
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


def _check_values(r: Recipe, path) -> None:
    def fail(where: str, msg: str):
        raise RecipeError(f"{path}: {where} {msg}")

    def choice(where, value, options):
        if value not in options:
            fail(where, f"must be one of {', '.join(options)}, got {value!r}")

    choice("device", r.device, DEVICES)
    if r.seed < 0:
        fail("seed", f"must be >= 0, got {r.seed}")
    d, m, t, rec, c = r.data, r.model, r.train, r.record, r.checkpoint
    choice("[data] dataset", d.dataset, DATASETS)
    for where, value, low in (("[data] max_tokens", d.max_tokens, 0), ("[data] vocab_size", d.vocab_size, 2),
                              ("[data] window", d.window, 1), ("[data] n_train", d.n_train, 1),
                              ("[data] n_probes", d.n_probes, 0), ("[model] depth", m.depth, 1),
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
    params = [m.parameterization] if isinstance(m.parameterization, str) else m.parameterization
    if not params:
        fail("[model] parameterization", "must name at least one parameterization")
    for p in params:
        choice("[model] parameterization", p, ("ntk", "mup", "standard"))
    for k, s in enumerate(r.seeds):
        if s < 0:
            fail(f"seeds[{k}]", f"must be >= 0, got {s}")
    choice("[model] input_scale", m.input_scale, ("embedding", "fan_in"))
    if not t.lr > 0:
        fail("[train] lr", f"must be a positive finite number, got {t.lr}")
    if c.every_minutes < 0:
        fail("[checkpoint] every_minutes", f"must be >= 0, got {c.every_minutes}")
    if d.dataset.startswith("text8") and d.n_probes > d.vocab_size:
        fail("[data] n_probes", f"({d.n_probes}) cannot exceed the number of inputs, [data] vocab_size ({d.vocab_size})")
    if rec.analogies and not d.dataset.startswith("text8"):
        fail("[record] analogies", f"needs a text8 dataset (words), got [data] dataset {d.dataset!r}")
    _check_ntk(rec, fail)
    if d.dataset == "mnist" and d.n_probes > d.n_train:
        fail("[data] n_probes", f"({d.n_probes}) cannot exceed the number of inputs, [data] n_train ({d.n_train})")


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
