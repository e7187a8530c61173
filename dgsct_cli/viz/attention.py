"""What the model looks at and listens to: the DG-SCT adapters' spatial attention, per segment.

For each segment of a clip: the frame, the frame with the last visual adapter's audio-guided
spatial map (upsampled to the frame) as a heat map, beside the frozen encoder's own token activity
(the norm of each token of the adapter-free pass, a map with no audio in it), and the log-mel the
audio tower sees with the last audio adapter's visually guided map over time and frequency.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_output, atomic_write_bytes
from ..models.dgsct import DGSCTModel

__all__ = ["attention_maps", "draw_attention", "write_index"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] (per row)."""
    flat = x.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((flat - low[:, None]) / (high - low).clamp(min=1e-12)[:, None]).view_as(x)


@torch.no_grad()
def attention_maps(model: DGSCTModel, frames: torch.Tensor, audio: torch.Tensor) -> dict[str, np.ndarray]:
    """Maps of one sample (``frames [1, T, 3, H, W]``, ``audio [1, T, L]``), each ``[T, ...]``:

    - ``visual``: the last visual p2 adapter's spatial attention, bilinearly upsampled to the
      frame ``[T, H, W]``, scaled to [0, 1];
    - ``plain``: the frozen visual encoder's token norms without adapters, same size, [0, 1];
    - ``log_mel``: the (time-resized) log-mel the audio tower sees ``[T, mel, frames]``;
    - ``audio``: the last audio p2 adapter's map over that log-mel ``[T, mel, frames]``, [0, 1].
    """
    model.eval()
    enc = model.encoder
    out = model.encode(frames, audio)
    if out.visual_map is None or out.audio_map is None:
        raise ValueError(
            "the model has no adapter attention maps (its adapters compute none, e.g. LAVisH's, or it has no adapters)"
        )
    if not hasattr(enc.audio, "log_mel"):
        raise ValueError(
            f"attention pictures need an HTS-AT audio tower; the {model.cfg.family} family has none"
        )
    v_view, a_view = enc.views
    size = frames.shape[-2:]
    visual = v_view.grid(out.visual_map[:, 0])  # [T, h, w]
    visual = F.interpolate(visual[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    tokens = model.encode_plain(frames)  # [T, L, C]
    plain = v_view.grid(tokens.norm(dim=-1))
    plain = F.interpolate(plain[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    htsat = enc.audio
    log_mel = htsat.log_mel(audio.flatten(0, 1))  # [T, 1, frames, mel]
    image = htsat.wav2img(log_mel)[:, 0]  # [T, S, S]
    spec = image.shape[-1]
    audio_grid = a_view.grid(out.audio_map[:, 0])  # [T, g, g] over the S x S image
    audio_image = F.interpolate(audio_grid[:, None], size=(spec, spec), mode="nearest")[:, 0]
    return {
        "visual": _unit(visual).numpy(),
        "plain": _unit(plain).numpy(),
        "log_mel": htsat.image_to_time_frequency(image).numpy(),
        "audio": _unit(htsat.image_to_time_frequency(audio_image)).numpy(),
    }


def draw_attention(
    path: Path,
    title: str,
    frames: np.ndarray,
    maps: dict[str, np.ndarray],
    rows: list[str] | None = None,
    caption: str = "",
    input_seconds: float | None = None,
    aspect: float = 1.0,
) -> None:
    """One PNG: a row per segment with the frame, the frame + the DG-SCT map, the frame + the frozen
    encoder's map, and the log-mel (mel bins over seconds of the model's input) + the audio
    adapter's map; a colour bar under each kind of map. ``frames`` uint8 ``[T, H, W, 3]`` (the
    model's square frames, shown at the source's width / height ``aspect``); ``rows`` label each
    segment (what it saw); ``caption`` (the time span, how the clip was read) goes under ``title``
    (the clip's name); ``input_seconds``: the length of the audio the tower heard per segment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = frames.shape[0]
    mel_bins, columns = maps["log_mel"].shape[1:]
    seconds = float(input_seconds) if input_seconds else float(columns)
    fig, axes = plt.subplots(
        t, 4, figsize=(13, 2.0 * t + 1.6), squeeze=False, layout="constrained", width_ratios=[1, 1, 1, 1.4]
    )
    headers = (
        "frame",
        "DG-SCT visual attention (audio-guided)",
        "frozen encoder, no adapters (token norm)",
        "audio attention (visually guided)",
    )
    picture = (0, aspect, 0, 1)  # the frame and its maps at the source's aspect
    shown = {}
    for row in range(t):
        ax_f, ax_v, ax_p, ax_a = axes[row]
        ax_f.imshow(frames[row], extent=picture)
        for ax, key in ((ax_v, "visual"), (ax_p, "plain")):
            ax.imshow(frames[row], extent=picture)
            shown[key] = ax.imshow(maps[key][row], cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=picture)
        for ax in (ax_f, ax_v, ax_p):
            ax.set_xticks([])
            ax.set_yticks([])
        spectrum = (0, seconds, 0, mel_bins)
        ax_a.imshow(maps["log_mel"][row], origin="lower", aspect="auto", cmap="gray", extent=spectrum)
        shown["audio"] = ax_a.imshow(
            maps["audio"][row],
            origin="lower",
            aspect="auto",
            cmap="jet",
            alpha=0.4,
            vmin=0,
            vmax=1,
            extent=spectrum,
        )
        ax_a.set_ylabel("mel bin", fontsize=7)
        ax_a.tick_params(labelsize=6)
        if row < t - 1:
            ax_a.set_xticklabels([])
        ax_f.set_ylabel(rows[row] if rows else f"segment {row}", fontsize=7)
    axes[-1][3].set_xlabel("seconds of the audio the tower heard for the segment", fontsize=7)
    for ax, header in zip(axes[0], headers, strict=True):
        ax.set_title(header, fontsize=9)
    labels = {
        "visual": "audio-guided attention (scaled to 0-1 per frame)",
        "plain": "token norm (scaled to 0-1 per frame)",
        "audio": "visually guided attention (scaled to 0-1 per segment)",
    }
    for column, key in ((1, "visual"), (2, "plain"), (3, "audio")):
        bar = fig.colorbar(shown[key], ax=list(axes[:, column]), location="bottom", shrink=0.9, aspect=30)
        bar.set_label(labels[key], fontsize=7)
        bar.ax.tick_params(labelsize=6)
    import textwrap

    fig.suptitle("\n".join([title, *textwrap.wrap(caption, 150)]), fontsize=10)
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")  # the colour bars' labels included
    plt.close(fig)


def write_index(path: Path, entries: list[tuple[str, str]]) -> None:
    """An HTML page listing the pictures: ``(caption, image file name)`` pairs."""
    rows = "\n".join(
        f'<figure><figcaption>{html.escape(caption)}</figcaption><img src="{html.escape(name)}" '
        f'style="max-width:100%"></figure>'
        for caption, name in entries
    )
    page = f"<!doctype html>\n<meta charset=utf-8>\n<title>DG-SCT attention</title>\n{rows}\n"
    atomic_write_bytes(path, page.encode("utf-8"))
