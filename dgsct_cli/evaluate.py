"""The one evaluation loop: any task, any checkpoint kind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import Dataset

from .atomic import atomic_output
from .data.datasets import make_loader
from .models.dgsct import DGSCTModel
from .runtime import autocast_for, progress_bar, to_device
from .tasks.base import Task

__all__ = ["EvaluationInterrupted", "evaluate", "write_predictions"]


class EvaluationInterrupted(Exception):
    """``should_stop`` asked the evaluation to stop (Ctrl-C during validation)."""


@torch.no_grad()
def evaluate(
    model: DGSCTModel,
    dataset: Dataset,
    task: Task,
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    precision: str = "auto",
    console: Console | None = None,
    show_progress: bool = True,
    description: str = "eval",
    should_stop: Callable[[], bool] | None = None,
    predictions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` in eval mode; return the task's metrics + ``num_samples``.

    ``should_stop`` is asked before each batch; when it says so, :class:`EvaluationInterrupted`
    is raised (the partial metrics are thrown away). ``predictions``: a list that receives the
    task's per-sample rows (:meth:`Task.prediction_rows`), in the dataset's order."""
    evaluator = task.make_evaluator(dataset)
    loader = make_loader(dataset, batch_size, num_workers, device)
    was_training = model.training

    def score(out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        evaluator.update(out, batch)
        if predictions is not None:
            predictions.extend(task.prediction_rows(out, batch, dataset))

    model.eval()
    try:
        with progress_bar(console, disable=not show_progress) as bar:
            job = bar.add_task(description, total=len(loader), info="")
            # A batch is scored (evaluators copy to the host: a sync) after the next batch's
            # forward is queued, so the device is not idle while the host reads; same order.
            held: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
            for batch in loader:
                if should_stop is not None and should_stop():
                    raise EvaluationInterrupted
                batch = to_device(batch, device)
                with autocast_for(device, precision):
                    out = task.forward(model, batch)
                out = {k: v.float() for k, v in out.items()}
                if held is not None:
                    score(*held)
                    bar.advance(job)
                held = (out, batch)
            if held is not None:
                score(*held)
                bar.advance(job)
    finally:
        model.train(was_training)
    metrics = evaluator.compute()
    metrics["num_samples"] = len(dataset)
    return metrics


def write_predictions(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as JSON lines (one sample each), written atomically."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
