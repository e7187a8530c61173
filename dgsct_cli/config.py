"""Recipes: YAML files loaded into typed, validated dataclasses, with ``key.path=value`` overrides.

Every error names the recipe file (or the override) and the key, and suggests the closest valid
key for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .models.dgsct import ModelConfig

REPO_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


class RecipeError(ValueError):
    """A recipe (or override) that cannot be used; the message names the source and the key."""


@dataclass
class DataConfig:
    """Recipe section ``data``."""

    path: str = "data/ave"  # the prepared cache (``dgsct prepare ...`` output)
    # When ``path`` does not exist, write and prepare a synthetic dataset there (tiny recipes).
    synthetic_if_missing: bool = False
    synthetic_videos: int = 24
    segment_tiling: int = 10  # each 1-s segment repeated back to back (the release's audio input)
    num_workers: int = 2
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


@dataclass
class SchedulerConfig:
    type: str = "step"  # "step" or "none"
    step_size: int = 3  # epochs
    gamma: float = 0.35

    def __post_init__(self) -> None:
        if self.type not in ("step", "none"):
            raise ValueError(f"must be 'step' or 'none', got {self.type!r}")


@dataclass
class TrainConfig:
    """Recipe section ``train`` (AVE release values by default, spec section 6)."""

    epochs: int = 50
    batch_size: int = 8
    grad_accum: int = 2
    lr: float = 5e-4
    weight_decay: float = 0.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    seed: int = 43
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    eval_batch_size: int = 8
    max_steps_per_epoch: int | None = None
    mixup: bool | None = None  # log-mel mixup; None = the task's release default
    mixup_alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass
class Recipe:
    task: str = "ave"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source: str = ""  # where the recipe was read from (informational)


# -- generic dataclass validation ------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{where}: {key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, key, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: {key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{where}: {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def build_dataclass(cls: type, values: dict[str, Any] | None, prefix: str = "", where: str = "recipe") -> Any:
    """Build ``cls`` from a mapping, rejecting unknown keys (with a suggestion) and wrong types."""
    values = values or {}
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: {prefix or 'recipe'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
            valid = ", ".join(names)
            raise RecipeError(f"{where}: unknown key '{full}'{hint}; valid keys here: {valid}")
        kwargs[key] = _coerce(value, hints[key], full, where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{where}: {prefix or 'recipe'}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# -- recipes -----------------------------------------------------------------------------------


def recipe_files() -> list[Path]:
    """The ``*.yaml`` recipes in ``./recipes`` and in the repository's ``recipes/``."""
    return [*Path("recipes").glob("*.yaml"), *REPO_RECIPES.glob("*.yaml")]


def find_recipe(name_or_path: str) -> Path:
    """A path, or a bare name looked up as ``recipes/<name>.yaml`` here or in the repository."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    candidates = [Path("recipes") / f"{name_or_path}.yaml", REPO_RECIPES / f"{name_or_path}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted({x.stem for x in recipe_files()})
    raise RecipeError(f"{name_or_path}: recipe not found; known recipes: {', '.join(known) or 'none'}")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: cannot parse value ({exc})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override {text!r}: '{part}' is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def recipe_from_dict(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    from .tasks.base import get_task

    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    recipe = build_dataclass(Recipe, raw, "", where)
    try:
        task = get_task(recipe.task)
    except ValueError as exc:
        raise RecipeError(f"{where}: task: {exc}") from exc
    # The task owns the schema of model.head and loss: validate them now, not at build time.
    build_dataclass(task.head_config, recipe.model.head, "model.head", where)
    build_dataclass(task.loss_config, recipe.loss, "loss", where)
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    path = find_recipe(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    where = str(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
        where = f"{path} (with overrides {' '.join(overrides)})"
    recipe = recipe_from_dict(raw, where)
    recipe.name = recipe.name or path.stem
    recipe.source = str(path)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
