"""Recipes: YAML files resolved once into typed, range-checked objects, with ``key.path=value``
overrides.

``load_recipe`` reads a recipe (a built-in name such as ``ave`` or ``ave.yaml``, or a path), applies
overrides and returns a :class:`Recipe` whose every section is typed: the encoder family types
``model.visual``/``model.audio``/``model.text``, the task types ``model.head`` and ``loss``. Every
error names the recipe file (and the overrides), the key and the allowed values, before any data
or weights are read.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .models.dgsct import ModelConfig, resolve_family_sections
from .schema import Annotated, OneOf, Range, RecipeError, build_dataclass, to_dict

__all__ = [
    "DataConfig",
    "InitFrom",
    "ParamGroup",
    "Recipe",
    "RecipeError",
    "SchedulerConfig",
    "TrainConfig",
    "builtin_recipe_dir",
    "find_recipe",
    "load_recipe",
    "recipe_files",
    "recipe_from_dict",
    "recipe_to_yaml",
]


@dataclass
class DataConfig:
    """Recipe section ``data``."""

    path: str = "data/ave"  # the prepared cache (``dgsct prepare ...`` output)
    # When ``path`` is this default location and absent, write and prepare a synthetic dataset
    # there (tiny recipes). A path given on the command line is never filled with synthetic data.
    synthetic_if_missing: bool = False
    synthetic_videos: Annotated[int, Range(3)] = 24
    segment_tiling: Annotated[int, Range(1)] = 10  # each 1-s segment repeated back to back
    num_workers: Annotated[int, Range(0)] = 2
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # Train on the first K samples of each class of the training split (tasks with K-shot subsets;
    # None: the whole split).
    shots: Annotated[int, Range(1)] | None = None


@dataclass
class SchedulerConfig:
    """Recipe section ``train.scheduler``: the learning-rate schedule, stepped once per epoch."""

    type: Annotated[str, OneOf("step", "multistep", "cosine", "none")] = "step"
    step_size: Annotated[int, Range(1)] = 3  # epochs (step)
    gamma: Annotated[float, Range(0, 1, open_low=True)] = 0.35  # decay factor (step, multistep)
    milestones: Annotated[list[int], Range(1)] = field(default_factory=list)  # epochs (multistep)
    min_lr: Annotated[float, Range(0)] = 0.0  # floor of the cosine schedule
    warmup_epochs: Annotated[int, Range(0)] = 0  # linear warm-up before the cosine decay


@dataclass
class ParamGroup:
    """One entry of ``train.param_groups``: parameters whose name matches ``match`` (a glob such as
    ``head.question_encoder.*``) train with their own learning rate / weight decay."""

    match: str = "*"
    lr: Annotated[float, Range(0, open_low=True)] | None = None
    weight_decay: Annotated[float, Range(0)] | None = None


@dataclass
class InitFrom:
    """``train.init_from``: copy named modules from another checkpoint before training."""

    checkpoint: str = ""
    # Parameter-name prefixes of our model to copy (e.g. ``head.fusion``); every tensor under each
    # must exist in both models with the same shape.
    modules: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Recipe section ``train`` (AVE release values by default)."""

    epochs: Annotated[int, Range(1)] = 50
    batch_size: Annotated[int, Range(1)] = 8
    grad_accum: Annotated[int, Range(1)] = 2
    # "sum": gradients of grad_accum micro-batches are averaged into one step. "release": the
    # release's AVE loop (AVE/main_trans.py:109-136) clears the gradients before every batch and
    # steps every grad_accum batches, so a step uses the last batch's gradient alone; the other
    # batches still run forward (BatchNorm statistics, random draws) and we skip their backward.
    accumulation: Annotated[str, OneOf("sum", "release")] = "sum"
    lr: Annotated[float, Range(0, open_low=True)] = 5e-4
    weight_decay: Annotated[float, Range(0)] = 0.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    seed: Annotated[int, Range(0)] = 43
    device: Annotated[str, OneOf("auto", "cpu", "cuda", "mps")] = "auto"  # auto: cuda, then mps, then cpu
    precision: Annotated[str, OneOf("auto", "fp32", "bf16")] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model
    eval_batch_size: Annotated[int, Range(1)] = 8
    max_steps_per_epoch: Annotated[int, Range(1)] | None = None
    mixup: bool | None = None  # log-mel mixup; None = the task's release default
    mixup_alpha: Annotated[float, Range(0, open_low=True)] = 0.5
    # Stop after this many epochs without a better selection metric (None: run every epoch).
    early_stop: Annotated[int, Range(1)] | None = None
    init_from: InitFrom | None = None
    param_groups: list[ParamGroup] = field(default_factory=list)
    # Clip the global gradient norm of the trainable parameters before each step (None: no clipping).
    clip_grad_norm: Annotated[float, Range(0, open_low=True)] | None = None


