"""AVVP (audio-visual video parsing) on LLP: annotation reader and cache preparation.

Raw layout (spec tasks-release.md §A.1, §A.8); the CSVs sit in ``<root>`` or ``<root>/data/AVVP``::

    AVVP_train.csv, AVVP_val_pd.csv, AVVP_test_pd.csv   filename<TAB>event_labels (weak labels)
    AVVP_eval_audio.csv, AVVP_eval_visual.csv           filename<TAB>onset<TAB>offset<TAB>event_labels
    <filename>.mp4        in <root>, <root>/video/ or <root>/LLP_dataset/video/

A sample is a video (``filename`` is unique over the three splits), decoded once like AVE. AVVP
also needs the 3-D visual features ``video_st`` ``[10, 512]`` per video, stored as an extra cache
array: copied from the published ``feats/r2plus1d_18/<YouTubeID>.npy`` folder, or computed here
with torchvision's ``r2plus1d_18`` from a local weights file (8 frames per second, 112x112,
Kinetics normalisation, ``fc`` removed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from .. import __version__
from ..tasks.avvp_metrics import AVVP_CLASSES, read_avvp_ground_truth
from .cache import (
    MANIFEST_NAME,
    ExtraArraySpec,
    array_path,
    atomic_save_npy,
    atomic_write_json,
    build_manifest,
    decode_videos_to_cache,
    remove_stale_temp_files,
    write_manifest,
)
from .report import PrepareSummary, SkippedVideo, raise_on_empty_split, write_prepare_report
from .video import DecodeError, _short_message, quiet_decord

__all__ = [
    "AVVP_EVAL_FILES",
    "AVVP_NUM_SEGMENTS",
    "AVVP_SPLIT_FILES",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "LLPRow",
    "VIDEO_ST",
    "compute_video_st",
    "find_annotation_dir",
    "load_r2plus1d_18",
    "multi_hot",
    "prepare_avvp",
    "r2plus1d_inputs",
    "r2plus1d_segment_features",
    "read_llp_annotations",
    "read_llp_ground_truth",
    "st_frame_indices",
]

AVVP_NUM_SEGMENTS = 10
# Split name -> file, in the order samples are listed in the manifest.
AVVP_SPLIT_FILES = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
AVVP_EVAL_FILES = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
SPLIT_HEADER = ("filename", "event_labels")
EVAL_HEADER = ("filename", "onset", "offset", "event_labels")
# The extra cache array holding the 3-D visual features, and its per-video shape.
VIDEO_ST = "video_st"
VIDEO_ST_DIM = 512
# R(2+1)D input: 8 frames per 1-s segment at 112x112, normalised with the Kinetics-400 statistics.
R2P1D_FRAMES_PER_SEGMENT = 8
R2P1D_SIZE = 112
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Where the video_st of a cache came from; a change invalidates every cached feature file.
_SOURCE_NAME = "video_st.source.json"


class LLPRow(NamedTuple):
    filename: str  # <11-char YouTube id>_<start>_<end>; also the sample and video id
    labels: list[str]  # weak video-level labels, class names in file order

    @property
    def youtube_id(self) -> str:
        """The published features and frames are named by the first 11 characters."""
        return self.filename[:11]


# --------------------------------------------------------------------------- annotations


def find_annotation_dir(root: str | Path) -> Path:
    """``root`` or ``root/data/AVVP``: the first holding all three split CSVs."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: AVVP root folder not found")
    candidates = [root, root / "data" / "AVVP"]
    for folder in candidates:
        if all((folder / name).is_file() for name in AVVP_SPLIT_FILES.values()):
            return folder
    # Name the first missing file of the most complete candidate, so the message is actionable.
    best = max(candidates, key=lambda d: sum((d / n).is_file() for n in AVVP_SPLIT_FILES.values()))
    missing = next(n for n in AVVP_SPLIT_FILES.values() if not (best / n).is_file())
    raise ValueError(
        f"{best}: missing {missing} (an AVVP root holds {', '.join(AVVP_SPLIT_FILES.values())} and "
        f"{', '.join(AVVP_EVAL_FILES.values())}, directly or under data/AVVP/)"
    )


