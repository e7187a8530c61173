"""VGG-Sound(40K), the pre-training set of DG-SCT's zero-shot experiments: reader and preparation.

Raw layout (the release's ``data/vggsound/``, pretrain/dataloader.py:65-95 and 296-337)::

    <root>/vggsound-avel40k_labels.csv     columns split ('train'/'test'), category, video_id
                                           (an integer; files are named by it zero-padded to 6
                                           digits) and label (a list of 10 0/1 values, one per
                                           second: the category is on, else background)
    <root>/VggsoundAVEL40kCategories.txt   the 141 class names, one per line (class order)
    <root>/frames/<6-digit id>/%08d.jpg    extracted frames (10 picked by linspace(1, count, 10))
    <root>/wave/<6-digit id>.npy           10 s of audio at 32 kHz (320,000 samples)

or, instead of frames and waves, the videos ``<root>/video/<6-digit id>.mp4`` (decoded like AVE).
A sample is a CSV row; its targets are ``segment_labels`` (class, or 141 = background, per
second) and ``event_label``. The CSV's ``train`` rows become ``train_full``; every
``val_every``-th of them (in file order) is held out as ``val`` and the rest is ``train``.
"""

from __future__ import annotations

import ast
import csv
import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console

from .. import __version__
from .decode import cached_video_ok, decode_videos_to_cache, read_in_threads
from .lines import LineProblems
from .manifest import (
    MANIFEST_NAME,
    array_path,
    atomic_save_npy,
    build_manifest,
    frames_kind,
    npy_problem,
    remove_stale_temp_files,
    validate_manifest,
    write_manifest,
)
from .report import PrepareSummary, SkippedVideo, raise_on_empty_split, write_prepare_report
from .video import DecodeError, resize_frames

__all__ = [
    "VGG_CATEGORIES_FILE",
    "VGG_LABELS_FILE",
    "VGG_NUM_SEGMENTS",
    "VGGRow",
    "prepare_vggsound40k",
    "read_vggsound40k",
    "write_synthetic_vggsound40k",
]

VGG_LABELS_FILE = "vggsound-avel40k_labels.csv"
VGG_CATEGORIES_FILE = "VggsoundAVEL40kCategories.txt"
VGG_NUM_SEGMENTS = 10
VGG_SAMPLE_RATE = 32000
_REQUIRED = ("split", "category", "video_id", "label")


class VGGRow(NamedTuple):
    split: str  # "train" or "test" (the CSV's)
    category: str
    video_id: str  # the 6-digit file stem
    label: list[int]  # 10 values: 1 = the category is on in that second


def _read_categories(root: Path) -> list[str]:
    path = root / VGG_CATEGORIES_FILE
    if not path.is_file():
        raise ValueError(f"{root}: missing {VGG_CATEGORIES_FILE} (one class name per line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path}: class {dup!r} is listed twice")
    return names


