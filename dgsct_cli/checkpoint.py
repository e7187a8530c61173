"""Our checkpoint format: a safetensors file whose metadata carries the resolved recipe, a
checksum of its tensors (``sha256``) and a checksum of the metadata itself (``metadata_sha256``,
over every other metadata entry, the tensor checksum included): an edited recipe or class list is
refused like a flipped byte.

``full`` checkpoints hold every weight (self-contained: what ``dgsct convert`` writes);
``delta`` checkpoints (training runs) hold only what training changes (trainable parameters and
the buffers the train-mode encoders update) and rebuild the frozen encoders from the recipe's
files. Every load verifies the checksum, so flipped bytes are refused with the file's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .atomic import atomic_output
from .config import Recipe, recipe_from_dict
from .encoder_files import check_encoder_files
from .models.dgsct import DGSCTModel
from .models.weights import CheckpointError, describe_keys, load_state_dict_file
from .schema import RecipeError, to_dict

FORMAT = "dgsct-checkpoint-2"
# Written before the metadata was checksummed: read, with a warning that only the tensors are
# verified (their metadata cannot be checked).
OLDER_FORMATS = ("dgsct-checkpoint-1",)
META_CHECKSUM = "metadata_sha256"
log = logging.getLogger(__name__)
__all__ = [
    "FORMAT",
    "is_dgsct_checkpoint",
    "load_any_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "tensor_checksum",
]


def _delta_keys(model: DGSCTModel, state_keys: Iterable[str]) -> set[str]:
    """Keys a delta checkpoint stores: trainable parameters and persistent buffers."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return trainable | (buffers & set(state_keys))


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, not a copy
    return digest.hexdigest()


def metadata_checksum(meta: dict[str, str]) -> str:
    """SHA-256 over every metadata entry but the metadata checksum itself, in key order."""
    body = {k: v for k, v in meta.items() if k != META_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def save_checkpoint(
    model: DGSCTModel,
    recipe: Recipe,
    path: str | Path,
    full: bool = True,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``path`` atomically (temp file + rename); ``extra`` adds metadata strings."""
    from safetensors.torch import save_file

    path = Path(path)
    state = model.state_dict()
    # Randomly initialised encoders cannot be rebuilt from files: keep them in the checkpoint. A
    # tower config without a weight file (the shared family's audio front end) needs none.
    towers = [getattr(recipe.model, s) for s in ("visual", "audio")]
    if any(hasattr(t, "weights") and t.weights in (None, "hub") for t in towers):
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
        "sha256": tensor_checksum(tensors),
        **(extra or {}),
    }
    meta[META_CHECKSUM] = metadata_checksum(meta)
    with atomic_output(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as exc:  # safetensors' SafetensorError is not an OSError
            raise _as_os_error(exc, path) from None
    return path


def _as_os_error(exc: Exception, path: Path) -> OSError:
    """The ``OSError`` behind a safetensors write error (``IoError(Os { code: 28, ... })``), naming
    ``path``; an error without an OS code becomes EIO with safetensors' own words."""
    import errno
    import os
    import re

    text = " ".join(str(exc).split())
    found = re.search(r"code: (\d+)", text)
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code) if found else f"could not be written ({text[:200]})", str(path))