def _lines(path: Path, header: Sequence[str]) -> list[tuple[int, list[str]]]:
    """``(line number, tab-separated fields)`` of every non-blank line after the header."""
    rows: list[tuple[int, list[str]]] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:  # utf-8-sig: tolerate a BOM
        for line_no, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if line_no == 1:
                got = tuple(f.strip() for f in line.split("\t"))
                if got != tuple(header):
                    raise ValueError(
                        f"{path}:1: expected the tab-separated header {'<TAB>'.join(header)}, got {line!r}"
                    )
                continue
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}:{line_no}: expected {len(header)} tab-separated fields "
                    f"({', '.join(header)}), got {len(fields)}: {line!r}"
                )
            rows.append((line_no, fields))
    return rows


def _check_filename(path: Path, line_no: int, name: str) -> None:
    # It becomes a cache file name, and its first 11 characters name the features file.
    if (
        len(name) < 11
        or any(c.isspace() for c in name)
        or "/" in name
        or "\\" in name
        or name.startswith(".")
    ):
        raise ValueError(
            f"{path}:{line_no}: invalid filename {name!r} (expected <11-char YouTube id>_<start>_<end>)"
        )


def _parse_labels(path: Path, line_no: int, text: str) -> list[str]:
    labels: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            raise ValueError(f"{path}:{line_no}: empty class name in event_labels {text!r}")
        if name not in AVVP_CLASSES:
            raise ValueError(f"{path}:{line_no}: unknown class {name!r} (not one of the 25 AVVP classes)")
        if name not in labels:
            labels.append(name)
    return labels


def read_llp_annotations(root: str | Path) -> dict[str, list[LLPRow]]:
    """Parse ``AVVP_train.csv``, ``AVVP_val_pd.csv`` and ``AVVP_test_pd.csv``.

    The files are looked up in ``root`` then ``root/data/AVVP``. Returns
    ``{"train": rows, "val": rows, "test": rows}`` in file order; a class repeated on one line
    counts once (the real test CSV has one ``Clapping,Clapping``). Raises ``ValueError`` naming a
    missing file, or ``"<file>:<line>: <problem>"`` for a malformed line, an unknown class name or
    a filename listed twice (within or across splits).
    """
    folder = find_annotation_dir(root)
    seen: dict[str, str] = {}
    splits: dict[str, list[LLPRow]] = {}
    for split, name in AVVP_SPLIT_FILES.items():
        path = folder / name
        rows: list[LLPRow] = []
        for line_no, (filename, labels_text) in _lines(path, SPLIT_HEADER):
            _check_filename(path, line_no, filename)
            where = f"{path.name}:{line_no}"
            if filename in seen:
                raise ValueError(
                    f"{path}:{line_no}: filename {filename!r} is listed twice (also {seen[filename]})"
                )
            seen[filename] = where
            rows.append(LLPRow(filename, _parse_labels(path, line_no, labels_text)))
        splits[split] = rows
    return splits


def _check_eval_file(path: Path) -> None:
    """Validate every line of an eval CSV, so a bad row is reported with its file and line."""
    for line_no, (filename, onset, offset, label) in _lines(path, EVAL_HEADER):
        if not filename:
            raise ValueError(f"{path}:{line_no}: empty filename")
        try:
            start, end = float(onset), float(offset)
        except ValueError:
            raise ValueError(
                f"{path}:{line_no}: onset/offset must be seconds, got {onset!r}/{offset!r}"
            ) from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < 0:
            # A negative bound would slice from the end of the segment axis.
            raise ValueError(f"{path}:{line_no}: onset/offset must be >= 0, got {onset!r}/{offset!r}")
        if label not in AVVP_CLASSES:
            raise ValueError(f"{path}:{line_no}: unknown class {label!r} (not one of the 25 AVVP classes)")


