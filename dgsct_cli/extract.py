"""Per-segment pooled features (what enters the task head), with labels and ids, to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .atomic import atomic_output
from .data.datasets import make_loader
from .models.dgsct import DGSCTModel
from .runtime import autocast_for, progress_bar, to_device
from .tasks.base import Task


def model_method(model: DGSCTModel) -> str:
    """The method a model is, as papers name it (DG-SCT, LAVisH, LAVisH*, frozen baseline)."""
    from .models.adapter_kinds import get_adapter_kind

    settings = model.cfg.adapter
    return get_adapter_kind(settings.kind).method(settings, model.cfg.family)


@torch.no_grad()
def extract_features(
    model: DGSCTModel,
    dataset,
    task: Task,
    device: torch.device,
    use_adapters: bool = True,
    batch_size: int = 8,
    num_workers: int = 0,
    precision: str = "auto",
    console: Console | None = None,
    show_progress: bool = True,
    label_kind: str | None = None,
) -> dict[str, Any]:
    """``visual [N, T, Cv]``, ``audio [N, T, Ca]``, ``segment_labels [N, T]`` and sample ids.

    With ``use_adapters=False`` the same frozen encoders run without DG-SCT (mean-pooled tokens),
    the baseline the paper's t-SNE figure compares against. ``label_kind`` picks one of the
    task's ``label_kinds`` for ``segment_labels`` (default: the task's own labels).
    """
    kind = {} if label_kind is None else {"kind": label_kind}
    if label_kind is not None and label_kind not in task.label_kinds:
        offered = ", ".join(task.label_kinds) or "none besides its default"
        raise ValueError(f"--labels {label_kind}: the {task.name} task's label kinds are: {offered}")
    model.eval()
    loader = make_loader(dataset, batch_size, num_workers, device)
    visual, audio, labels = [], [], []
    with progress_bar(console, disable=not show_progress) as bar:
        job = bar.add_task(
            "features" + ("" if use_adapters else " (no adapters)"), total=len(loader), info=""
        )
        for batch in loader:
            batch = to_device(batch, device)
            with autocast_for(device, precision):
                feats = model.encode(batch["frames"], batch["audio"], use_adapters=use_adapters)
            visual.append(feats.visual.float().cpu())
            audio.append(feats.audio.float().cpu())
            labels.append(task.segment_labels(batch, **kind).cpu())
            bar.advance(job)
    return {
        "visual": torch.cat(visual).numpy(),
        "audio": torch.cat(audio).numpy(),
        "segment_labels": torch.cat(labels).numpy(),
        "sample_ids": np.array(dataset.sample_ids),
        "class_names": np.array(dataset.class_names),
        "background_index": np.array(-1 if dataset.background_index is None else dataset.background_index),
        # Names of the values in segment_labels (classes, background, answers...: the task's).
        "label_names": np.array(task.label_names(dataset, **kind)),
        "use_adapters": np.array(use_adapters),
        "method": np.array(model_method(model)),
        "task": np.array(task.name),
        "split": np.array(dataset.split),
    }


def save_features(path: str | Path, features: dict[str, Any]) -> Path:
    """One ``.npz`` file, written atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **features)
    return path