def read_vggsound40k(
    root: str | Path, problems: LineProblems | None = None
) -> tuple[list[str], list[VGGRow]]:
    """``(class names, rows in file order)``; a malformed row is reported to ``problems`` (and
    skipped) or raised as ``ValueError('<file>:<line>: <problem>')``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: VGG-Sound(40K) root folder not found")
    problems = problems or LineProblems(strict=True)
    names = _read_categories(root)
    known = set(names)
    path = root / VGG_LABELS_FILE
    if not path.is_file():
        raise ValueError(f"{root}: missing {VGG_LABELS_FILE} (columns split, category, video_id, label)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)} (need {', '.join(_REQUIRED)})")
    rows: list[VGGRow] = []
    for record in reader:

        def bad(problem: str, line: int = reader.line_num) -> None:
            problems.add(f"{path}:{line}: {problem}")

        split, category = (record["split"] or "").strip(), (record["category"] or "").strip()
        if split not in ("train", "test"):
            bad(f"split must be 'train' or 'test', got {split!r}")
            continue
        if category not in known:
            bad(f"unknown category {category!r} (not in {VGG_CATEGORIES_FILE})")
            continue
        try:
            number = int(float((record["video_id"] or "").strip()))
        except ValueError:
            bad(f"video_id must be a number, got {record['video_id']!r}")
            continue
        try:
            label = ast.literal_eval((record["label"] or "").strip())
        except (ValueError, SyntaxError):
            bad(f"label must be a list of {VGG_NUM_SEGMENTS} 0/1 values, got {record['label']!r}")
            continue
        if (
            not isinstance(label, list | tuple)
            or len(label) != VGG_NUM_SEGMENTS
            or any(v not in (0, 1) for v in label)
        ):
            bad(f"label must be a list of {VGG_NUM_SEGMENTS} 0/1 values, got {record['label']!r}")
            continue
        rows.append(VGGRow(split, category, f"{number:06d}", [int(v) for v in label]))
    return names, rows


def _load_frames_and_wave(
    root: str, video_id: str, sizes: tuple[int, ...], num_segments: int, sample_rate: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The release's frame pick (``linspace(1, count, 10)`` over ``%08d.jpg``) at each size, and
    the 10-s waveform (pretrain/dataloader.py:321-337)."""
    from PIL import Image

    folder = Path(root) / "frames" / video_id
    count = len(list(folder.glob("*.jpg"))) if folder.is_dir() else 0
    if count == 0:
        raise DecodeError("missing")
    frames = []
    for index in np.linspace(1, count, num_segments, dtype=int):
        path = folder / f"{int(index):08d}.jpg"
        if not path.is_file():
            raise DecodeError(f"corrupt: frame {path.name} missing ({count} frames)")
        try:
            with Image.open(path) as img:
                frames.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except (OSError, Image.DecompressionBombError) as exc:  # the latter: above PIL's pixel limit
            raise DecodeError(f"corrupt: {path.name}: {' '.join(str(exc).split())[:120]}") from None
    if len({f.shape for f in frames}) != 1:
        raise DecodeError("corrupt: frames of different sizes")
    stack = np.stack(frames)
    wave_path = Path(root) / "wave" / f"{video_id}.npy"
    if not wave_path.is_file():
        raise DecodeError("no audio")
    try:
        wave = np.load(wave_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DecodeError(f"corrupt: wave: {npy_problem(exc)}") from None
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size != num_segments * sample_rate:
        raise DecodeError(
            f"corrupt: wave has {wave.size} samples, expected {num_segments * sample_rate} "
            f"({num_segments} s at {sample_rate} Hz)"
        )
    if not np.isfinite(wave).all():
        raise DecodeError("corrupt: non-finite audio samples")
    return [resize_frames(stack, s) for s in sizes], wave


def _store_frames_and_waves(
    root: Path,
    videos: list[str],
    out: Path,
    image_size: int,
    extra_sizes: tuple[int, ...],
    workers: int,
    progress: bool,
    console: Console | None,
) -> tuple[list[str], list[str], dict[str, str]]:
    """(decoded, reused, failed) for the frames + waves layout; files written atomically."""
    for kind in ("frames", "audio", *map(frames_kind, extra_sizes)):
        (out / kind).mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out, list(map(frames_kind, extra_sizes)))
    todo, reused = [], []
    for vid in videos:
        ok = cached_video_ok(out, vid, VGG_NUM_SEGMENTS, image_size, VGG_SAMPLE_RATE, (), extra_sizes)
        (reused if ok else todo).append(vid)

    def one(vid: str) -> str | None:
        try:
            sets, wave = _load_frames_and_wave(
                str(root), vid, (image_size, *extra_sizes), VGG_NUM_SEGMENTS, VGG_SAMPLE_RATE
            )
        except DecodeError as exc:
            return exc.reason
        for size, frames in zip(extra_sizes, sets[1:]):
            atomic_save_npy(array_path(out, frames_kind(size), vid), frames)
        atomic_save_npy(array_path(out, "frames", vid), sets[0])
        atomic_save_npy(array_path(out, "audio", vid), wave)
        return None

    decoded, failed = read_in_threads(
        todo,
        one,
        workers,
        f"reading VGG-Sound frames and waves ({len(reused)} reused)",
        progress,
        console,
    )
    return decoded, reused, failed


