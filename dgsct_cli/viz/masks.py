"""Segmentation figures: each video's frames with the predicted and the true masks overlaid, one PNG
per video, and an ``index.html`` that lists them with their scores (``dgsct visualize masks``)."""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from torch.utils.data import Subset

from ..atomic import atomic_write_bytes
from ..data.datasets import make_loader
from ..runtime import autocast_for, progress_bar, to_device

__all__ = ["draw_clip_masks", "draw_mask_predictions", "overlay"]

PRED_COLOUR = np.array([255, 40, 40], dtype=np.float32)
TRUE_COLOUR = np.array([40, 220, 80], dtype=np.float32)
LABEL_HEIGHT = 18


def overlay(frame: np.ndarray, mask: np.ndarray, colour: np.ndarray, dim: float = 0.35) -> np.ndarray:
    """``frame`` uint8 ``[H, W, 3]`` with the outside of ``mask`` (bool ``[H, W]``) darkened and
    its boundary drawn in ``colour`` (readable whatever the object's own colour)."""
    out = frame.astype(np.float32)
    out[~mask] *= dim
    inner = mask.copy()
    for _ in range(2):  # a 2-pixel boundary
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    edge = mask & ~inner
    out[edge] = colour
    return out.clip(0, 255).astype(np.uint8)


def _tile(image: np.ndarray, label: str) -> Image.Image:
    tile = Image.new("RGB", (image.shape[1], image.shape[0] + LABEL_HEIGHT), (255, 255, 255))
    tile.paste(Image.fromarray(image), (0, LABEL_HEIGHT))
    ImageDraw.Draw(tile).text((3, 3), label, fill=(0, 0, 0))
    return tile


def _video_figure(
    title: str,
    frames: np.ndarray,
    prob: np.ndarray,
    masks: np.ndarray,
    valid: np.ndarray,
    ious: list[float | None],
) -> Image.Image:
    """Three rows (frame, prediction, ground truth) x T columns, with a title line."""
    t, h, w = prob.shape
    figure = Image.new("RGB", (t * w, LABEL_HEIGHT + 3 * (h + LABEL_HEIGHT)), (255, 255, 255))
    ImageDraw.Draw(figure).text((3, 3), title, fill=(0, 0, 0))
    for i in range(t):
        frame = frames[i]
        iou = "" if ious[i] is None else f" IoU {ious[i]:.2f}"
        rows = [
            _tile(frame, f"frame {i + 1}"),
            _tile(overlay(frame, prob[i] > 0.5, PRED_COLOUR), f"prediction{iou}"),
            _tile(overlay(frame, masks[i] > 0.5, TRUE_COLOUR), "truth" if valid[i] else "truth: none"),
        ]
        for r, tile in enumerate(rows):
            figure.paste(tile, (i * w, LABEL_HEIGHT + r * (h + LABEL_HEIGHT)))
    return figure


