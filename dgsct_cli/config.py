"""Recipes: YAML files resolved once into typed, range-checked objects, with ``key.path=value``
overrides.

``load_recipe`` reads a recipe (a built-in name such as ``ave`` or ``ave.yaml``, or a path), applies
overrides and returns a :class:`Recipe` whose every section is typed: the encoder family types
``model.visual``/``model.audio``/``model.text``, the task types ``model.head`` and ``loss``. Every
error names the recipe file (and the overrides), the key and the allowed values, before any data
or weights are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .models.model_config import ModelConfig, resolve_family_sections
from .recipe_files import _one_line, builtin_recipe_dir, find_recipe, read_yaml, recipe_files
from .schema import Annotated, OneOf, Range, RecipeError, build_dataclass, to_dict
from .tasks.configs import task_configs

__all__ = [
    "DataConfig",
    "InitFrom",
    "ParamGroup",
    "Recipe",
    "RecipeError",
    "RuntimeConfig",
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
    compile: bool = False  # torch.compile the whole model (minutes of compiling)
    # torch.compile each encoder block, each adapter and the paired half blocks separately
    # ("regional": one compile per distinct block shape, seconds not minutes). auto: on for CUDA.
    compile_regions: Annotated[str, OneOf("auto", "on", "off")] = "auto"
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
    # Where the run is logged besides metrics.jsonl (always on): TensorBoard event files in
    # RUN/tensorboard, a Weights & Biases run (dgsct_cli/loggers.py); both are optional extras.
    loggers: Annotated[list[str], OneOf("jsonl", "tensorboard", "wandb")] = field(
        default_factory=lambda: ["jsonl"]
    )
    wandb_project: str = "dgsct"  # the W&B project of runs with the wandb logger


@dataclass
class RuntimeConfig:
    """Recipe section ``runtime``: how the process runs (not what it computes)."""

    # torch's intra-op threads; None: 1 for tiny models, every usable core for full-size ones
    # (runtime.plan_threads), or OMP_NUM_THREADS when that is set.
    threads: Annotated[int, Range(1)] | None = None


@dataclass
class Recipe:
    task: str = "ave"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    loss: Any = None  # typed by the task's loss config
    name: str = ""
    source: str = ""  # where the recipe was read from (informational)


# -- where recipes are ---------------------------------------------------------------------------


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


def recipe_from_dict(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """Resolve a recipe mapping into a typed :class:`Recipe` (every section typed and checked).
    Imports no torch for the built-in tasks and encoder families."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    recipe = build_dataclass(Recipe, raw, "", where)
    try:
        task = task_configs(recipe.task)
    except ValueError as exc:
        raise RecipeError(f"{where}: task: {exc}") from None
    try:
        resolve_family_sections(recipe.model, where)
    except RecipeError:
        raise
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    head = recipe.model.head
    if not isinstance(head, task.head):
        recipe.model.head = build_dataclass(task.head, head, "model.head", where)
    if not isinstance(recipe.loss, task.loss):
        recipe.loss = build_dataclass(task.loss, recipe.loss, "loss", where)
    return recipe


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
