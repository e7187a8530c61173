"""AVVP (audio-visual video parsing) evaluation on LLP, exactly as the release scores it.

As the release scores it (AVVP/main.py:80-200 with AVVP/utils/eval_metrics.py). Ten numbers: segment-level and event-level F-scores for the audio,
visual and audio-visual events, plus Type@AV (mean of the three dataset means) and Event@AV
(per-class counts pooled over audio and visual before the F-score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rich.table import Table

from ..data.avvp import AVVP_CLASSES, read_avvp_ground_truth  # noqa: F401  (re-exported)

SCORE_KEYS: tuple[str, ...] = (
    "segment_audio",
    "segment_visual",
    "segment_av",
    "segment_type",
    "segment_event",
    "event_audio",
    "event_visual",
    "event_av",
    "event_type",
    "event_event",
)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _per_video_f(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-video mean F over the classes that are predicted or present ([N, C] counts -> [N]).

    A class enters the mean only if TP+FP != 0 or TP+FN != 0; a video with no such class scores 1.0
    (the release's rule, so videos with neither predictions nor ground truth count as perfect).
    """
    active = (tp + fp + fn) > 0  # counts are non-negative, so this is the release's "or" rule
    denom = 2 * tp + fn + fp
    f = np.where(active, 2 * tp / np.maximum(denom, 1), 0.0)
    n_active = active.sum(axis=1)
    return np.where(n_active > 0, f.sum(axis=1) / np.maximum(n_active, 1), 1.0)


def _segment_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP/FP/FN per (video, class) summed over segments; pred/gt are bool [N, T, C]."""
    tp = (pred & gt).sum(axis=1)
    fp = (pred & ~gt).sum(axis=1)
    fn = (~pred & gt).sum(axis=1)
    return tp, fp, fn


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of 1s in a bool vector as half-open (start, end) segment intervals."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    # Edges alternate rising/falling, so even positions are starts and odd positions are ends.
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _iou_ok(p: tuple[int, int], g: tuple[int, int]) -> bool:
    """IoU >= 0.5 counted in whole segments (inclusive), written as |p∩g| >= 0.5 |p∪g|."""
    inter = max(0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (p[1] - p[0]) + (g[1] - g[0]) - inter
    return inter > 0 and 2 * inter >= union


def _match_events(pred: Sequence[tuple[int, int]], gt: Sequence[tuple[int, int]]) -> tuple[int, int, int]:
    """(TP, FP, FN) for one class: a prediction is a TP if ANY GT event matches (not one-to-one);
    a GT event is an FN if no prediction matches it."""
    tp = sum(1 for p in pred if any(_iou_ok(p, g) for g in gt))
    fn = sum(1 for g in gt if not any(_iou_ok(p, g) for p in pred))
    return tp, len(pred) - tp, fn


def _event_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event-level TP/FP/FN per (video, class); pred/gt are bool [N, T, C]."""
    n, _, c = pred.shape
    tp = np.zeros((n, c), dtype=np.int64)
    fp = np.zeros((n, c), dtype=np.int64)
    fn = np.zeros((n, c), dtype=np.int64)
    # Only (video, class) pairs with any 1 can have events: skip the (mostly empty) rest.
    for i, k in np.argwhere(pred.any(axis=1) | gt.any(axis=1)):
        tp[i, k], fp[i, k], fn[i, k] = _match_events(_runs(pred[i, :, k]), _runs(gt[i, :, k]))
    return tp, fp, fn


def parsing_scores(
    video_prob: torch.Tensor | np.ndarray,
    audio_frame_prob: torch.Tensor | np.ndarray,
    visual_frame_prob: torch.Tensor | np.ndarray,
    gt_audio: torch.Tensor | np.ndarray,
    gt_visual: torch.Tensor | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """The ten AVVP numbers (percent, unrounded) for N videos.

    Shapes: video_prob [N, C]; frame probabilities and 0/1 ground truth [N, T, C]. Every video
    counts, including those without any ground-truth row.
    """
    vp = _as_numpy(video_prob)
    afp = _as_numpy(audio_frame_prob)
    vfp = _as_numpy(visual_frame_prob)
    ga = _as_numpy(gt_audio) > 0.5
    gv = _as_numpy(gt_visual) > 0.5
    if vp.ndim != 2 or afp.ndim != 3:
        raise ValueError(f"expected video_prob [N,C] and frame probs [N,T,C], got {vp.shape}, {afp.shape}")
    for name, arr in (("visual_frame_prob", vfp), ("gt_audio", ga), ("gt_visual", gv)):
        if arr.shape != afp.shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {afp.shape}")
    if vp.shape != (afp.shape[0], afp.shape[2]):
        raise ValueError(f"video_prob has shape {vp.shape}, expected {(afp.shape[0], afp.shape[2])}")

    # The video-level filter comes from the audio-visual head and gates BOTH modalities (release AVVP/main.py:116-123).
    keep = (vp >= threshold)[:, None, :]
    pa = (afp >= threshold) & keep
    pv = (vfp >= threshold) & keep
    preds = {"audio": pa, "visual": pv, "av": pa & pv}
    gts = {"audio": ga, "visual": gv, "av": ga & gv}

    scores: dict[str, float] = {}
    for level, counter in (("segment", _segment_counts), ("event", _event_counts)):
        counts = {m: counter(preds[m], gts[m]) for m in preds}
        for m, (tp, fp, fn) in counts.items():
            scores[f"{level}_{m}"] = 100.0 * float(_per_video_f(tp, fp, fn).mean())
        scores[f"{level}_type"] = (
            scores[f"{level}_audio"] + scores[f"{level}_visual"] + scores[f"{level}_av"]
        ) / 3
        # Event@AV pools audio and visual counts per class before the F-score.
        pooled = [a + v for a, v in zip(counts["audio"], counts["visual"], strict=True)]
        scores[f"{level}_event"] = 100.0 * float(_per_video_f(*pooled).mean())
    return {k: scores[k] for k in SCORE_KEYS}


def format_parsing_table(scores: dict[str, float], title: str | None = "AVVP parsing (F-score, %)") -> Table:
    """The ten numbers laid out like the paper's table, one decimal."""
    table = Table(title=title)
    table.add_column("Level")
    for header in ("Audio", "Visual", "Audio-Visual", "Type@AV", "Event@AV"):
        table.add_column(header, justify="right")
    for level, label in (("segment", "Segment-level"), ("event", "Event-level")):
        cells = [f"{scores[f'{level}_{m}']:.1f}" for m in ("audio", "visual", "av", "type", "event")]
        table.add_row(label, *cells)
    return table
