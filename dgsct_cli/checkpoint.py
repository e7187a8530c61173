"""Our checkpoint format: a safetensors file whose metadata carries the resolved recipe.

``full`` checkpoints hold every weight (self-contained: what ``dgsct convert`` writes);
``delta`` checkpoints (training runs) hold only what training changes (adapters, head, and the
buffers the train-mode encoders update) and rebuild the frozen encoders from the recipe's files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_output
from .config import Recipe, recipe_from_dict, to_dict
from .models.dgsct import DGSCTModel
from .models.weights import CheckpointError, describe_keys, load_state_dict_file

FORMAT = "dgsct-checkpoint-1"


def _delta_keys(model: DGSCTModel, state_keys: Iterable[str]) -> set[str]:
    """Keys a delta checkpoint stores: trainable parameters and persistent buffers."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return trainable | (buffers & set(state_keys))


def save_checkpoint(
    model: DGSCTModel,
    recipe: Recipe,
    path: str | Path,
    full: bool = True,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    # Randomly initialised encoders cannot be rebuilt from files: keep them in the checkpoint.
    if recipe.model.visual.weights in (None, "hub") or recipe.model.audio.weights is None:
        full = True
    if not full:
        keep = _delta_keys(model, state)
        state = {k: v for k, v in state.items() if k in keep}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "task": model.task,
        "contents": "full" if full else "delta",
        "recipe": json.dumps(to_dict(recipe)),
        "metrics": json.dumps(metrics or {}),
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a dgsct checkpoint (not a safetensors file: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dgsct checkpoint (no '{FORMAT}' metadata)")
    return meta


def is_dgsct_checkpoint(path: str | Path) -> bool:
    try:
        read_metadata(path)
        return True
    except CheckpointError:
        return False


def load_checkpoint(path: str | Path, overrides: list[str] | None = None) -> tuple[DGSCTModel, Recipe, dict]:
    """Rebuild the model from the checkpoint's recipe and load its weights (strict)."""
    from safetensors.torch import load_file

    from .config import apply_overrides
    from .models.factory import create_model

    path = Path(path)
    meta = read_metadata(path)
    raw = json.loads(meta["recipe"])
    if overrides:
        raw = apply_overrides(raw, overrides)
    recipe = recipe_from_dict(raw, f"{path} (embedded recipe)")
    full = meta.get("contents") == "full"
    model = create_model(recipe.task, recipe.model, load_encoder_weights=not full)
    state = load_file(str(path))
    own = model.state_dict()
    expected = set(own) if full else _delta_keys(model, own)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit its recipe's model: {describe_keys(missing, unexpected)}"
        )
    model.load_state_dict(state, strict=False)
    return model, recipe, json.loads(meta.get("metrics", "{}"))


def load_any_checkpoint(
    path: str | Path, recipe_for_release: Recipe | None = None
) -> tuple[DGSCTModel, Recipe, str]:
    """Our checkpoint files, our run folders, or release ``.pt`` files (detected by their keys).

    Returns (model, recipe, kind) with kind one of "dgsct", "release".
    """
    from .convert import detect_release_task, load_official_checkpoint

    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: run folder without best.safetensors or last.safetensors")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if is_dgsct_checkpoint(path):
        model, recipe, _ = load_checkpoint(path)
        return model, recipe, "dgsct"
    state = load_state_dict_file(path)
    task = detect_release_task(state)
    if task is None:
        raise CheckpointError(
            f"{path}: neither a dgsct checkpoint nor a recognised DG-SCT release checkpoint"
        )
    # The caller's recipe only where it is for the file's task.
    recipe = (
        recipe_for_release if recipe_for_release and recipe_for_release.task == task else Recipe(task=task)
    )
    model = load_official_checkpoint(task, state, recipe.model)
    return model, recipe, "release"