def read_llp_ground_truth(
    annotation_dir: str | Path, filenames: Sequence[str], num_segments: int = AVVP_NUM_SEGMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Dense segment ground truth ``(gt_audio, gt_visual)``, float32 ``[N, T, 25]`` each.

    Built by :func:`~dgsct_cli.tasks.avvp_metrics.read_avvp_ground_truth` (the evaluation's own
    reader) from ``AVVP_eval_audio.csv`` / ``AVVP_eval_visual.csv``, after checking that both exist
    and every line is well formed.
    """
    folder = Path(annotation_dir)
    paths = {kind: folder / name for kind, name in AVVP_EVAL_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise ValueError(f"{folder}: missing {path.name} (needed for the val/test segment ground truth)")
        _check_eval_file(path)
    return read_avvp_ground_truth(paths["audio"], paths["visual"], list(filenames), num_segments=num_segments)


def multi_hot(labels: Sequence[str]) -> list[float]:
    """``[25]`` 0/1 floats in the AVVP class order (floats: they are BCE targets)."""
    hot = [0.0] * len(AVVP_CLASSES)
    for name in labels:
        hot[AVVP_CLASSES.index(name)] = 1.0
    return hot


def _find_video_dir(root: Path, annotation_dir: Path, filenames: Sequence[str]) -> Path:
    """The first candidate folder holding any ``<filename>.mp4``, else the first that exists."""
    candidates: list[Path] = []
    for base in (root, annotation_dir):
        for folder in (base, base / "video", base / "LLP_dataset" / "video"):
            if folder not in candidates:
                candidates.append(folder)
    wanted = {f"{name}.mp4" for name in filenames}
    existing = [c for c in candidates if c.is_dir()]
    for folder in existing:
        with os.scandir(folder) as entries:
            if any(e.name in wanted for e in entries):
                return folder
    # Nothing found anywhere: report the folder most likely meant (a video/ subfolder if any).
    return next((c for c in existing if c != root and c != annotation_dir), root)


# --------------------------------------------------------------------------- R(2+1)D features


def st_frame_indices(
    num_frames: int,
    fps: float,
    num_segments: int = AVVP_NUM_SEGMENTS,
    frames_per_segment: int = R2P1D_FRAMES_PER_SEGMENT,
) -> np.ndarray:
    """Frame indices ``[num_segments, frames_per_segment]``: evenly spaced inside each second.

    Frame j of segment i is the one shown at ``i + (j + 0.5) / frames_per_segment`` seconds. A clip
    shorter than ``num_segments`` seconds (or without a usable fps) spreads all indices evenly over
    the frames it has, as :func:`~dgsct_cli.data.video.frame_indices` does.
    """
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    if fps > 0 and math.isfinite(fps) and num_frames / fps >= num_segments:
        times = (
            np.arange(num_segments)[:, None]
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
        raise ValueError(
            f"{path}: cannot be read as a torch state dict ({type(exc).__name__}: {exc})"
        ) from None
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


def _decode_st_frames(path: str, num_segments: int, frames_per_segment: int, size: int) -> torch.Tensor:
    """Network input for every segment of ``path`` (decord), resized segment by segment so a
    high-resolution video never holds all its frames at full size."""
    decord, errors = quiet_decord()
    try:
        reader = decord.VideoReader(path, num_threads=1)
        indices = st_frame_indices(len(reader), float(reader.get_avg_fps()), num_segments, frames_per_segment)
        clips = []
        for row in indices:
            unique, inverse = np.unique(row, return_inverse=True)
            frames = reader.get_batch(unique.tolist()).asnumpy()[inverse]
            clips.append(r2plus1d_inputs(frames[None], size))
        del reader
    except errors as exc:
        raise DecodeError(f"corrupt: {_short_message(exc)}") from exc
    return torch.cat(clips)


def compute_video_st(
    path: str,
    weights: str,
    num_segments: int = AVVP_NUM_SEGMENTS,
    frames_per_segment: int = R2P1D_FRAMES_PER_SEGMENT,
    size: int = R2P1D_SIZE,
) -> np.ndarray:
    """``video_st`` float32 ``[num_segments, 512]`` of the video file ``path`` with r2plus1d_18.

    Runs in the decoding worker right after ``decode_clip`` (see ``ExtraArraySpec``). The file is
    opened a second time there: the 80 frames (8 per second) are not the 10 mid-second frames
    ``decode_clip`` reads, and the network, not the decoding, dominates the cost.
    """
    clips = _decode_st_frames(path, num_segments, frames_per_segment, size)
    return r2plus1d_segment_features(_cached_model(weights), clips)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- published features


def _features_problem(path: Path) -> str | None:
    """Why the published features file cannot be used (header only), or None."""
    if not path.is_file():
        return "no 3-D features"
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"unreadable 3-D features {path.name}: {exc}"[:200]
    expected = (AVVP_NUM_SEGMENTS, VIDEO_ST_DIM)
    if tuple(arr.shape) != expected:
        return f"3-D features {path.name} have shape {tuple(arr.shape)}, expected {expected}"
    if arr.dtype.kind not in "fiu":
        return f"3-D features {path.name} have dtype {arr.dtype}, expected float"
    return None


def _copy_features(source: Path, out: Path, video_id: str) -> tuple[str | None, bool]:
    """Copy one features file into the cache as float32; ``(problem, written)``."""
    problem = _features_problem(source)
    if problem:
        return problem, False
    try:
        value = np.load(source, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        return f"unreadable 3-D features {source.name}: {exc}"[:200], False
    if not np.isfinite(value).all():
        return f"3-D features {source.name} contain non-finite values", False
    target = array_path(out, VIDEO_ST, video_id)
    if target.is_file():
        try:
            if np.array_equal(np.load(target, allow_pickle=False), value):
                return None, False  # resume: already there, unchanged
        except (OSError, ValueError):
            pass  # unreadable cache file: overwrite it
    atomic_save_npy(target, value)
    return None, True


def _reset_video_st(out: Path, source: Mapping[str, Any]) -> None:
    """Drop cached ``video_st`` files made from another source (features folder vs network)."""
    marker = out / _SOURCE_NAME
    try:
        previous = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    except (OSError, json.JSONDecodeError):
        previous = None
    if previous != dict(source):
        for stale in (out / VIDEO_ST).glob("*.npy"):
            stale.unlink()
        atomic_write_json(marker, dict(source))


def _no_features_message(root: Path, annotation_dir: Path) -> str:
    message = (
        "AVVP needs the 3-D visual features video_st [10, 512] per video: pass --features DIR "
        "(the published LLP_dataset/feats/r2plus1d_18 folder, one <YouTubeID>.npy per video) or "
        "--r2plus1d-weights FILE (a local torchvision r2plus1d_18 state dict, to compute them)"
    )
    for base in (annotation_dir, root):
        for folder in (base / "LLP_dataset" / "feats" / "r2plus1d_18", base / "feats" / "r2plus1d_18"):
            if folder.is_dir():
                return f"{message}; found {folder}, e.g. --features {folder}"
    return message


# --------------------------------------------------------------------------- prepare


def prepare_avvp(
    root: str | Path,
    out: str | Path,
    workers: int = 2,
    image_size: int = 192,
    sample_rate: int = 32000,
    features: Path | None = None,
    r2plus1d_weights: Path | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> PrepareSummary:
    """Decode the LLP videos under ``root`` into a prepared cache at ``out``, with ``video_st``.

    Exactly one of ``features`` (published ``<YouTubeID>.npy`` folder) or ``r2plus1d_weights``
    (local torchvision state dict) provides the ``[10, 512]`` 3-D features. Each video is decoded
    once, in parallel; the run is resumable and every file is written atomically. Missing,
    corrupt and audio-less videos, and videos without usable features, are skipped and reported
    (summary, ``manifest.json``, ``prepare_report.json``). Raises ``ValueError`` for missing or
    malformed annotation files, bad options, or a split left without samples.
    """
    started = time.monotonic()
    root, out = Path(root), Path(out)
    if features is not None and r2plus1d_weights is not None:
        raise ValueError("give either --features or --r2plus1d-weights, not both")
    splits = read_llp_annotations(root)
    annotation_dir = find_annotation_dir(root)
    eval_rows = [row for split in ("val", "test") for row in splits[split]]
    gt_audio, gt_visual = read_llp_ground_truth(annotation_dir, [row.filename for row in eval_rows])
    gt_index = {row.filename: i for i, row in enumerate(eval_rows)}

    extras: tuple[ExtraArraySpec, ...] = ()
    if features is not None:
        features = Path(features)
        if not features.is_dir():
            raise ValueError(f"{features}: 3-D features folder not found (expected <YouTubeID>.npy files)")
        source: dict[str, Any] = {"source": "features"}
        feature_text = f"copied from {features}"
    elif r2plus1d_weights is not None:
        weights = Path(r2plus1d_weights).resolve()
        load_r2plus1d_18(weights)  # fail now, not once per video in the workers
        source = {
            "source": "r2plus1d_18",
            "weights_sha256": _sha256(weights),
            "frames_per_segment": R2P1D_FRAMES_PER_SEGMENT,
            "size": R2P1D_SIZE,
        }
        feature_text = f"computed with r2plus1d_18 ({weights.name})"
        spec = ExtraArraySpec(
            kind=VIDEO_ST,
            shape=(AVVP_NUM_SEGMENTS, VIDEO_ST_DIM),
            compute=compute_video_st,
            # Read here, in the parent, and passed on: spawned workers see the same settings.
            options={
                "weights": str(weights),
                "num_segments": AVVP_NUM_SEGMENTS,
                "frames_per_segment": R2P1D_FRAMES_PER_SEGMENT,
                "size": R2P1D_SIZE,
            },
        )
        extras = (spec,)
    else:
        raise ValueError(_no_features_message(root, annotation_dir))

    all_names = [row.filename for rows in splits.values() for row in rows]
    video_dir = _find_video_dir(root, annotation_dir, all_names)
    video_split = {row.filename: split for split, rows in splits.items() for row in rows}
    videos = {name: video_dir / f"{name}.mp4" for name in all_names}
    youtube_id = {row.filename: row.youtube_id for rows in splits.values() for row in rows}
    hint = f"videos expected in {video_dir}" + (f"; 3-D features from {features}" if features else "")

    def account(
        failed: Mapping[str, str], decoded: int, reused: int, details: dict[str, str]
    ) -> tuple[PrepareSummary, list[dict[str, Any]]]:
        """Summarise, write prepare_report.json and fail on an empty split."""
        skipped = [SkippedVideo(vid, failed[vid], [video_split[vid]]) for vid in videos if vid in failed]
        summary = PrepareSummary(
            out=out,
            split_samples={split: len(rows) for split, rows in splits.items()},
            split_usable={
                split: sum(1 for row in rows if row.filename not in failed) for split, rows in splits.items()
            },
            videos=len(videos),
            decoded=decoded,
            reused=reused,
            skipped=skipped,
            seconds=time.monotonic() - started,
            details=details,
        )
        write_prepare_report(out, root, summary, "avvp", {"videos_dir": str(video_dir)})
        raise_on_empty_split(
            summary, {split: annotation_dir / name for split, name in AVVP_SPLIT_FILES.items()}, hint
        )
        samples = []
        for split, rows in splits.items():
            for row in rows:
                if row.filename in failed:
                    continue
                targets: dict[str, Any] = {"labels": multi_hot(row.labels)}
                if row.filename in gt_index:
                    targets["gt_audio"] = gt_audio[gt_index[row.filename]].tolist()
                    targets["gt_visual"] = gt_visual[gt_index[row.filename]].tolist()
                samples.append(
                    {"id": row.filename, "video_id": row.filename, "split": split, "targets": targets}
                )
        return summary, samples

    out.mkdir(parents=True, exist_ok=True)
    (out / VIDEO_ST).mkdir(exist_ok=True)
    remove_stale_temp_files(out, [VIDEO_ST])
    _reset_video_st(out, source)

    # Fail fast, before hours of decoding, when a whole split's videos or features are absent;
    # videos without usable published features are not decoded at all.
    failed: dict[str, str] = {}
    if features is not None:
        for name in videos:
            problem = _features_problem(features / f"{youtube_id[name]}.npy")
            if problem:
                failed[name] = problem
    absent = {name: "missing" for name, path in videos.items() if name not in failed and not path.is_file()}
    if failed or absent:
        account({**failed, **absent}, 0, 0, {"3-D features (video_st)": feature_text})

    outcome = decode_videos_to_cache(
        {name: path for name, path in videos.items() if name not in failed},
        out,
        num_segments=AVVP_NUM_SEGMENTS,
        image_size=image_size,
        sample_rate=sample_rate,
        workers=workers,
        progress=progress,
        console=console,
        description="decoding LLP videos" + (" + R(2+1)D features" if extras else ""),
        extras=extras,
    )
    _cached_model.cache_clear()  # with workers=1 the net was loaded in this process
    failed.update(outcome.failed)
    if features is not None:
        copied = 0
        for name in [*outcome.decoded, *outcome.reused]:
            problem, written = _copy_features(features / f"{youtube_id[name]}.npy", out, name)
            if problem:
                failed[name] = problem
            copied += written
        feature_text += f" ({copied} written now)"

    summary, samples = account(
        failed, len(outcome.decoded), len(outcome.reused), {"3-D features (video_st)": feature_text}
    )
    manifest = build_manifest(
        dataset="avvp",
        num_segments=AVVP_NUM_SEGMENTS,
        image_size=image_size,
        sample_rate=sample_rate,
        class_names=AVVP_CLASSES,
        background_index=None,
        samples=samples,
        split_names=list(splits),
        skipped=[asdict(s) for s in summary.skipped],
        created_by=f"dgsct {__version__} prepare avvp",
        extra_arrays=[VIDEO_ST],
        info={"video_st": {**source, **({"features_dir": str(features)} if features else {})}},
    )
    write_manifest(out / MANIFEST_NAME, manifest)
    return summary
