"""Tasks as plug-ins: a task is a head + its config, a loss, metrics and dataset conventions.

Training, evaluation, extraction and conversion look tasks up here and never branch on a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from rich.table import Table
from torch import nn


class Evaluator(Protocol):
    """Accumulates model outputs over a split and computes the task's metrics."""

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None: ...

    def compute(self) -> dict[str, Any]: ...


@dataclass
class Task:
    name: str
    description: str
    head_config: type  # dataclass validated from recipe ``model.head``
    loss_config: type  # dataclass validated from recipe ``loss``
    build_head: Callable[[int, int, Any], nn.Module]  # (visual_dim, audio_dim, head_cfg)
    # (outputs, batch, loss_cfg) -> the scalar training loss
    loss: Callable[[dict[str, torch.Tensor], dict[str, Any], Any], torch.Tensor]
    make_evaluator: Callable[[list[str], int | None], Evaluator]  # (class_names, background_index)
    # Running accuracy shown in the training progress bar: (correct, counted) for one batch.
    batch_accuracy: Callable[[dict[str, torch.Tensor], dict[str, Any]], tuple[int, int]]
    selection_metric: str  # key of Evaluator.compute() used to keep the best checkpoint
    metrics_table: Callable[[dict[str, Any]], Table]
    # Per-segment labels for t-SNE / feature extraction: [B, T] long from a batch.
    segment_labels: Callable[[dict[str, Any]], torch.Tensor]
    # Batch keys passed to the head besides the pooled features (e.g. AVVP's 3-D features).
    head_inputs: tuple[str, ...] = ()
    # Batch keys the loss reads (targets); benchmarks make random ones of these.
    target_keys: tuple[str, ...] = ()
    # Release checkpoint keys the release builds but never uses: regex -> reason.
    unused_release_keys: dict[str, str] = field(default_factory=dict)
    # A key that only this task's release checkpoints contain (detects the task of a file).
    release_marker: str = ""
    use_mixup: bool = False  # training mixes log-mels across the batch (release: not AVE)
    select_ties: bool = False  # a later epoch with an equal selection metric replaces the best

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's call for ``batch``: frames, audio, head inputs."""
        return {"frames": batch["frames"], "audio": batch["audio"], **{k: batch[k] for k in self.head_inputs}}


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    _load_builtin_tasks()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def available_tasks() -> list[str]:
    _load_builtin_tasks()
    return sorted(TASKS)


def _load_builtin_tasks() -> None:
    # Importing a task module registers it.
    from . import ave, avvp  # noqa: F401