def prepare_vggsound40k(
    root: str | Path,
    out: str | Path,
    workers: int = 2,
    image_size: int = 224,
    val_every: int = 20,
    extra_sizes: tuple[int, ...] = (),
    progress: bool = True,
    console: Console | None = None,
    strict: bool = False,
) -> PrepareSummary:
    """Prepare VGG-Sound(40K) at ``root`` into a cache at ``out`` (frames + waves, or videos).

    Resumable and atomic like every prepare; unusable videos are skipped and reported; a bad CSV
    row is reported and skipped (``strict``: it stops the run). ``val_every``: every N-th training
    row (file order) is held out as ``val`` (0: none; ``train_full`` always lists every training
    row, as the release trains on them all)."""
    started = time.monotonic()
    root, out = Path(root), Path(out)
    if val_every < 0:
        raise ValueError(f"val_every must be >= 0, got {val_every}")
    problems = LineProblems(strict=strict)
    names, rows = read_vggsound40k(root, problems)
    background = len(names)
    splits: dict[str, list[tuple[str, VGGRow]]] = {"train": [], "val": [], "test": []}
    seen: dict[str, int] = {}
    train_count = 0
    for row in rows:
        n = seen.get(row.video_id, 0) + 1
        seen[row.video_id] = n
        sample_id = row.video_id if n == 1 else f"{row.video_id}_{n}"
        if row.split == "train":
            train_count += 1
            held = val_every > 0 and train_count % val_every == 0
            splits["val" if held else "train"].append((sample_id, row))
        else:
            splits["test"].append((sample_id, row))
    if val_every == 0:
        del splits["val"]
    videos = list(dict.fromkeys(row.video_id for row in rows))
    video_splits: dict[str, list[str]] = {}
    for split, items in splits.items():
        for _, row in items:
            video_splits.setdefault(row.video_id, [])
            if split not in video_splits[row.video_id]:
                video_splits[row.video_id].append(split)
    out.mkdir(parents=True, exist_ok=True)
    extra_sizes = tuple(s for s in dict.fromkeys(extra_sizes) if s != image_size)

    if (root / "frames").is_dir() and (root / "wave").is_dir():
        layout = "frames + waves"
        decoded, reused, failed = _store_frames_and_waves(
            root, videos, out, image_size, extra_sizes, workers, progress, console
        )
    else:
        video_dir = next((root / d for d in ("video", "videos") if (root / d).is_dir()), None)
        if video_dir is None:
            raise ValueError(
                f"{root}: no frames/ + wave/ folders and no video/ folder of <6-digit id>.mp4 files"
            )
        layout = f"videos in {video_dir}"
        outcome = decode_videos_to_cache(
            {vid: video_dir / f"{vid}.mp4" for vid in videos},
            out,
            num_segments=VGG_NUM_SEGMENTS,
            image_size=image_size,
            sample_rate=VGG_SAMPLE_RATE,
            workers=workers,
            progress=progress,
            console=console,
            description="decoding VGG-Sound videos",
            extra_sizes=extra_sizes,
        )
        decoded, reused, failed = outcome.decoded, outcome.reused, outcome.failed

    summary = PrepareSummary(
        out=out,
        split_samples={split: len(items) for split, items in splits.items()},
        split_usable={
            split: sum(1 for _, r in items if r.video_id not in failed) for split, items in splits.items()
        },
        videos=len(videos),
        decoded=len(decoded),
        reused=len(reused),
        skipped=[SkippedVideo(vid, reason, video_splits.get(vid, [])) for vid, reason in failed.items()],
        seconds=time.monotonic() - started,
        details={"layout": layout},
        bad_lines=list(problems.messages),
    )
    write_prepare_report(out, root, summary, "vggsound40k")
    raise_on_empty_split(summary, {s: root / VGG_LABELS_FILE for s in splits}, f"{layout}")
    samples: list[dict[str, Any]] = []
    for split, items in splits.items():
        for sample_id, row in items:
            if row.video_id in failed:
                continue
            cls = names.index(row.category)
            samples.append(
                {
                    "id": sample_id,
                    "video_id": row.video_id,
                    "split": split,
                    "targets": {
                        "segment_labels": [cls if v else background for v in row.label],
                        "event_label": [cls],
                    },
                }
            )
    manifest = build_manifest(
        dataset="vggsound40k",
        num_segments=VGG_NUM_SEGMENTS,
        image_size=image_size,
        sample_rate=VGG_SAMPLE_RATE,
        class_names=names,
        background_index=background,
        samples=samples,
        split_names=list(splits),
        skipped=[asdict(s) for s in summary.skipped],
        created_by=f"dgsct {__version__} prepare vggsound40k",
        info={"val_every": val_every},
        frame_sizes=extra_sizes,
    )
    # Every training row, in file order: what the release trains on.
    manifest["splits"]["train_full"] = sorted(manifest["splits"]["train"] + manifest["splits"].get("val", []))
    write_manifest(out / MANIFEST_NAME, validate_manifest(manifest, "manifest"))
    return summary


