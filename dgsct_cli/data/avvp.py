"""AVVP (audio-visual video parsing) on LLP: annotation reader and cache preparation.

Raw layout (the LLP dataset as published); the CSVs sit in ``<root>`` or ``<root>/data/AVVP``::

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

import csv
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
from rich.console import Console

from .. import __version__
from .decode import ExtraArraySpec, decode_videos_to_cache
from .lines import LineProblems, numbered_lines
from .manifest import (
    MANIFEST_NAME,
    array_path,
    atomic_save_npy,
    atomic_write_json,
    build_manifest,
    npy_problem,
    remove_stale_temp_files,
    valid_video_id,
    write_manifest,
)
from .r2plus1d import R2P1D_FRAMES_PER_SEGMENT, R2P1D_SIZE, _cached_model, compute_video_st, load_r2plus1d_18
from .report import PrepareSummary, SkippedVideo, raise_on_empty_split, write_prepare_report

__all__ = [
    "AVVP_CLASSES",
    "AVVP_EVAL_FILES",
    "AVVP_NUM_SEGMENTS",
    "AVVP_SPLIT_FILES",
    "LLPRow",
    "VIDEO_ST",
    "find_annotation_dir",
    "multi_hot",
    "prepare_avvp",
    "read_avvp_ground_truth",
    "read_llp_annotations",
    "read_llp_ground_truth",
]

# Release class order (AVVP/dataloader.py:23-28): label vectors and checkpoints index classes this way.
AVVP_CLASSES: list[str] = [
    "Speech",
    "Car",
    "Cheering",
    "Dog",
    "Cat",
    "Frying_(food)",
    "Basketball_bounce",
    "Fire_alarm",
    "Chainsaw",
    "Cello",
    "Banjo",
    "Singing",
    "Chicken_rooster",
    "Violin_fiddle",
    "Vacuum_cleaner",
    "Baby_laughter",
    "Accordion",
    "Lawn_mower",
    "Motorcycle",
    "Helicopter",
    "Acoustic_guitar",
    "Telephone_bell_ringing",
    "Baby_cry_infant_cry",
    "Blender",
    "Clapping",
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


def _lines(
    path: Path, header: Sequence[str], problems: LineProblems | None = None
) -> list[tuple[int, list[str]]]:
    """``(line number, tab-separated fields)`` of every non-blank line after the header; a line
    with the wrong number of fields is reported to ``problems`` (or raised)."""
    problems = problems or LineProblems(strict=True)
    rows: list[tuple[int, list[str]]] = []
    for line_no, line in numbered_lines(path, problems):
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
            problems.add(
                f"{path}:{line_no}: expected {len(header)} tab-separated fields "
                f"({', '.join(header)}), got {len(fields)}: {line[:120]!r}"
            )
            continue
        rows.append((line_no, fields))
    return rows


def _check_filename(path: Path, line_no: int, name: str) -> None:
    # It becomes a cache file name, and its first 11 characters name the features file.
    if len(name) < 11 or not valid_video_id(name):
        raise ValueError(
            f"{path}:{line_no}: invalid filename {name[:60]!r} (expected <11-char YouTube id>_<start>_<end>)"
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


def read_llp_annotations(root: str | Path, problems: LineProblems | None = None) -> dict[str, list[LLPRow]]:
    """Parse ``AVVP_train.csv``, ``AVVP_val_pd.csv`` and ``AVVP_test_pd.csv``.

    The files are looked up in ``root`` then ``root/data/AVVP``. Returns
    ``{"train": rows, "val": rows, "test": rows}`` in file order; a class repeated on one line
    counts once (the real test CSV has one ``Clapping,Clapping``). Raises ``ValueError`` naming a
    missing file, or ``"<file>:<line>: <problem>"`` for a malformed line, an unknown class name or
    a filename listed twice (within or across splits); with ``problems`` such a line is reported
    there and skipped.
    """
    problems = problems or LineProblems(strict=True)
    folder = find_annotation_dir(root)
    seen: dict[str, str] = {}
    splits: dict[str, list[LLPRow]] = {}
    for split, name in AVVP_SPLIT_FILES.items():
        path = folder / name
        rows: list[LLPRow] = []
        for line_no, (filename, labels_text) in _lines(path, SPLIT_HEADER, problems):
            try:
                _check_filename(path, line_no, filename)
                if filename in seen:
                    raise ValueError(
                        f"{path}:{line_no}: filename {filename!r} is listed twice (also {seen[filename]})"
                    )
                labels = _parse_labels(path, line_no, labels_text)
            except ValueError as exc:
                problems.add(str(exc))
                continue
            seen[filename] = f"{path.name}:{line_no}"
            rows.append(LLPRow(filename, labels))
        splits[split] = rows
    return splits


def _check_eval_file(path: Path, problems: LineProblems | None = None) -> set[int]:
    """Validate every line of an eval CSV; returns the numbers of the lines to skip (each
    reported with its file and line, or raised without ``problems``)."""
    problems = problems or LineProblems(strict=True)
    bad: set[int] = set()
    rows = _lines(path, EVAL_HEADER, problems)
    good = {line_no for line_no, _ in rows}
    for line_no, (filename, onset, offset, label) in rows:
        try:
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
                raise ValueError(
                    f"{path}:{line_no}: unknown class {label!r} (not one of the 25 AVVP classes)"
                )
        except ValueError as exc:
            problems.add(str(exc))
            bad.add(line_no)
    # Lines _lines dropped (wrong field count, not UTF-8) are skipped too, the file's last ones included.
    with open(path, "rb") as fh:
        last = sum(1 for _ in fh)
    return bad | (set(range(2, last + 1)) - good)


def read_llp_ground_truth(
    annotation_dir: str | Path,
    filenames: Sequence[str],
    num_segments: int = AVVP_NUM_SEGMENTS,
    problems: LineProblems | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense segment ground truth ``(gt_audio, gt_visual)``, float32 ``[N, T, 25]`` each.

    Built by :func:`read_avvp_ground_truth` (the evaluation's own
    reader) from ``AVVP_eval_audio.csv`` / ``AVVP_eval_visual.csv``, after checking that both exist
    and every line is well formed (a malformed line is reported to ``problems`` and skipped).
    """
    folder = Path(annotation_dir)
    paths = {kind: folder / name for kind, name in AVVP_EVAL_FILES.items()}
    skip: dict[str, set[int]] = {}
    for kind, path in paths.items():
        if not path.is_file():
            raise ValueError(f"{folder}: missing {path.name} (needed for the val/test segment ground truth)")
        skip[kind] = _check_eval_file(path, problems)
    return read_avvp_ground_truth(
        paths["audio"], paths["visual"], list(filenames), num_segments=num_segments, skip_lines=skip
    )