def _save_png(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def masks_and_logits(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's true masks ``[B, T, H, W]``, the predicted mask logits at their size and the
    frames that have a true mask ``[B, T]``, on the CPU."""
    masks = batch["masks"].float().cpu()
    b, t = masks.shape[:2]
    logits = outputs["mask_logits"].float().cpu()
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear")
    logits = logits.view(b, t, *masks.shape[-2:])
    valid = batch.get("mask_valid", torch.ones(b, t)).cpu().bool()
    return masks, logits, valid


@torch.no_grad()
def draw_mask_predictions(
    task: Any,
    model: torch.nn.Module,
    dataset: Any,
    out: Path,
    *,
    iou: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    limit: int | None,
    device: torch.device,
    precision: str = "auto",
    batch_size: int = 2,
    console: Console | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``model`` on the first ``limit`` videos of ``dataset`` (a split of a prepared AVS cache)
    and write ``<out>/<index>_<video>.png`` per video plus ``<out>/index.html``; ``iou(logits,
    masks)`` scores a frame and a video (the task's own metric)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; --out names a folder for the figures")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError(f"split '{dataset.split}' has no videos to draw")
    subset = Subset(dataset, range(count))
    loader = make_loader(subset, batch_size, 0, device)
    was_training = model.training
    model.eval()
    entries = []
    try:
        with progress_bar(console, disable=not progress) as bar:
            job = bar.add_task("drawing masks", total=len(loader), info="")
            for batch in loader:
                batch = to_device(batch, device)
                with autocast_for(device, precision):
                    outputs = task.forward(model, batch)
                masks, logits, valid = masks_and_logits(outputs, batch)
                b, t = masks.shape[:2]
                for j in range(b):
                    index = int(batch["index"][j])
                    sample = dataset.samples[index]
                    frames = np.asarray(dataset.cache.frames(sample["video_id"]))
                    if frames.shape[1:3] != tuple(masks.shape[-2:]):
                        from ..data.video import resize_frames

                        frames = resize_frames(frames, masks.shape[-1])
                    ious = [
                        iou(logits[j, i : i + 1], masks[j, i : i + 1]).item() if valid[j, i] else None
                        for i in range(t)
                    ]
                    video_iou = iou(logits[j], masks[j]).item() if bool(valid[j].all()) else None
                    title = f"{sample['id']} ({dataset.split})" + (
                        "" if video_iou is None else f"  mIoU {video_iou:.3f}"
                    )
                    figure = _video_figure(
                        title,
                        frames,
                        torch.sigmoid(logits[j]).numpy(),
                        masks[j].numpy(),
                        valid[j].numpy(),
                        ious,
                    )
                    name = f"{index:04d}_{_safe_name(sample['id'])}.png"
                    _save_png(figure, out / name)
                    entries.append({"file": name, "id": sample["id"], "miou": video_iou})
                bar.advance(job)
    finally:
        model.train(was_training)
    rows = "\n".join(
        f"<tr><td>{html.escape(e['id'])}</td><td>{'-' if e['miou'] is None else format(e['miou'], '.3f')}</td>"
        f'<td><a href="{html.escape(e["file"])}"><img src="{html.escape(e["file"])}" width="560"></a></td></tr>'
        for e in entries
    )
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>masks: "
        f"{html.escape(task.name)} {html.escape(dataset.split)}</title></head><body>\n"
        f"<h1>{html.escape(task.name.upper())}, split {html.escape(dataset.split)}: {len(entries)} videos</h1>\n"
        "<p>Rows of each figure: the frame, the predicted mask (red outline, sigmoid &gt; 0.5) and the true mask "
        "(green), the rest of the frame darkened. IoU as the release scores it (an empty true mask scores the pixels left empty).</p>\n"
        f"<table border='1' cellpadding='4'>\n<tr><th>video</th><th>mIoU</th><th>figure</th></tr>\n{rows}\n"
        "</table></body></html>\n"
    )
    index = atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    return {"images": [str(out / e["file"]) for e in entries], "index": str(index), "videos": len(entries)}


def _overlays(frames: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Each frame with its predicted mask (``prob > 0.5``, resized to the frame) overlaid."""
    if prob.shape[-2:] != frames.shape[1:3]:
        prob = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(prob))[:, None].float(),
            size=frames.shape[1:3],
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy()
    return np.stack([overlay(f, p > 0.5, PRED_COLOUR) for f, p in zip(frames, prob, strict=True)])


def _at_aspect(image: np.ndarray, aspect: float) -> np.ndarray:
    """A square model frame stretched back to the source's width / height ``aspect`` (same height)."""
    h, w = image.shape[:2]
    width = max(2, int(round(h * aspect)))
    if width == w:
        return image
    return np.asarray(Image.fromarray(image).resize((width, h), Image.BICUBIC))


def draw_clip_masks(
    path: Path,
    title: str,
    frames: np.ndarray,
    prob: np.ndarray,
    spans: list[tuple[float, float]],
    max_tiles: int = 10,
    video_fps: int = 4,
    frame_times: list[float | None] | None = None,
    aspect: float = 1.0,
) -> tuple[Path, Path]:
    """A clip's predicted masks (``dgsct predict``): ``path`` (PNG) shows up to ``max_tiles``
    segments spread over the clip (frame above, mask overlay below, at the source's ``aspect``,
    labelled with the time each frame was taken from); ``path`` with ``.mp4`` shows every segment's
    overlay for its span. ``frames`` uint8 ``[S, H, W, 3]``, ``prob`` ``[S, h, w]`` mask
    probabilities, ``spans`` (start, end) seconds per segment. Both written atomically."""
    from ..data.video import write_mp4
    from .timeline import seconds_label

    shown = _overlays(frames, prob)
    count = len(frames)
    chosen = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(max_tiles, count))})
    h = frames.shape[1]
    w = _at_aspect(frames[0], aspect).shape[1]
    figure = Image.new(
        "RGB", (max(len(chosen) * w, 8 * len(title)), LABEL_HEIGHT + 2 * (h + LABEL_HEIGHT)), "white"
    )
    ImageDraw.Draw(figure).text((3, 3), title, fill=(0, 0, 0))
    for col, i in enumerate(chosen):
        start, end = spans[i]
        when = frame_times[i] if frame_times is not None and frame_times[i] is not None else start
        area = float((prob[i] > 0.5).mean())
        label = f"{start:g}-{end:g} s: frame {seconds_label(when)}"
        figure.paste(_tile(_at_aspect(frames[i], aspect), label), (col * w, LABEL_HEIGHT))
        figure.paste(
            _tile(_at_aspect(shown[i], aspect), f"sounding {100 * area:.0f}%"),
            (col * w, 2 * LABEL_HEIGHT + h),
        )
    png = _save_png(figure, Path(path))
    # Even sides for yuv420p; each segment shown for its span.
    video = np.stack([_at_aspect(f, aspect) for f in shown])
    video = video[:, : h - h % 2, : video.shape[2] - video.shape[2] % 2]
    repeats = [max(1, int(round((end - start) * video_fps))) for start, end in spans]
    mp4 = Path(path).with_suffix(".mp4")
    write_mp4(mp4, np.repeat(video, repeats, axis=0), video_fps)
    return png, mp4
