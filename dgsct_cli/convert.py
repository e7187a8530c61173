"""Release checkpoints (``torch.save(model.state_dict())`` of the DG-SCT release, and of LAVisH's
AVE model as ``ave-lavish``) -> our model.

The mapping is by name: ``swin.*`` -> ``encoder.visual.*`` (the release's "merge at the end of a
stage" moved to timm's start of the next, then timm's checkpoint filter), ``htsat.*`` -> ``encoder.audio.*``,
``*_adapter_blocks_p*`` -> ``encoder.*``, everything else -> ``head.*``. Loading is strict: every
parameter and buffer of ours is filled and every release key is used, except keys of modules the
release builds but never runs, which are dropped by name (each pattern carries its reason).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .config import Recipe, load_recipe
from .models.dgsct import DGSCTModel, ModelConfig
from .models.encoders.htsat import HTSAT_UNUSED_KEYS, HTSATConfig, htsat_key_map, htsat_unused_keys
from .models.encoders.swinv2 import filter_timm_layout
from .models.weights import CheckpointError, describe_keys, load_state_dict_file, unwrap_state_dict
from .tasks.base import OtherRelease, ReleaseLayout

# Release keys every task's checkpoint carries but no task runs.
COMMON_UNUSED_RELEASE_KEYS = {
    r"^adapter_token_downsampler\.": "token downsampler the release builds but never calls",
    r"^swin\.head\.": "Swin-V2 ImageNet-22k classifier, not used by DG-SCT",
    r"^swin\..*\.(relative_position_index|relative_coords_table|attn_mask)$": "buffers timm recomputes",
    **{"^htsat\\." + p.lstrip("^"): reason for p, reason in HTSAT_UNUSED_KEYS.items()},
}

ADAPTER_PREFIXES = (
    "audio_adapter_blocks_p1.",
    "vis_adapter_blocks_p1.",
    "audio_adapter_blocks_p2.",
    "vis_adapter_blocks_p2.",
)


def _shift_merge(key: str, by: int) -> str:
    """``layers.<n>.downsample`` -> ``layers.<n + by>.downsample``: the release's encoders merge
    patches at the end of a stage, timm's (and ours) at the start of the next."""
    return re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + by}.downsample", key)


def release_key(key: str) -> str:
    """The release key (main tasks' layout) that our ``key`` is read from: messages name keys as
    the file spells them."""
    for ours, theirs in (("encoder.visual.", "swin."), ("encoder.audio.", "htsat.")):
        if key.startswith(ours):
            return theirs + _shift_merge(key[len(ours) :], -1)
    if key.startswith("encoder.") and key[len("encoder.") :].startswith(ADAPTER_PREFIXES):
        return key[len("encoder.") :]
    return key[len("head.") :] if key.startswith("head.") else key


def other_releases() -> dict[str, OtherRelease]:
    """Release layouts of other methods' published models, by name (``ave-lavish``): each task
    lists its own in ``Task.other_releases``."""
    from .tasks.base import available_tasks, get_task

    return {name: other for t in available_tasks() for name, other in get_task(t).other_releases.items()}


def release_layout_names() -> list[str]:
    """Every name ``load_official_checkpoint`` takes: the tasks with a release, then the others."""
    from .tasks.base import available_tasks, get_task

    return [t for t in available_tasks() if get_task(t).release is not None] + list(other_releases())


def _layout(name: str) -> tuple[str, ReleaseLayout | None]:
    """(task, layout) of a release layout name (a task name or a name from :func:`other_releases`)."""
    from .tasks.base import get_task

    others = other_releases()
    if name in others:
        return others[name].task, others[name].layout
    return name, get_task(name).release


def release_task(name: str) -> str:
    """The task a release layout name is for (``ave-lavish`` -> ``ave``)."""
    return _layout(name)[0]


def _strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def detect_release_task(state: dict[str, Any]) -> str | None:
    """The release layout of this checkpoint (a task name such as ``ave``, or ``ave-lavish``), by
    a key only that layout has, or None."""
    state = _strip_data_parallel(state)
    by_marker, specific = [], []
    for name in release_layout_names():
        layout = _layout(name)[1]
        if layout is None or layout.marker not in state:
            continue
        if layout.matches is None:
            by_marker.append(name)
        elif layout.matches(state):
            # A layout that checks more than its marker is more specific (one release model can
            # carry another's modules, e.g. the few-shot model builds the AVE head it never runs).
            specific.append(name)
    return (specific or by_marker or [None])[0]


def release_recipe(task: str, recipe: Recipe | None = None) -> Recipe:
    """The recipe a release checkpoint of ``task`` (a release layout name) is read with: ``recipe``
    when it is for that task, else the layout's built-in recipe (release settings)."""
    from .tasks.base import get_task

    others = other_releases()
    if task in others:
        other = others[task]
        return recipe if recipe is not None and recipe.task == other.task else load_recipe(other.recipe)
    if recipe is not None and recipe.task == task:
        return recipe
    spec = get_task(task)
    return load_recipe(spec.recipe) if spec.recipe else Recipe(task=task)


