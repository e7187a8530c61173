"""Joins a resolved recipe, an encoder family and a task: models and dataset splits.

``create_model(task, model_cfg)`` builds the dual encoder of the config's family, the task's head
and the task's trainable set; ``build_model(recipe, data)`` does it for a recipe (the head's class
count from the data unless the recipe pins it); ``open_split`` opens a prepared split the way the
recipe's task reads it, after checking that the data is the task's.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from .config import Recipe
from .data.manifest import MANIFEST_NAME, PreparedCache
from .models.dgsct import (
    DGSCTModel,
    ModelConfig,
    build_dual_encoder,
    ensure_weight_files,
    resolve_family_sections,
)
from .schema import build_dataclass
from .tasks.base import DataInfo, Task, get_task

__all__ = [
    "build_model",
    "create_model",
    "data_info",
    "ensure_data",
    "ensure_files",
    "open_cache",
    "open_split",
]


@contextmanager
def _quiet_random_init():
    """Silence the 'randomly initialised' warnings when weights are about to be overwritten."""
    logger = logging.getLogger("dgsct_cli.models.encoders")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def create_model(
    task: str,
    cfg: ModelConfig | None = None,
    head_cfg: Any = None,
    load_encoder_weights: bool = True,
    data: DataInfo | None = None,
) -> DGSCTModel:
    """The DG-SCT model for ``task``: the family's towers (frozen), 48 adapters and the task head,
    with the task's trainable set.

    ``head_cfg`` defaults to ``cfg.head``; a ``num_classes`` left to the data is taken from
    ``data`` (else the task's default). With ``load_encoder_weights=False`` no weight file is
    read (the caller loads a checkpoint that holds the weights).
    """
    spec = get_task(task)
    cfg = resolve_family_sections(copy.deepcopy(cfg) if cfg is not None else ModelConfig())
    head_cfg = cfg.head if head_cfg is None else head_cfg
    if not isinstance(head_cfg, spec.head_config):
        head_cfg = build_dataclass(spec.head_config, head_cfg, "model.head")
    cfg.head = spec.resolve_head(head_cfg, data)
    if load_encoder_weights:
        encoder = build_dual_encoder(cfg, load_weights=True)
    else:
        with _quiet_random_init():
            encoder = build_dual_encoder(cfg, load_weights=False)
    head = spec.build_head(encoder.visual_dim, encoder.audio_dim, cfg.head, cfg)
    model = DGSCTModel(cfg, encoder, head, task)
    model.set_trainable(lambda name: spec.is_trainable(name, cfg))
    return model


def build_model(
    recipe: Recipe, data: DataInfo | None = None, load_encoder_weights: bool = True
) -> DGSCTModel:
    """``create_model`` for a recipe, with torch's thread count set for its size
    (``runtime.threads`` overrides; :func:`dgsct_cli.runtime.plan_threads`)."""
    from .runtime import apply_threads

    model = create_model(recipe.task, recipe.model, load_encoder_weights=load_encoder_weights, data=data)
    apply_threads(model, recipe.runtime.threads)
    return model


def require_data_folder(path: str | Path) -> None:
    """Refuse a data folder that does not exist (checked before slow work such as reading a
    checkpoint)."""
    if not Path(path).exists():
        raise ValueError(f"{path}: data folder does not exist (run 'dgsct prepare ...' first)")


def open_cache(path: str | Path) -> PreparedCache:
    """The prepared cache at ``path``, with a message that says what to do when there is none."""
    path = Path(path)
    require_data_folder(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder (a prepared dataset is a folder with {MANIFEST_NAME})")
    return PreparedCache(path)


def check_task_data(task: Task, cache: PreparedCache, what: str) -> None:
    """Refuse data of another dataset: ``this is an AVVP checkpoint; the data is AVE``."""
    if task.datasets and cache.dataset not in task.datasets:
        raise ValueError(
            f"{cache.path}: this is {cache.dataset.upper()} data, but {what} is for task "
            f"{task.name.upper()} (it reads {', '.join(d.upper() for d in task.datasets)} data)"
        )


def data_info(recipe: Recipe, path: str | Path, what: str = "the recipe") -> DataInfo:
    """What the model needs to know about the data at ``path`` (checked against the task)."""
    task = get_task(recipe.task)
    cache = open_cache(path)
    check_task_data(task, cache, what)
    return task.data_info(cache)


def open_split(recipe: Recipe, path: str | Path, split: str, what: str = "the recipe"):
    """Split ``split`` of the prepared data at ``path``, read as the recipe's task reads it.

    The data must be the task's dataset and, when the recipe's head has a class count, have
    that many classes."""
    task = get_task(recipe.task)
    cache = open_cache(path)
    check_task_data(task, cache, what)
    info = task.data_info(cache)
    task.resolve_head(recipe.model.head, info, where=what)
    return task.open_dataset(cache, split, recipe.model, recipe.data)


def open_checkpoint_split(
    checkpoint: str | Path,
    data: str | Path,
    split: str,
    recipe: Recipe | None = None,
    device: str | None = None,
):
    """(model on its device, recipe, checkpoint kind, task, dataset of ``split``, device): a
    checkpoint (run folder, our file or a release file, read with ``recipe``) and the data it is
    evaluated on; ``device`` overrides the recipe's ``train.device``."""
    from .checkpoint import load_any_checkpoint
    from .runtime import resolve_device

    require_data_folder(data)
    model, r, kind = load_any_checkpoint(checkpoint, recipe)
    dataset = open_split(r, data, split, what=f"the checkpoint {checkpoint}")
    device = resolve_device(device or r.train.device)
    return model.to(device), r, kind, get_task(r.task), dataset, device


def ensure_files(recipe: Recipe, console: Console | None = None) -> None:
    """Every weight file the recipe's model reads is there (checked before any data is written or
    model built; one error names all that are missing); a demo recipe writes random ones first."""
    written = ensure_weight_files(recipe.model, where=f"recipe {recipe.name or recipe.source}")
    if written and console is not None:
        console.print(
            f"[cyan]wrote random weight files in the published layouts (a demo: they mean nothing): "
            f"{', '.join(map(str, written))}",
            highlight=False,
        )


def ensure_data(
    recipe: Recipe,
    data_dir: str | Path,
    console: Console | None = None,
    show_progress: bool = True,
    synthetic: bool = False,
) -> Path:
    """The prepared cache at ``data_dir``; a missing one is written with synthetic data only at the
    recipe's own default location (tiny recipes) or when ``synthetic`` is asked for."""
    data_dir = Path(data_dir)
    if (data_dir / MANIFEST_NAME).is_file():
        return data_dir
    task = get_task(recipe.task)
    default_location = Path(recipe.data.path) == data_dir
    if not (synthetic or (recipe.data.synthetic_if_missing and default_location)):
        # A command that runs as printed: --root names the downloaded dataset; --synthetic instead
        # writes a small stand-in.
        how = (
            f"run 'dgsct prepare {task.prepare_hint()} --root ROOT --out {data_dir}' first (ROOT: the "
            f"downloaded dataset), or 'dgsct prepare {task.prepare_hint()} --synthetic --out {data_dir}' "
            "for a small synthetic stand-in"
        )
        if not data_dir.exists():
            raise ValueError(f"{data_dir}: data folder does not exist; {how}")
        raise ValueError(f"{data_dir}: no prepared dataset here ({MANIFEST_NAME} missing); {how}")
    if console is not None and show_progress:
        dataset = (task.datasets[0] if task.datasets else task.name).upper()
        console.print(f"[cyan]{data_dir}: writing and preparing a synthetic {dataset} dataset there")
    from .atomic import naming_the_folder

    with naming_the_folder(data_dir):
        task.write_synthetic(
            data_dir,
            videos=recipe.data.synthetic_videos,
            image_size=recipe.model.visual.img_size,
            progress=show_progress,
            console=console,
        )
    return data_dir