def write_synthetic_vggsound40k(
    root: str | Path,
    num_videos: int = 24,
    num_classes: int = 4,
    image_size: int = 64,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> Path:
    """A synthetic VGG-Sound(40K) root in the frames + waves layout.

    Classes are the first ``num_classes`` AVE categories, drawn exactly as the synthetic AVE
    writer draws them (class colour, stripes, tone), so a model pre-trained on it can be scored
    zero-shot on a synthetic AVE set with the same classes. Each video has one event of 2-10 s;
    frames are written as JPEG, 10 per video (one per second)."""
    from PIL import Image

    from .synthetic import AVE_CATEGORIES, MARKER, _render_audio, _render_frames

    root = Path(root)
    if (root / VGG_LABELS_FILE).exists() and not (root / MARKER).exists():
        raise ValueError(
            f"{root}: holds a {VGG_LABELS_FILE} not written by this writer; refusing to overwrite"
        )
    if not 1 <= num_classes <= len(AVE_CATEGORIES) or num_videos < 3:
        raise ValueError("need 1..28 classes and at least 3 videos")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by dgsct_cli.data.vggsound.write_synthetic_vggsound40k\n")
    rng = np.random.default_rng([seed, 40])
    names = list(AVE_CATEGORIES[:num_classes])
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["split", "category", "video_id", "label"])
    n_test = max(1, round(test_fraction * num_videos))
    for i in range(num_videos):
        k = i % num_classes
        length = int(rng.integers(2, VGG_NUM_SEGMENTS + 1))
        start = int(rng.integers(0, VGG_NUM_SEGMENTS - length + 1))
        seg = [k if start <= t < start + length else -1 for t in range(VGG_NUM_SEGMENTS)]
        vid = f"{i:06d}"
        folder = root / "frames" / vid
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(_render_frames(seg, num_classes, image_size, 1, rng), start=1):
            Image.fromarray(frame).save(folder / f"{t:08d}.jpg", quality=95)
        (root / "wave").mkdir(exist_ok=True)
        np.save(root / "wave" / f"{vid}.npy", _render_audio(seg, VGG_SAMPLE_RATE, rng))
        split = "test" if i >= num_videos - n_test else "train"
        writer.writerow([split, names[k], i, str([1 if c >= 0 else 0 for c in seg])])
    (root / VGG_LABELS_FILE).write_text(table.getvalue())
    (root / VGG_CATEGORIES_FILE).write_text("".join(n + "\n" for n in names))
    return root