@dataclass
class Recipe:
    task: str = "ave"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: Any = None  # typed by the task's loss config
    name: str = ""
    source: str = ""  # where the recipe was read from (informational)


# -- where recipes are ---------------------------------------------------------------------------


def builtin_recipe_dir() -> Path:
    """The recipes shipped inside the package."""
    return Path(str(resources.files("dgsct_cli") / "recipes"))


def recipe_files() -> list[Path]:
    """The built-in recipes and those in ``./recipes`` (each file once, built-ins first)."""
    seen: set[Path] = set()
    out = []
    for folder in (builtin_recipe_dir(), Path("recipes")):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                out.append(path)
    return out


def find_recipe(name_or_path: str) -> Path:
    """A path to a file, or a recipe name (``ave``, ``ave.yaml``) looked up in ``./recipes`` and
    among the built-in recipes."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir():
        raise RecipeError(f"{name_or_path}: is a folder, not a recipe file")
    stem = p.name[: -len(".yaml")] if p.name.endswith((".yaml", ".yml")) else p.name
    if p.parent == Path("."):
        for folder in (Path("recipes"), builtin_recipe_dir()):
            for candidate in (folder / f"{stem}.yaml", folder / f"{stem}.yml"):
                if candidate.is_file():
                    return candidate
    known = sorted({x.stem for x in recipe_files()})
    close = difflib.get_close_matches(stem, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise RecipeError(f"{name_or_path}: recipe not found{hint}; known recipes: {', '.join(known) or 'none'}")


# -- reading -------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: cannot parse value ({_one_line(exc)})") from None
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def recipe_from_dict(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """Resolve a recipe mapping into a typed :class:`Recipe` (every section typed and checked)."""
    from .tasks.base import get_task

    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    recipe = build_dataclass(Recipe, raw, "", where)
    try:
        task = get_task(recipe.task)
    except ValueError as exc:
        raise RecipeError(f"{where}: task: {exc}") from None
    try:
        resolve_family_sections(recipe.model, where)
    except RecipeError:
        raise
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    head = recipe.model.head
    if not isinstance(head, task.head_config):
        recipe.model.head = build_dataclass(task.head_config, head, "model.head", where)
    if not isinstance(recipe.loss, task.loss_config):
        recipe.loss = build_dataclass(task.loss_config, recipe.loss, "loss", where)
    return recipe


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    return raw


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    path = find_recipe(name_or_path)
    raw = read_yaml(path)
    where = str(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
        where = f"{path} (with overrides {' '.join(overrides)})"
    # Every default is the full-size AVE recipe's: a file that names no task is a mistake, not AVE.
    if not raw:
        raise RecipeError(
            f"{where}: the recipe is empty (a recipe names at least its task, e.g. 'task: ave')"
        )
    if "task" not in raw:
        raise RecipeError(
            f"{where}: no 'task' key (e.g. 'task: ave'; 'dgsct recipes list' shows each recipe's task)"
        )
    recipe = recipe_from_dict(raw, where)
    recipe.name = recipe.name or path.stem
    recipe.source = os.fspath(path)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
