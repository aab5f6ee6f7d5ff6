"""Training recipes: one dataclass, read from YAML, overridable with ``key=value``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .argtypes import recipe_names as list_recipes  # the public name here
from .argtypes import shipped_recipes
from .augment import AugmentConfig

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: torch.compile modes that replay CUDA graphs themselves
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")
TEST_SPLIT = "PrivateTest"


@dataclass
class Recipe:
    """Everything that defines a training run except the data path and output folder."""

    name: str = "custom"
    model: str = "mba_cnn"
    model_options: dict = field(default_factory=dict)
    dataset: str = "fer2013"  # or "ferplus" (needs ferplus_csv)
    ferplus_csv: str | None = None
    # "soft": the data's target distributions (FER+ votes; a teacher's, for distillation)
    targets: str = "hard"
    train_splits: list[str] = field(default_factory=lambda: ["Training"])
    val_split: str = "PublicTest"
    # where the data has no val_split (e.g. plain class folders: one split, "all"), hold out
    # this fraction of the training split, stratified by class and seeded, for selection
    val_fraction: float = 0.0
    epochs: int = 300
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    label_smoothing: float = 0.0
    class_weights: str = "none"  # or "balanced"
    augment: dict = field(default_factory=dict)
    ema: float = 0.0  # weight EMA decay per step; 0 disables
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU unless amp_cpu)
    amp_cpu: bool = False
    channels_last: bool = True
    compile: bool = False
    # torch.compile's mode: "reduce-overhead" replays CUDA graphs (small batches are
    # launch-bound on a GPU); "default", "max-autotune", "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    # record the whole step (augmentation, forward, backward, optimizer) once as a CUDA
    # graph and replay it: one launch per step instead of hundreds (CUDA, one process)
    cuda_graph: bool = False
    sync_bn: bool = False
    time_budget_minutes: float | None = None  # fit the schedule's length to this time
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self._check_collections()
        if isinstance(self.train_splits, str):
            self.train_splits = [self.train_splits]
        # a list val_split (FaceSet.subset takes one) must not smuggle the test split in
        val = [self.val_split] if isinstance(self.val_split, str) else list(self.val_split)
        if TEST_SPLIT in self.train_splits or TEST_SPLIT in val:
            raise ValueError(
                f"recipe {self.name!r} trains or selects on {TEST_SPLIT}: that split is the "
                "held-out test set, reported once after training. Train on Training and select "
                "on PublicTest."
            )
        if set(val) & set(self.train_splits):
            raise ValueError(
                f"recipe {self.name!r} selects on {sorted(set(val) & set(self.train_splits))}, "
                "which it also trains on: the validation split must be held out"
            )
        self._coerce_numbers()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: use one of {OPTIMIZERS}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {self.compile_mode!r}: use one of {COMPILE_MODES}")
        if self.cuda_graph and self.compile and self.compile_mode in GRAPHING_COMPILE_MODES:
            raise ValueError(
                f"cuda_graph records the whole step as one CUDA graph; compile_mode "
                f"{self.compile_mode!r} records graphs of its own: use one or the other "
                "(cuda_graph with compile_mode default or max-autotune-no-cudagraphs)"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: use one of {SCHEDULES}")
        if self.dataset not in ("fer2013", "ferplus"):
            raise ValueError(f"dataset {self.dataset!r}: use fer2013 or ferplus")
        if self.dataset == "ferplus" and not self.ferplus_csv:
            raise ValueError("dataset ferplus needs ferplus_csv (the fer2013new.csv votes)")
        if self.targets not in ("hard", "soft"):
            raise ValueError(f"targets {self.targets!r}: use hard or soft")
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights {self.class_weights!r}: use none or balanced")
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("recipe key nesterov: Nesterov SGD needs momentum > 0 "
                             "(set momentum, or nesterov: false)")
        self._check_ranges()
        check_augment(AugmentConfig.from_dict(self.augment))

    def _check_collections(self) -> None:
        """Keys that hold a mapping or split names: the wrong type is a clear error here, not
        a TypeError deep in training."""
        from .models import list_models

        for key in ("name", "model"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"recipe key {key}: expected a name, got {getattr(self, key)!r}")
        if self.model not in list_models():
            raise ValueError(f"recipe key model: {self.model!r} is not a model; use one of "
                             f"{list_models()} (`ferkit models` lists them)")
        for key in ("model_options", "augment"):
            if getattr(self, key) is None:
                setattr(self, key, {})
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"recipe key {key}: expected a mapping of option: value, got "
                                 f"{getattr(self, key)!r}")
        self._check_model_options()
        for key in ("train_splits", "val_split"):
            value = getattr(self, key)
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list | tuple) or not names or not all(
                isinstance(n, str) and n for n in names
            ):
                hint = ("; for data without a validation split set val_fraction (e.g. 0.1) "
                        "instead" if key == "val_split" else "")
                raise ValueError(f"recipe key {key}: expected a split name or a list of split "
                                 f"names (e.g. Training, PublicTest), got {value!r}{hint}")
        if self.ferplus_csv is not None and not isinstance(self.ferplus_csv, str):
            raise ValueError(f"recipe key ferplus_csv: expected a file name, got "
                             f"{self.ferplus_csv!r}")

    def _check_model_options(self) -> None:
        """The model builds with these options: its layers are made on torch's "meta"
        device (shapes only, no memory, no time), so names and values are checked now."""
        import torch

        from .models import create_model

        try:
            with torch.device("meta"):
                create_model(self.model, **self.model_options)
        except ValueError as exc:
            raise ValueError(f"recipe key model_options: {exc}") from None

    def _check_ranges(self) -> None:
        """Numbers in their ranges, checked before any data is read or any step is run."""
        def need(key: str, ok: bool, expected: str) -> None:
            _need(self, "", key, ok, expected)

        for key in ("epochs", "batch_size", "eval_batch_size"):
            need(key, getattr(self, key) >= 1, "a positive integer")
        for key in ("lr", "weight_decay", "min_lr", "warmup_epochs", "plateau_patience"):
            need(key, getattr(self, key) >= 0, "a number >= 0")
        need("momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        need("plateau_factor", 0 < self.plateau_factor <= 1, "a number in (0, 1]")
        need("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)")
        need("ema", 0 <= self.ema < 1, "a decay in [0, 1) (0 disables EMA)")
        need("val_fraction", 0 <= self.val_fraction < 1,
             "a fraction in [0, 1) of the training split (0: none held out)")
        need("time_budget_minutes",
             self.time_budget_minutes is None or 0 < self.time_budget_minutes < math.inf,
             "minutes > 0 (or null: no budget)")
        need("seed", 0 <= self.seed < 2**63, "an integer in [0, 2**63)")
        for key in ("lr", "weight_decay", "min_lr", "momentum", "label_smoothing", "ema",
                    "val_fraction", "warmup_epochs", "plateau_factor"):
            need(key, math.isfinite(getattr(self, key)), "a finite number")

    def _coerce_numbers(self) -> None:
        """Numbers as numbers: YAML reads ``1e-3`` (no dot) as a string, for instance."""
        kinds = {"int": int, "float": float, "bool": bool}
        for f in dataclasses.fields(self):
            kind = kinds.get(str(f.type).split(" |")[0])
            value = getattr(self, f.name)
            if kind is not None and value is None and "None" not in str(f.type):
                raise ValueError(f"recipe key {f.name}: expected {f.type}, got null")
            if kind is None or value is None:
                continue
            if (kind is bool) != isinstance(value, bool):  # True is an int to Python
                raise ValueError(f"recipe key {f.name}: expected {f.type}, got {value!r}")
            if isinstance(value, kind):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"recipe key {f.name}: expected {f.type}, got {value!r}") from None
            if kind is int and not (math.isfinite(number) and number == int(number)):
                raise ValueError(f"recipe key {f.name}: expected an integer, got {value!r}")
            setattr(self, f.name, kind(number))

    @property
    def augment_config(self) -> AugmentConfig:
        return AugmentConfig.from_dict(self.augment)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown recipe key(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[str] | str | dict | None = None
    ) -> Recipe:
        """A recipe file, or the name of one that ships with ferkit (``paper``, see
        `list_recipes`), with overrides: ``KEY=VALUE`` strings as ``--set`` takes them
        (``["epochs=1", "augment.erasing=0.5"]``, or one such string), or a dict of keys
        (``{"epochs": 1, "augment.erasing": 0.5}``)."""
        overrides = as_overrides(overrides)
        path = recipe_path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read recipe ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a recipe is a mapping of keys to values")
        d.setdefault("name", path.stem)
        return cls.from_dict(apply_overrides(d, overrides))


def as_overrides(overrides: list[str] | str | dict | None) -> list[str]:
    """``KEY=VALUE`` strings from overrides as `Recipe.from_yaml` takes them: such strings
    (a list, or one string), a dict of keys, or None."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, dict):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, (list, tuple)) and all(isinstance(o, str) for o in overrides):
        return list(overrides)
    raise TypeError("overrides must be KEY=VALUE strings (a list, or one string) or a "
                    f"dict of recipe keys, not {overrides!r}")


