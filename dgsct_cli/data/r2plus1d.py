"""R(2+1)D-18 clip features (torchvision, weights from a local file): AVVP's 3-D visual features.

``compute_video_st(path, weights)`` runs in a decoding worker (an ``ExtraArraySpec``) and returns
``[10, 512]`` features: 8 frames per 1-s segment at 112x112, Kinetics normalisation, ``fc``
removed.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .video import DecodeError, _short_message, quiet_decord, read_frames

__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    "compute_video_st",
    "load_r2plus1d_18",
    "r2plus1d_inputs",
    "r2plus1d_segment_features",
    "st_frame_indices",
]

NUM_SEGMENTS = 10
# R(2+1)D input: 8 frames per 1-s segment at 112x112, normalised with the Kinetics-400 statistics.
R2P1D_FRAMES_PER_SEGMENT = 8
R2P1D_SIZE = 112
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def st_frame_indices(
    num_frames: int,
    fps: float,
    num_segments: int = NUM_SEGMENTS,
    frames_per_segment: int = R2P1D_FRAMES_PER_SEGMENT,
    start: int = 0,
) -> np.ndarray:
    """Frame indices ``[num_segments, frames_per_segment]``: evenly spaced inside each second.

    Frame j of segment i is the one shown at ``start + i + (j + 0.5) / frames_per_segment``
    seconds. A clip shorter than ``start + num_segments`` seconds (or without a usable fps) spreads
    all indices evenly over the frames it has, as :func:`~dgsct_cli.data.video.frame_indices` does.
    """
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    if fps > 0 and math.isfinite(fps) and num_frames / fps >= start + num_segments:
        times = (
            start
            + np.arange(num_segments)[:, None]
            + (np.arange(frames_per_segment)[None, :] + 0.5) / frames_per_segment
        )
        return np.minimum(np.floor(times * fps).astype(np.int64), num_frames - 1)
    flat = np.round(np.linspace(0, num_frames - 1, num_segments * frames_per_segment)).astype(np.int64)
    return flat.reshape(num_segments, frames_per_segment)


def r2plus1d_inputs(frames: np.ndarray | torch.Tensor, size: int = R2P1D_SIZE) -> torch.Tensor:
    """uint8 frames ``[S, F, H, W, 3]`` -> normalised network input float32 ``[S, 3, F, size, size]``.

    Bilinear resize of the [0, 1] float frames (antialiased, as torchvision's video presets do
    when shrinking), then the Kinetics mean/std.
    """
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [S, F, H, W, 3], got shape {tuple(x.shape)}")
    s, f, h, w, _ = x.shape
    x = x.reshape(s * f, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.reshape(s, f, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


def load_r2plus1d_18(weights: str | Path) -> torch.nn.Module:
    """torchvision ``r2plus1d_18`` with ``fc = Identity`` (512-d output), weights from a LOCAL file.

    ``weights`` is a torchvision state dict (``fc.*`` keys are ignored; a ``state_dict`` wrapper
    and a ``module.`` prefix are accepted). Nothing is ever downloaded. Raises ``ValueError`` when
    the file is unreadable or is not an ``r2plus1d_18`` state dict.
    """
    from torchvision.models.video import r2plus1d_18

    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"{path}: r2plus1d_18 weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a usable state dict"
        # Never torch's advice to load with weights_only=False (it would run the file's code);
        # the words of models/weights.py's unsafe_load_reason (data/ does not import models/).
        reason = (
            "it holds pickled objects or code, not only tensors"
            if "Unsupported global" in str(exc)
            else f"not a readable torch checkpoint ({type(exc).__name__})"
        )
        raise ValueError(f"{path}: cannot be read as a torch state dict ({reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor)")
    cleaned = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.startswith("fc."):  # the Kinetics classifier is replaced by Identity
            cleaned[key] = value
    model = r2plus1d_18(weights=None)  # weights=None: never download
    model.fc = torch.nn.Identity()
    try:
        result = model.load_state_dict(cleaned, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not an r2plus1d_18 state dict ({str(exc).splitlines()[0]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: not an r2plus1d_18 state dict ({len(result.missing_keys)} missing keys, e.g. "
            f"{result.missing_keys[:2]}; {len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[:2]})"
        )
    return model.eval()


@torch.inference_mode()
def r2plus1d_segment_features(
    model: torch.nn.Module, clips: torch.Tensor, batch_size: int = 10
) -> np.ndarray:
    """512-d features float32 ``[S, 512]`` of normalised clips ``[S, 3, F, 112, 112]``."""
    outputs = [model(clips[i : i + batch_size]) for i in range(0, clips.shape[0], batch_size)]
    return torch.cat(outputs).float().numpy()


@functools.lru_cache(maxsize=1)  # per process: each decoding worker loads the net once
def _cached_model(weights: str) -> torch.nn.Module:
    return load_r2plus1d_18(weights)


def _decode_st_frames(
    path: str, num_segments: int, frames_per_segment: int, size: int, start: int = 0
) -> torch.Tensor:
    """Network input for every segment of ``path`` (decord), resized segment by segment so a
    high-resolution video never holds all its frames at full size."""
    decord, errors = quiet_decord()
    try:
        reader = decord.VideoReader(path, num_threads=1)
        indices = st_frame_indices(
            len(reader), float(reader.get_avg_fps()), num_segments, frames_per_segment, start
        )
        clips = []
        for row in indices:
            unique, inverse = np.unique(row, return_inverse=True)
            frames = read_frames(reader, unique.tolist())[inverse]
            clips.append(r2plus1d_inputs(frames[None], size))
        del reader
    except errors as exc:
        raise DecodeError(f"corrupt: {_short_message(exc)}") from exc
    return torch.cat(clips)


def compute_video_st(
    path: str,
    weights: str,
    num_segments: int = NUM_SEGMENTS,
    frames_per_segment: int = R2P1D_FRAMES_PER_SEGMENT,
    size: int = R2P1D_SIZE,
    start: int = 0,
) -> np.ndarray:
    """``video_st`` float32 ``[num_segments, 512]`` of the video file ``path`` (from second
    ``start``) with r2plus1d_18.

    Runs in the decoding worker right after ``decode_clip`` (see ``ExtraArraySpec``). The file is
    opened a second time there: the 80 frames (8 per second) are not the 10 mid-second frames
    ``decode_clip`` reads, and the network, not the decoding, dominates the cost.
    """
    clips = _decode_st_frames(path, num_segments, frames_per_segment, size, start)
    return r2plus1d_segment_features(_cached_model(weights), clips)
