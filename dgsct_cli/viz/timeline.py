"""Pictures of predictions on a clip: sampled frames above per-second tracks."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_output

__all__ = ["class_colours", "draw_answers", "draw_tracks", "frame_strip"]

_BACKGROUND = (0.85, 0.85, 0.85)


def class_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours (evenly spaced hues)."""
    return [colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.85) for i in range(n)]


def frame_strip(windows: Sequence, seconds: int, max_frames: int = 12) -> list[tuple[int, np.ndarray]]:
    """(second, frame) pairs: up to ``max_frames`` seconds spread over the clip, one frame each."""
    frames: dict[int, np.ndarray] = {}
    for w in windows:
        for t in range(w.frames.shape[0]):
            frames.setdefault(w.start + t, w.frames[t])
    chosen = sorted({int(round(x)) for x in np.linspace(0, seconds - 1, min(max_frames, seconds))})
    return [(s, frames[s]) for s in chosen if s in frames]


def draw_tracks(
    path: Path,
    title: str,
    strip: list[tuple[int, np.ndarray]],
    seconds: int,
    tracks: list[tuple[str, list[tuple[int, int, str]]]],
    colour_of: dict[str, tuple[float, float, float]],
    curves: list[tuple[str, Sequence[float]]] = (),
) -> None:
    """Frames on top; below, one row per track with labelled spans ``(onset, offset, label)`` in
    seconds; optional curves (e.g. a probability per second) in a last panel. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(tracks) + (1 if curves else 0)
    heights = [2.2] + [0.6] * len(tracks) + ([1.2] if curves else [])
    fig, axes = plt.subplots(
        rows, 1, figsize=(max(8, 0.6 * seconds + 4), sum(heights) + 0.8), height_ratios=heights
    )
    axes = np.atleast_1d(axes)
    top = axes[0]
    top.set_xlim(0, seconds)
    top.set_ylim(0, 1)
    top.axis("off")
    top.set_title(title, fontsize=10)
    width = seconds / max(len(strip), 1)
    for i, (second, frame) in enumerate(strip):
        left = i * width
        top.imshow(frame, extent=(left + 0.02 * width, left + 0.98 * width, 0.1, 1.0), aspect="auto")
        top.text(left + width / 2, 0.02, f"{second} s", ha="center", va="bottom", fontsize=7)
    for ax, (name, spans) in zip(axes[1 : 1 + len(tracks)], tracks, strict=True):
        ax.set_xlim(0, seconds)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.barh(0.5, seconds, left=0, height=0.8, color=_BACKGROUND)
        for onset, offset, label in spans:
            ax.barh(0.5, offset - onset, left=onset, height=0.8, color=colour_of.get(label, (0.3, 0.3, 0.3)))
            ax.text((onset + offset) / 2, 0.5, label, ha="center", va="center", fontsize=7, clip_on=True)
        ax.set_xticks(range(0, seconds + 1, max(1, seconds // 10)))
        ax.tick_params(labelsize=7)
    if curves:
        ax = axes[-1]
        for label, values in curves:
            ax.plot(np.arange(len(values)) + 0.5, values, marker="o", markersize=3, label=label)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, seconds)
        ax.set_ylim(0, 1)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def draw_answers(
    path: Path, title: str, frames: np.ndarray, question: str, answers: Sequence[tuple[str, float]]
) -> None:
    """A question answered on a clip: the frames the model read on top, the question, and the top
    answers with their probabilities as bars. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(frames)
    fig, (top, bars) = plt.subplots(
        2, 1, figsize=(max(8, 0.9 * count + 2), 2.2 + 0.35 * len(answers) + 1.2), height_ratios=[2.2, 1.4]
    )
    top.set_xlim(0, count)
    top.set_ylim(0, 1)
    top.axis("off")
    top.set_title(f"{title}\nQ: {question}", fontsize=10)
    for i, frame in enumerate(frames):
        top.imshow(frame, extent=(i + 0.02, i + 0.98, 0.1, 1.0), aspect="auto")
    names = [a for a, _ in answers][::-1]
    values = [p for _, p in answers][::-1]
    colours = ["tab:blue"] * (len(values) - 1) + ["tab:orange"]
    bars.barh(range(len(values)), values, color=colours)
    bars.set_yticks(range(len(values)), names, fontsize=8)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability", fontsize=8)
    bars.tick_params(labelsize=7)
    for y, v in enumerate(values):
        bars.text(min(v + 0.01, 0.9), y, f"{v:.3f}", va="center", fontsize=7)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
