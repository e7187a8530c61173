"""The one evaluation loop: any task, any checkpoint kind."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset

from .models.dgsct import DGSCTModel
from .tasks.base import Task


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> bf16 on GPU, fp32 elsewhere; an explicit choice is kept."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on GPU (the default there), plain fp32 elsewhere unless asked."""
    if resolve_precision(device, precision) != "bf16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, device: torch.device, sampler=None, generator=None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=generator,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def progress_bar(console: Console | None, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
        transient=True,
    )


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
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` in eval mode; return the task's metrics + ``num_samples``."""
    evaluator = task.make_evaluator(dataset.class_names, dataset.background_index)
    loader = make_loader(dataset, batch_size, num_workers, device)
    was_training = model.training
    model.eval()
    try:
        with progress_bar(console, disable=not show_progress) as bar:
            job = bar.add_task(description, total=len(loader), info="")
            for batch in loader:
                batch = to_device(batch, device)
                with autocast_for(device, precision):
                    out = model(**task.model_inputs(batch))
                evaluator.update({k: v.float() for k, v in out.items()}, batch)
                bar.advance(job)
    finally:
        model.train(was_training)
    metrics = evaluator.compute()
    metrics["num_samples"] = len(dataset)
    return metrics