def map_release_state_dict(
    state: dict[str, torch.Tensor], model: DGSCTModel, unused: dict[str, str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Release keys -> our keys. Returns (mapped state, release keys dropped as unused)."""
    audio_cfg = getattr(model.encoder.audio, "cfg", None)
    audio_unused = htsat_unused_keys(audio_cfg) if isinstance(audio_cfg, HTSATConfig) else {}
    patterns = {
        **{k: v for k, v in COMMON_UNUSED_RELEASE_KEYS.items() if not k.startswith("^htsat\\.")},
        **{"^htsat\\." + p.lstrip("^"): reason for p, reason in audio_unused.items()},
        **unused,
    }
    dropped, swin, out = [], {}, {}
    for key, value in state.items():
        if any(re.search(p, key) for p in patterns):
            dropped.append(key)
            continue
        if key.startswith("swin."):
            # Shifted here, always: timm's filter guesses the layout from one key
            # (layers.0.downsample.reduction.weight) and maps every stage wrong when it is absent.
            swin[_shift_merge(key[len("swin.") :], 1)] = value
        elif key.startswith("htsat."):
            new = htsat_key_map(key[len("htsat.") :], audio_unused)
            if new is not None:
                out[f"encoder.audio.{new}"] = value
        elif key.startswith(ADAPTER_PREFIXES):
            out[f"encoder.{key}"] = value
        else:
            out[f"head.{key}"] = value
    for key, value in filter_timm_layout(swin, model.encoder.visual).items():
        out[f"encoder.visual.{key}"] = value
    return out, dropped


def load_release_state_dict(
    model: DGSCTModel,
    state: dict[str, torch.Tensor],
    name: str,
    unused: dict[str, str],
    map_state=None,
    release_name=None,
) -> list[str]:
    """Strictly load a release state dict into ``model``; returns the dropped (unused) keys.
    ``map_state`` maps the release keys to ours (default: the main tasks' layout);
    ``release_name`` spells our keys as the file does, for messages (default: the main layout's
    :func:`release_key` with the default ``map_state``)."""
    mapped, dropped = (map_state or map_release_state_dict)(state, model, unused)
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        spell = release_name or (release_key if map_state is None else None)
        if spell is not None:  # as the file spells them
            missing, unexpected = sorted(map(spell, missing)), sorted(map(spell, unexpected))
        raise CheckpointError(
            f"{name}: does not match the {model.task.upper()} release layout: {describe_keys(missing, unexpected)}"
        )
    wrong = [
        f"{k} (file {tuple(mapped[k].shape)}, expected {tuple(own[k].shape)})"
        for k in own
        if mapped[k].shape != own[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{name}: {len(wrong)} tensor(s) with the wrong shape: {', '.join(wrong[:8])}")
    model.load_state_dict(mapped, strict=True)
    return dropped


def load_official_checkpoint(
    task: str,
    source: str | Path | dict[str, torch.Tensor],
    model_cfg: ModelConfig | None = None,
    **options: Any,
) -> DGSCTModel:
    """Our model for ``task`` with the weights of a release checkpoint, in eval mode.

    ``task`` names a release layout: a task (``ave``, ``avvp``, ...: DG-SCT's release of it) or
    another method's published model (``ave-lavish``: LAVisH's AVE ``MMIL_Net``). ``source`` is a
    path to the release file (read with ``weights_only=True``) or an already-loaded state dict in
    that layout. ``options`` name files a task's layout needs besides the state dict (the task's
    ``ReleaseLayout.configure`` says which).
    """
    from .factory import create_model
    from .tasks.base import available_tasks

    others = other_releases()
    if task not in others and task not in available_tasks():
        raise CheckpointError(
            f"unknown task {task!r} for a release checkpoint; release layouts: {', '.join(release_layout_names())}"
        )
    model_task, layout = _layout(task)
    if layout is None:
        raise CheckpointError(f"task {task!r} has no release checkpoint layout")
    name = str(source) if not isinstance(source, dict) else "release state dict"
    state = load_state_dict_file(source) if not isinstance(source, dict) else unwrap_state_dict(source, name)
    state = _strip_data_parallel(state)
    if layout.rename is not None:
        state = {layout.rename(k): v for k, v in state.items()}
    found = detect_release_task(state)
    if found is None:
        what = others[task].description if task in others else "DG-SCT release checkpoint"
        raise CheckpointError(
            f"{name}: not a {what} (no '{layout.marker}' key); expected a {task.upper()} release state dict"
        )
    if found != task:
        article = "an" if found[0] in "aeiou" else "a"
        raise CheckpointError(
            f"{name}: this is {article} {found.upper()} release checkpoint, expected {task.upper()}"
        )
    if model_cfg is None:
        model_cfg = release_recipe(task).model
    if options:
        if layout.configure is None:
            raise TypeError(
                f"load_official_checkpoint: task {task!r} takes no options ({', '.join(options)})"
            )
        model_cfg = layout.configure(model_cfg, options)
    model = create_model(model_task, model_cfg, load_encoder_weights=False)
    load_release_state_dict(model, state, name, layout.unused_keys, layout.map_state, layout.release_name)
    return model.eval()
