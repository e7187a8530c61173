"""``dgsct predict``: a checkpoint on a user's own clips, any length, one window after another.

Each clip is decoded with the code ``prepare`` uses (a short clip tiled, a long one cut into model
windows every ``stride`` seconds), run through the model in eval mode, and handed to the task,
which says what a person wants to see (a timeline, parsed events, masks, an answer) as JSON, a
table and a picture. The loop names no task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import is_dgsct_checkpoint, read_metadata
from .data.datasets import frames_to_tensor, tiled_segments
from .data.video import DecodeError, decode_windows
from .models.dgsct import DGSCTModel
from .models.encoders.base import get_family
from .runtime import autocast_for
from .tasks.base import DataInfo, PredictContext, Task

__all__ = ["ClipResult", "checkpoint_data_info", "predict_clip", "window_batch"]


@dataclass
class ClipResult:
    path: Path
    summary: dict[str, Any] | None  # None when the clip could not be used
    error: str | None = None
    context: PredictContext | None = None


def checkpoint_data_info(path: Path, task: Task, num_classes: int | None) -> DataInfo:
    """The classes a checkpoint was trained on (stored in our checkpoints), else the task's
    dataset's own (release checkpoints)."""
    if path.is_file() and is_dgsct_checkpoint(path):
        raw = read_metadata(path).get("data")
        if raw:
            data = json.loads(raw)
            return DataInfo(
                data["dataset"],
                list(data["class_names"]),
                data.get("background_index"),
                data.get("extra", {}),
            )
    info = task.default_data_info(num_classes)
    if info is None:
        names = [f"class {i}" for i in range(num_classes or 0)]
        info = DataInfo(task.name, names, None)
    return info


def window_batch(model: DGSCTModel, windows, data_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and audio of clip windows as one model batch, prepared as the datasets prepare them."""
    cfg = model.cfg
    mean, std = get_family(cfg.family).normalization(cfg.visual)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    frames = torch.stack(
        [frames_to_tensor(w.frames.copy(), model.frame_size, mean_t, std_t) for w in windows]
    )
    rate = cfg.audio.sample_rate
    audio = torch.stack(
        [
            tiled_segments(torch.from_numpy(w.audio), cfg.num_segments, rate, data_cfg.segment_tiling)
            for w in windows
        ]
    )
    return frames, audio


@torch.no_grad()
def predict_clip(
    model: DGSCTModel,
    task: Task,
    data_cfg,
    info: DataInfo,
    path: Path,
    options: dict[str, Any],
    device: torch.device,
    precision: str = "auto",
    stride: int | None = None,
    batch_size: int = 4,
    on_window: Callable[[], None] | None = None,
) -> ClipResult:
    """Predict on one clip; a clip that cannot be decoded gives a result with ``error`` set."""
    cfg = model.cfg
    try:
        windows, duration = decode_windows(
            path,
            cfg.num_segments,
            model.frame_size,
            cfg.audio.sample_rate,
            stride=stride,
            frame_rule=task.frame_rule,
            whole_clip=task.predict_whole_clip,
        )
    except DecodeError as exc:
        return ClipResult(path, None, exc.reason)
    ctx = PredictContext(path, windows, duration, info, dict(options), whole_clip=task.predict_whole_clip)
    model.eval()
    outputs: list[dict[str, torch.Tensor]] = []
    for first in range(0, len(windows), batch_size):
        chunk = list(range(first, min(first + batch_size, len(windows))))
        frames, audio = window_batch(model, [windows[i] for i in chunk], data_cfg)
        batch: dict[str, Any] = {"frames": frames.to(device), "audio": audio.to(device)}
        extras = [task.predict_inputs(ctx, i) for i in chunk]
        for key in extras[0]:
            batch[key] = torch.stack([e[key] for e in extras]).to(device)
        with autocast_for(device, precision):
            out = task.forward(model, batch)
        outputs.extend(task.split_window_outputs(out, len(chunk)))
        if on_window is not None:
            on_window()
    summary = task.summarize_prediction(ctx, outputs)
    # How the clip was read, for every task: whether it had audio, and what a reader must know.
    summary["audio_track"] = not ctx.silent
    summary["notes"] = ctx.notes()
    return ClipResult(path, summary, None, ctx)
