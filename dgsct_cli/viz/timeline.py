"""Pictures of predictions on a clip: sampled frames (at their own aspect, labelled with the time
they were taken from) above tracks and curves on the clip's time axis."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_output

__all__ = ["class_colours", "draw_answers", "draw_tracks", "frame_strip", "seconds_label"]

_BACKGROUND = (0.85, 0.85, 0.85)


def class_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours (evenly spaced hues)."""
    return [colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.85) for i in range(n)]


def seconds_label(t: float) -> str:
    """``0.64 s``, ``3 s``: a time as short as it is exact to the hundredth."""
    return f"{t:.2f}".rstrip("0").rstrip(".") + " s"


def frame_strip(windows: Sequence, max_frames: int = 12) -> list[tuple[float, np.ndarray]]:
    """(time in the clip, frame) pairs: up to ``max_frames`` of the frames the model saw, spread
    over the clip, each with the time it was taken from (a tiled short clip's frames are spread
    over its length, not one per second)."""
    frames: dict[float, np.ndarray] = {}
    for w in windows:
        for t in range(w.frames.shape[0]):
            time = float(w.frame_times[t]) if w.frame_times is not None else float(w.start + t)
            frames.setdefault(round(time, 3), w.frames[t])
    times = sorted(frames)
    chosen = sorted({int(round(x)) for x in np.linspace(0, len(times) - 1, min(max_frames, len(times)))})
    return [(times[i], frames[times[i]]) for i in chosen]


def _draw_frames(ax, strip: list[tuple[float, np.ndarray]], aspect: float, end: float) -> None:
    """Frames side by side in ``ax`` (x from 0 to ``end``), each in its own inset at the source's
    width/height ``aspect`` (the model's square frames stretched back), its time below."""
    ax.set_xlim(0, end)
    ax.set_ylim(0, 1)
    ax.axis("off")
    width = end / max(len(strip), 1)
    for i, (time, frame) in enumerate(strip):
        inset = ax.inset_axes((i * width + 0.03 * width, 0.16, 0.94 * width, 0.84), transform=ax.transData)
        inset.imshow(frame, extent=(0, aspect, 0, 1))  # aspect "equal": the frame keeps its shape
        inset.set_anchor("S")  # just above its time label
        inset.axis("off")
        ax.text((i + 0.5) * width, 0.02, seconds_label(time), ha="center", va="bottom", fontsize=7)


def draw_tracks(
    path: Path,
    title: str,
    strip: list[tuple[float, np.ndarray]],
    end: float,
    tracks: list[tuple[str, list[tuple[float, float, str]]]],
    colour_of: dict[str, tuple[float, float, float]],
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]] = (),
    aspect: float = 1.0,
    notes: Sequence[str] = (),
    background_label: str = "no event",
) -> None:
    """Frames on top; below, one row per track with labelled spans ``(onset, offset, label)`` in
    seconds over a grey bar (``background_label``, in the legend); optional curves ``(label, x
    seconds, values)`` in a last panel; every panel on the clip's time axis 0..``end``; ``notes``
    under the title. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = 1 + len(tracks) + (1 if curves else 0)
    width = max(8.0, 0.6 * end + 4)
    heading = _heading(title, notes, width)
    heights = [_strip_height(width, len(strip), aspect)] + [0.6] * len(tracks) + ([1.2] if curves else [])
    fig, axes = plt.subplots(
        rows, 1, figsize=(width, sum(heights) + 0.8 + 0.18 * heading.count("\n")), height_ratios=heights
    )
    axes = np.atleast_1d(axes)
    _draw_frames(axes[0], strip, aspect, end)
    axes[0].set_title(heading, fontsize=9)
    for ax, (name, spans) in zip(axes[1 : 1 + len(tracks)], tracks, strict=True):
        ax.set_xlim(0, end)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.barh(0.5, end, left=0, height=0.8, color=_BACKGROUND)
        for onset, offset, label in spans:
            ax.barh(0.5, offset - onset, left=onset, height=0.8, color=colour_of.get(label, (0.3, 0.3, 0.3)))
            ax.text((onset + offset) / 2, 0.5, label, ha="center", va="center", fontsize=7, clip_on=True)
        _time_axis(ax, end)
    if tracks:
        axes[1].legend(
            handles=[Patch(facecolor=_BACKGROUND, label=background_label)],
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=7,
            frameon=False,
        )
    if curves:
        ax = axes[-1]
        for label, xs, values in curves:
            ax.plot(xs, values, marker="o", markersize=3, label=label)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, end)
        ax.set_ylim(0, 1)
        _time_axis(ax, end)
        ax.set_xlabel("seconds of the clip", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _heading(title: str, notes: Sequence[str], width: float) -> str:
    """The title and the notes, each note wrapped to the figure's width."""
    import textwrap

    lines = [title]
    for note in notes:
        lines += textwrap.wrap(note, width=max(40, int(width * 15)))
    return "\n".join(lines)


def _strip_height(width: float, count: int, aspect: float) -> float:
    """Height (inches) of the frame strip: the frames' own height at their slot's width, and a label."""
    slot = 0.85 * width / max(count, 1)
    return float(min(2.2, max(1.0, 0.94 * slot / max(aspect, 1e-3) / 0.84 + 0.3)))


def _time_axis(ax, end: float) -> None:
    ticks = _ticks(end)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.tick_params(labelsize=7)


def _ticks(end: float) -> list[float]:
    """About ten round ticks over 0..end, the end itself included when it is not whole."""
    step = max(1, int(round(end / 10))) if end >= 2 else 0.5
    ticks = [float(x) for x in np.arange(0, end + 1e-6, step)]
    if end - ticks[-1] > 0.2 * step:
        ticks.append(round(end, 2))
    return ticks


def draw_answers(
    path: Path,
    title: str,
    strip: list[tuple[float, np.ndarray]],
    question: str,
    answers: Sequence[tuple[str, float]],
    aspect: float = 1.0,
    notes: Sequence[str] = (),
) -> None:
    """A question answered on a clip: the frames the model read on top (at the clip's aspect, with
    their times), the question, and the top answers with their probabilities as bars. Written
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(strip)
    width = max(8, 0.9 * count * max(aspect, 1.0) + 2)
    heading = _heading(title, [*notes, f"Q: {question}"], width)
    strip_height = _strip_height(width, count, aspect)
    fig, (top, bars) = plt.subplots(
        2,
        1,
        figsize=(width, strip_height + 0.35 * len(answers) + 1.2 + 0.18 * heading.count("\n")),
        height_ratios=[strip_height, 1.4],
    )
    _draw_frames(top, strip, aspect, float(count))
    top.set_title(heading, fontsize=10)
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