def read_avvp_ground_truth(
    eval_audio_csv: str | Path,
    eval_visual_csv: str | Path,
    filenames: Sequence[str],
    class_names: Sequence[str] = AVVP_CLASSES,
    num_segments: int = 10,
    skip_lines: dict[str, set[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense segment ground truth (gt_audio, gt_visual), each float32 [N, T, C] in `filenames` order.

    Each row of the tab-separated files (header `filename onset offset event_labels`) sets
    segments onset:offset (half-open slice, numpy semantics, so offset <= onset marks nothing).
    Rows whose filename is not in `filenames` are ignored, as the release never looks them up;
    ``skip_lines`` ({"audio"|"visual": line numbers}) names malformed lines to leave out.
    """
    index: dict[str, list[int]] = {}
    for i, name in enumerate(filenames):
        index.setdefault(name, []).append(i)
    class_idx = {name: k for k, name in enumerate(class_names)}

    def read(path: str | Path, skip: set[int]) -> np.ndarray:
        gt = np.zeros((len(filenames), num_segments, len(class_names)), dtype=np.float32)
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            for row in reader:
                if reader.line_num in skip:
                    continue
                rows = index.get(row["filename"])
                if rows is None:
                    continue
                label = row["event_labels"].strip()
                if label not in class_idx:
                    raise ValueError(f"{path}: unknown class {label!r} for {row['filename']}")
                onset, offset = int(float(row["onset"])), int(float(row["offset"]))
                gt[rows, onset:offset, class_idx[label]] = 1.0
        return gt

    skip_lines = skip_lines or {}
    return read(eval_audio_csv, skip_lines.get("audio", set())), read(
        eval_visual_csv, skip_lines.get("visual", set())
    )


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
        return f"unreadable 3-D features {path.name}: {npy_problem(exc)}"[:200]
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
        return f"unreadable 3-D features {source.name}: {npy_problem(exc)}"[:200], False
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
    strict: bool = False,
    extra_sizes: tuple[int, ...] = (),
) -> PrepareSummary:
    """Decode the LLP videos under ``root`` into a prepared cache at ``out``, with ``video_st``
    (and the frames at ``extra_sizes`` too, ``frames_<size>/``, from the same decode).

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
    problems = LineProblems(strict=strict)
    splits = read_llp_annotations(root, problems)
    annotation_dir = find_annotation_dir(root)
    eval_rows = [row for split in ("val", "test") for row in splits[split]]
    gt_audio, gt_visual = read_llp_ground_truth(
        annotation_dir, [row.filename for row in eval_rows], problems=problems
    )
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
            bad_lines=list(problems.messages),
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
        extra_sizes=extra_sizes,
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
        frame_sizes=[s for s in extra_sizes if s != image_size],
        info={"video_st": {**source, **({"features_dir": str(features)} if features else {})}},
    )
    write_manifest(out / MANIFEST_NAME, manifest)
    return summary