def _raw_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a dgsct checkpoint (not a safetensors file: {exc})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of one of our checkpoints, its checksum verified."""
    path = Path(path)
    meta = _raw_metadata(path)
    kind = meta.get("format")
    if kind in OLDER_FORMATS:
        _warn_older_format(path, kind)
        return meta
    if kind != FORMAT:
        raise CheckpointError(f"{path}: not a dgsct checkpoint (no '{FORMAT}' metadata)")
    if meta.get(META_CHECKSUM) != metadata_checksum(meta):
        raise CheckpointError(
            f"{path}: damaged checkpoint: its metadata (recipe, class names, ...) does not match "
            "the checksum it was saved with"
        )
    return meta


_WARNED: set[str] = set()


def _warn_older_format(path: Path, kind: str) -> None:
    key = str(path.resolve())
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(
            "%s: a checkpoint of an older dgsct (%s): its checksum covers the tensors only, so its "
            "metadata (recipe, class names) is not verified",
            path,
            kind,
        )


def is_dgsct_checkpoint(path: str | Path) -> bool:
    """Says it is one of ours (a damaged one included: reading it then names the damage)."""
    try:
        return _raw_metadata(Path(path)).get("format") in (FORMAT, *OLDER_FORMATS)
    except CheckpointError:
        return False


def _json_field(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta.get(key, "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: damaged metadata: '{key}' is not valid JSON") from None


def read_checkpoint_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of one of our checkpoints, checksum verified."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path), device=device)
    except Exception as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({' '.join(str(exc).split())})") from None
    expected = meta.get("sha256")
    if expected is not None and tensor_checksum(state) != expected:
        raise CheckpointError(
            f"{path}: damaged checkpoint: its tensors do not match the checksum they were saved with"
        )
    return state


def checkpoint_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, dict[str, str]]:
    """(the embedded recipe, the metadata) of one of our checkpoints."""
    from .config import apply_overrides

    path = Path(path)
    meta = read_metadata(path)
    raw = _json_field(meta, "recipe", path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return recipe_from_dict(raw, f"{path} (embedded recipe)"), meta
    except RecipeError as exc:
        raise CheckpointError(f"damaged or incompatible checkpoint: {exc}") from None


def load_checkpoint(path: str | Path, overrides: list[str] | None = None) -> tuple[DGSCTModel, Recipe, dict]:
    """Rebuild the model from the checkpoint's recipe and load its weights (strict, verified)."""
    from .factory import build_model, ensure_files

    path = Path(path)
    recipe, meta = checkpoint_recipe(path, overrides)
    full = meta.get("contents") == "full"
    if not full:  # the frozen towers come from files: the ones it was trained with
        ensure_files(recipe)
        check_encoder_files(_json_field(meta, "encoder_files", path), recipe.model, str(path))
    model = build_model(recipe, load_encoder_weights=not full)
    state = read_checkpoint_tensors(path)
    own = model.state_dict()
    expected = set(own) if full else _delta_keys(model, own)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit its recipe's model: {describe_keys(missing, unexpected)}"
        )
    wrong = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) with the wrong shape, e.g. {wrong[0]}")
    model.load_state_dict(state, strict=False)
    return model, recipe, _json_field(meta, "metrics", path)


def resolve_run_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, the best (else last) checkpoint of a run folder, the model of an export
    folder (``dgsct export``), or ``hf://OWNER/REPO[@REV]``: an export on the Hugging Face Hub,
    downloaded (or taken from the cache) only when such a path is given."""
    from .hub import download_checkpoint, is_hf_uri

    if is_hf_uri(path):
        return download_checkpoint(path)
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path}: run folder without best.safetensors or last.safetensors (nor an export's model.safetensors)"
        )
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def _check_recipe_task(
    recipe: Recipe | None, task: str, path: Path, kind: str, layout: str | None = None
) -> None:
    """``layout``: the release layout name when it is not the task's own (``ave-lavish``)."""
    if recipe is not None and recipe.task != task:
        raise CheckpointError(
            f"--recipe {recipe.source or recipe.name} is for task {recipe.task}, but {path} is {kind} "
            f"{layout or task} checkpoint; give a {task} recipe (or none)"
        )


def load_any_checkpoint(
    path: str | Path, recipe_for_release: Recipe | None = None
) -> tuple[DGSCTModel, Recipe, str]:
    """Our checkpoint files, our run folders, or release ``.pt`` files (detected by their keys).

    Returns (model, recipe, kind) with kind one of "dgsct", "release".
    """
    from .convert import detect_release_task, load_official_checkpoint, release_recipe, release_task

    path = resolve_run_checkpoint(path)
    if is_dgsct_checkpoint(path):
        model, recipe, _ = load_checkpoint(path)
        _check_recipe_task(recipe_for_release, recipe.task, path, "a")
        if recipe_for_release is not None:
            log.warning("%s: carries its own recipe; --recipe (for release checkpoints) is not used", path)
        return model, recipe, "dgsct"
    state = load_state_dict_file(path)
    task = detect_release_task(state)
    if task is None:
        raise CheckpointError(
            f"{path}: neither a dgsct checkpoint nor a recognised DG-SCT release checkpoint"
        )
    _check_recipe_task(recipe_for_release, release_task(task), path, "a release", task)
    recipe = release_recipe(task, recipe_for_release)
    model = load_official_checkpoint(task, state, recipe.model)
    return model, recipe, "release"