def recipe_path(recipe: str | Path) -> Path:
    """The file of ``recipe``: a path as given where it exists, else a shipped recipe's
    name (``paper`` or ``paper.yaml``); neither is an error that lists the names."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipes() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ValueError(f"{recipe}: no such recipe file, nor a recipe that ships with ferkit "
                     f"({', '.join(list_recipes())})")


#: Augmentation options that are probabilities, and those that are ranges of magnitudes.
AUGMENT_PROBABILITIES = ("hflip", "vflip", "erasing")
AUGMENT_MAGNITUDES = ("rotation", "shear", "translate", "mixup", "cutmix")


def _need(obj, prefix: str, key: str, ok: bool, expected: str) -> None:
    """The error for a recipe key whose value is out of its range."""
    if not ok:
        raise ValueError(f"recipe key {prefix}{key}: expected {expected}, got "
                         f"{getattr(obj, key)!r}")


def check_augment(cfg: AugmentConfig) -> AugmentConfig:
    """Ranges of the augmentation options (their types `AugmentConfig.from_dict` checks)."""
    def need(key: str, ok: bool, expected: str) -> None:
        _need(cfg, "augment.", key, ok, expected)

    for key in AUGMENT_PROBABILITIES:
        need(key, 0 <= getattr(cfg, key) <= 1, "a probability in [0, 1]")
    for key in AUGMENT_MAGNITUDES:
        need(key, 0 <= getattr(cfg, key) < math.inf, "a finite number >= 0")
    need("translate", cfg.translate <= 1, "a fraction of the image size in [0, 1]")
    for key in ("brightness", "contrast"):
        need(key, 0 <= getattr(cfg, key) <= 1, "a fraction in [0, 1]")
    need("gamma", 0 <= cfg.gamma < math.inf, "a finite number >= 0")
    need("scale", 0 < cfg.scale[0] <= cfg.scale[1] < math.inf,
         "a zoom range [low, high] with 0 < low <= high")
    need("erasing_area", 0 < cfg.erasing_area[0] <= cfg.erasing_area[1] <= 1,
         "an area range [low, high] with 0 < low <= high <= 1")
    return cfg


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings (values parsed as YAML; ``a.b=1`` sets a nested key)."""
    d = dict(d)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value")
        value = yaml.safe_load(raw)
        target = d
        *parents, leaf = key.split(".")
        for depth, p in enumerate(parents):
            inner = target.get(p)
            if inner is not None and not isinstance(inner, dict):
                where = ".".join(parents[: depth + 1])
                raise ValueError(f"override {item!r}: {where} is {inner!r}, not a mapping of "
                                 "keys (give it whole, e.g. " + f"{where}=VALUE)")
            target[p] = dict(inner or {})
            target = target[p]
        target[leaf] = value
    return d
