"""AVSBench-object (S4 single-source, MS3 multi-source): layout reader and cache preparation.

Published layout (``<root>`` is ``AVSBench_data`` or the setting's folder itself)::

    Single-source/s4_meta_data.csv          header; column 0 = name, 'category', 'split'
    Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png   k = 1..5, 224 px
    Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png        train: k = 1 only
    Single-source/s4_data/wave/<split>/<category>/AVS.npy      {"<name>.wav": float32 [160000]}
    Multi-sources/ms3_meta_data.csv         header; column 0 = video id, 'split'
    Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<k>.png
    Multi-sources/ms3_data/gt_masks/<split>/<name>/<name>_<k>.png                  k = 1..5
    Multi-sources/ms3_data/wave/<split>/AVS.npy

(release AVS/avs_scripts/avs_s4/dataloader.py:156-197, avs_ms3/dataloader.py:153-187). With
``source="videos"`` the frames and the 32 kHz audio come from the raw clips instead
(``<videos>/<split>/<category>/<name>.mp4`` for S4, ``<videos>/[<split>/]<name>.mp4`` for MS3),
decoded with decord at AVSBench's frame rule (``video.last_of_sixteen``); masks always come from
``gt_masks``.

Cache: ``frames/<name>.npy`` uint8 ``[5, 224, 224, 3]``, ``audio/<name>.npy`` float32 ``[5 * 32000]``,
``masks/<name>.npy`` uint8 ``[5, 224, 224]`` (0/1), and per sample the targets ``mask_valid``
(which frames have a mask: S4 train has only the first, as the release reads it) and, for S4,
``category``. Masks are read as ``pixel > 0`` after conversion to greyscale; the release opens S4
masks with PIL ``convert('1')`` (Floyd-Steinberg dithering of grey pixels) and MS3 masks with
``convert('P')`` (values / 255), so the two agree only for clean 0/255 masks, which is what
AVSBench publishes as far as we know (see NOTES).

``AVS.npy`` files are pickled NumPy object arrays; they are read with an unpickler that accepts
only NumPy arrays, dtypes and plain containers (never arbitrary objects or code).
"""

from __future__ import annotations

import csv
import io
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console

from .. import __version__
from .decode import ExtraArraySpec, cached_video_ok, decode_videos_to_cache, make_progress
from .lines import LineProblems, numbered_lines
from .manifest import (
    MANIFEST_NAME,
    array_path,
    atomic_save_npy,
    build_manifest,
    remove_stale_temp_files,
    valid_video_id,
    write_manifest,
)
from .report import PrepareSummary, SkippedVideo, raise_on_empty_split, write_prepare_report
from .video import DecodeError, resize_frames

__all__ = [
    "AVS_NUM_SEGMENTS",
    "AVS_SAMPLE_RATE",
    "AVS_SETTINGS",
    "AVSSetting",
    "MetaRow",
    "load_wave_dict",
    "prepare_avsbench",
    "read_mask_png",
    "read_meta",
]

log = logging.getLogger(__name__)

AVS_NUM_SEGMENTS = 5
AVS_SAMPLE_RATE = 32000
AVS_IMAGE_SIZE = 224
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AVSSetting:
    name: str  # "s4" | "ms3"
    dataset: str  # manifest dataset name
    folder: str  # under AVSBench_data
    csv: str
    data: str  # s4_data | ms3_data
    by_category: bool  # S4 files sit in a <category> folder

    def frame_path(self, data: Path, row: MetaRow, k: int) -> Path:
        if self.by_category:
            return data / "visual_frames" / row.split / row.category / row.name / f"{row.name}_{k}.png"
        return data / "visual_frames" / row.name / f"{row.name}.mp4_{k}.png"

    def mask_path(self, data: Path, row: MetaRow, k: int) -> Path:
        parts = (row.split, row.category) if self.by_category else (row.split,)
        return data.joinpath("gt_masks", *parts, row.name, f"{row.name}_{k}.png")

    def wave_path(self, data: Path, row: MetaRow) -> Path:
        parts = (row.split, row.category) if self.by_category else (row.split,)
        return data.joinpath("wave", *parts, "AVS.npy")

    def video_paths(self, videos: Path, row: MetaRow) -> list[Path]:
        if self.by_category:
            return [videos / row.split / row.category / f"{row.name}.mp4"]
        return [videos / f"{row.name}.mp4", videos / row.split / f"{row.name}.mp4"]

    def masks_read(self, split: str) -> int:
        """How many masks the release reads: S4 train only the first frame's (dataloader.py:65)."""
        return 1 if self.by_category and split == "train" else AVS_NUM_SEGMENTS


AVS_SETTINGS = {
    "s4": AVSSetting("s4", "avsbench-s4", "Single-source", "s4_meta_data.csv", "s4_data", True),
    "ms3": AVSSetting("ms3", "avsbench-ms3", "Multi-sources", "ms3_meta_data.csv", "ms3_data", False),
}


class MetaRow(NamedTuple):
    name: str
    category: str  # "" for MS3
    split: str
    line_no: int


def get_setting(setting: str) -> AVSSetting:
    if setting not in AVS_SETTINGS:
        raise ValueError(f"--setting must be one of {', '.join(AVS_SETTINGS)}, got {setting!r}")
    return AVS_SETTINGS[setting]


def setting_root(root: str | Path, setting: AVSSetting) -> Path:
    """The folder holding ``<setting>_meta_data.csv``: ``root`` itself or ``root/<Single-source|Multi-sources>``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: AVSBench root folder not found")
    for candidate in (root / setting.folder, root):
        if (candidate / setting.csv).is_file():
            return candidate
    raise ValueError(
        f"{root}: no {setting.csv} here or in {setting.folder}/ (an AVSBench root holds "
        f"{setting.folder}/{setting.csv} and {setting.folder}/{setting.data}/)"
    )


# --------------------------------------------------------------------------- meta csv


def read_meta(path: str | Path, setting: AVSSetting, problems: LineProblems | None = None) -> list[MetaRow]:
    """The rows of ``s4_meta_data.csv`` / ``ms3_meta_data.csv`` in file order (the order the
    release's loaders and its batches of 4 test videos follow).

    Column 0 is the video name, the ``split`` column its split; S4's category is the
    ``category`` column (else column 2, as the release reads it). A malformed line is reported to
    ``problems`` and skipped (strict: raised)."""
    path = Path(path)
    problems = problems or LineProblems(strict=True)
    rows: list[MetaRow] = []
    seen: dict[str, int] = {}
    header: list[str] | None = None
    split_col = category_col = -1
    for line_no, line in numbered_lines(path, problems):
        if not line.strip():
            continue
        fields = [f.strip() for f in next(csv.reader([line]))]
        if header is None:
            header = [f.lower() for f in fields]
            if "split" not in header:
                raise ValueError(f"{path}:{line_no}: expected a header with a 'split' column, got {line!r}")
            split_col = header.index("split")
            if setting.by_category:
                category_col = header.index("category") if "category" in header else 2
            continue
        needed = max(split_col, category_col, 0) + 1
        if len(fields) < needed:
            problems.add(
                f"{path}:{line_no}: expected at least {needed} comma-separated fields, got {len(fields)}"
            )
            continue
        name, split = fields[0], fields[split_col]
        category = fields[category_col] if setting.by_category else ""
        if not valid_video_id(name):
            problems.add(f"{path}:{line_no}: invalid video name {name[:60]!r} (it names files)")
        elif split not in SPLITS:
            problems.add(f"{path}:{line_no}: split {split!r} is not one of {', '.join(SPLITS)}")
        elif setting.by_category and (not category or "/" in category or category.startswith(".")):
            problems.add(f"{path}:{line_no}: invalid category {category!r}")
        elif name in seen:
            problems.add(f"{path}:{line_no}: video {name!r} is listed twice (also line {seen[name]})")
        else:
            seen[name] = line_no
            rows.append(MetaRow(name, category, split, line_no))
    if header is None:
        raise ValueError(f"{path}: empty file (expected a header and one line per video)")
    return rows


# --------------------------------------------------------------------------- files


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a pickled NumPy array refers to (under NumPy 1's and NumPy 2's module names)."""
    if not _ALLOWED_GLOBALS:
        reconstruct = np.zeros(1).__reduce__()[0]
        scalar = np.float32(0).__reduce__()[0]
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            _ALLOWED_GLOBALS[(module, "_reconstruct")] = reconstruct
            _ALLOWED_GLOBALS[(module, "scalar")] = scalar
        _ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
        _ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
    return _ALLOWED_GLOBALS


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are read)")
        return found


def load_wave_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a release ``AVS.npy`` (``np.save`` of a dict name -> waveform) without running any
    code from the file. Raises ``ValueError`` naming the file when it is not such a dict."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            if dtype.hasobject:
                obj = _ArrayUnpickler(fh).load()
            else:
                raise ValueError("holds a plain array, not a dict of waveforms")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable AVS.npy waveform dict ({exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of waveforms, got {type(obj).__name__}")
    return obj


class PNGProblem(ValueError):
    """A PNG that opens but cannot be used as it is (the message says why)."""


def _note_size(img: Any, size: int, resized: list[tuple[str, int, int]] | None, path: Path) -> None:
    if resized is not None and img.size != (size, size):
        resized.append((str(path), *img.size))


def read_mask_png(
    path: Path, size: int = AVS_IMAGE_SIZE, resized: list[tuple[str, int, int]] | None = None
) -> np.ndarray:
    """A mask PNG as uint8 0/1 ``[size, size]``: greyscale value > 0 is foreground (nearest-
    neighbour resize when the file has another size, noted in ``resized``). A mask whose object is
    only in its alpha channel (black colour channels) is refused: greyscale would make it empty."""
    from PIL import Image

    with Image.open(path) as img:
        _note_size(img, size, resized, path)
        grey = img.convert("L")
        if not np.asarray(grey).any() and ("A" in img.getbands() or "transparency" in img.info):
            alpha = np.asarray(img.convert("RGBA"))[..., 3]
            if alpha.min() != alpha.max():
                raise PNGProblem(
                    "its object is only in the alpha channel (the colour channels are black); "
                    "save masks in greyscale (0 background, 255 object)"
                )
        if grey.size != (size, size):
            grey = grey.resize((size, size), Image.NEAREST)
        return (np.asarray(grey) > 0).astype(np.uint8)


def read_frame_png(
    path: Path, size: int = AVS_IMAGE_SIZE, resized: list[tuple[str, int, int]] | None = None
) -> np.ndarray:
    """An RGB frame as uint8 ``[size, size, 3]`` (bicubic resize when the file has another size,
    noted in ``resized``)."""
    from PIL import Image

    with Image.open(path) as img:
        _note_size(img, size, resized, path)
        rgb = np.array(img.convert("RGB"))  # writable: torch warns about read-only arrays
    if rgb.shape[:2] != (size, size):
        rgb = resize_frames(rgb[None], size)[0]
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _read_pngs(
    paths: Sequence[Path],
    reader: Callable[..., np.ndarray],
    size: int,
    what: str,
    base: Path,
    resized: list[tuple[str, int, int]] | None = None,
):
    from PIL import Image

    out = []
    for path in paths:
        rel = path.relative_to(base) if path.is_relative_to(base) else path
        if not path.is_file():
            raise DecodeError(f"missing {what} {rel}")
        try:
            out.append(reader(path, size, resized))
        except PNGProblem as exc:
            raise DecodeError(f"{what} {rel}: {exc}") from None
        except Image.DecompressionBombError as exc:  # not an OSError: PIL refuses huge images
            pixels = " ".join(str(exc).split()).split(",")[0]
            raise DecodeError(f"{what} {rel}: too large to read ({pixels})") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise DecodeError(f"corrupt {what} {rel}: {' '.join(str(exc).split())[:80]}") from None
    return np.stack(out)


def _masks_array(
    setting: AVSSetting,
    data: Path,
    row: MetaRow,
    size: int,
    base: Path,
    resized: list[tuple[str, int, int]] | None = None,
) -> np.ndarray:
    count = setting.masks_read(row.split)
    read = _read_pngs(
        [setting.mask_path(data, row, k) for k in range(1, count + 1)],
        read_mask_png,
        size,
        "mask",
        base,
        resized,
    )
    masks = np.zeros((AVS_NUM_SEGMENTS, size, size), dtype=np.uint8)
    masks[:count] = read
    return masks


def _wave(waves: dict[str, np.ndarray], row: MetaRow, wave_file: Path, base: Path) -> np.ndarray:
    key = f"{row.name}.wav"
    rel = wave_file.relative_to(base) if wave_file.is_relative_to(base) else wave_file
    if key not in waves:
        raise DecodeError(f"no audio: {key} is not in {rel}")
    try:
        wave = np.asarray(waves[key], dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise DecodeError(f"corrupt audio: {key} in {rel} is not a waveform") from None
    expected = AVS_NUM_SEGMENTS * AVS_SAMPLE_RATE
    if wave.shape[0] != expected:
        raise DecodeError(f"corrupt audio: {key} in {rel} has {wave.shape[0]} samples, expected {expected}")
    if not np.isfinite(wave).all():
        raise DecodeError(f"corrupt audio: {key} in {rel} has non-finite samples")
    return wave


def _no_compute(path: str) -> np.ndarray:  # the masks spec is only checked, never computed
    raise DecodeError("masks are read from gt_masks")


def _masks_spec(size: int) -> ExtraArraySpec:
    return ExtraArraySpec("masks", (AVS_NUM_SEGMENTS, size, size), _no_compute, dtype="uint8")


# --------------------------------------------------------------------------- prepare


def prepare_avsbench(
    root: str | Path,
    out: str | Path,
    setting: str,
    source: str = "frames",
    videos: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    console: Console | None = None,
    strict: bool = False,
) -> PrepareSummary:
    """Read AVSBench ``setting`` ("s4" or "ms3") under ``root`` into a prepared cache at ``out``.

    ``source`` "frames" reads the published PNG frames and ``AVS.npy`` waves; "videos" decodes the
    raw clips under ``videos`` (default ``<root>/<setting data>/raw_videos``). Resumable (videos
    already in the cache are kept); every file is written atomically; a video with a missing or
    unreadable frame, mask or waveform is skipped and listed (summary, ``manifest.json``,
    ``prepare_report.json``); a malformed CSV line is reported and skipped (``strict``: stops).
    Raises ``ValueError`` when the CSV is missing or a split ends up without videos.
    """
    started = time.monotonic()
    spec = get_setting(setting)
    if source not in ("frames", "videos"):
        raise ValueError(f"--source must be 'frames' or 'videos', got {source!r}")
    base = setting_root(root, spec)
    data = base / spec.data
    csv_path = base / spec.csv
    out = Path(out)
    problems = LineProblems(strict=strict)
    rows = read_meta(csv_path, spec, problems)
    size = AVS_IMAGE_SIZE
    categories: list[str] = []
    for row in rows:
        if spec.by_category and row.category not in categories:
            categories.append(row.category)

    out.mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    remove_stale_temp_files(out, ["masks"])
    extras = [_masks_spec(size)]
    failed: dict[str, str] = {}
    resized: dict[str, tuple[str, int, int]] = {}  # video -> its first PNG of another size
    decoded = reused = 0
    done = {
        row.name
        for row in rows
        if cached_video_ok(out, row.name, AVS_NUM_SEGMENTS, size, AVS_SAMPLE_RATE, extras)
    }
    reused = len(done)
    todo = [row for row in rows if row.name not in done]
    if source == "frames":
        decoded = _prepare_from_frames(spec, data, todo, out, size, failed, base, progress, console, resized)
    else:
        video_dir = Path(videos) if videos is not None else data / "raw_videos"
        if not video_dir.is_dir():
            raise ValueError(f"{video_dir}: raw video folder not found (give --video-dir DIR)")
        decoded, more_reused = _prepare_from_videos(
            spec, data, todo, video_dir, out, size, workers, failed, base, progress, console, resized
        )
        reused += more_reused
    details = {
        "setting": spec.name.upper(),
        "source": "PNG frames + AVS.npy waves" if source == "frames" else "raw videos (decord)",
    }
    resized = {name: odd for name, odd in resized.items() if name not in failed}
    if resized:
        name, (path, w, h) = next(iter(resized.items()))
        rel = Path(path).relative_to(base) if Path(path).is_relative_to(base) else path
        note = f"{len(resized)} video(s), e.g. {name}: {rel} is {w}x{h}"
        details["PNGs resized"] = note
        log.warning(
            "%s with frames or masks of another size than %dx%d (%s); resized to %dx%d%s",
            note.split(",")[0],
            size,
            size,
            note.split(", ", 1)[1],
            size,
            size,
            ", stretched" if w != h else "",
        )

    usable = [row for row in rows if row.name not in failed]
    split_of = {row.name: row.split for row in rows}
    skipped = [SkippedVideo(name, reason, [split_of[name]]) for name, reason in failed.items()]
    summary = PrepareSummary(
        out=out,
        split_samples={split: sum(1 for r in rows if r.split == split) for split in SPLITS},
        split_usable={split: sum(1 for r in usable if r.split == split) for split in SPLITS},
        videos=len(rows),
        decoded=decoded,
        reused=reused,
        skipped=skipped,
        seconds=time.monotonic() - started,
        details=details,
        bad_lines=list(problems.messages),
    )
    write_prepare_report(out, base, summary, spec.dataset)
    raise_on_empty_split(summary, {split: csv_path for split in SPLITS}, f"files expected under {data}")
    samples = []
    for row in usable:
        count = spec.masks_read(row.split)
        targets: dict[str, Any] = {"mask_valid": [1] * count + [0] * (AVS_NUM_SEGMENTS - count)}
        if spec.by_category:
            targets["category"] = [categories.index(row.category)]
        samples.append({"id": row.name, "video_id": row.name, "split": row.split, "targets": targets})
    manifest = build_manifest(
        dataset=spec.dataset,
        num_segments=AVS_NUM_SEGMENTS,
        image_size=size,
        sample_rate=AVS_SAMPLE_RATE,
        class_names=categories,
        background_index=None,
        samples=samples,
        split_names=list(SPLITS),
        skipped=[asdict(s) for s in skipped],
        created_by=f"dgsct {__version__} prepare avs --setting {spec.name}",
        extra_arrays=["masks"],
        info={"setting": spec.name, "source": source, "masks": "greyscale > 0"},
    )
    write_manifest(out / MANIFEST_NAME, manifest)
    return summary


def _progress(progress: bool, console: Console | None, total: int, label: str):
    if not (progress and total):
        return None, None
    bar = make_progress(console)
    return bar, bar.add_task(label, total=total)


def _prepare_from_frames(
    spec: AVSSetting,
    data: Path,
    rows: list[MetaRow],
    out: Path,
    size: int,
    failed: dict[str, str],
    base: Path,
    progress: bool,
    console: Console | None,
    resized: dict[str, tuple[str, int, int]] | None = None,
) -> int:
    """PNG frames, PNG masks and ``AVS.npy`` waves of ``rows`` into the cache; returns the count
    written. Each wave file is read once (rows are taken file by file); a video whose PNGs are not
    ``size`` square is noted in ``resized`` (its first such file and size)."""
    by_wave: dict[Path, list[MetaRow]] = {}
    for row in rows:
        by_wave.setdefault(spec.wave_path(data, row), []).append(row)
    bar, job = _progress(progress, console, len(rows), f"reading AVSBench {spec.name.upper()}")
    written = 0
    with bar if bar is not None else nullcontext():
        for wave_file, group in by_wave.items():
            waves: dict[str, np.ndarray] | None = None
            wave_problem = None
            rel = wave_file.relative_to(base) if wave_file.is_relative_to(base) else wave_file
            if not wave_file.is_file():
                wave_problem = f"no audio: missing {rel}"
            else:
                try:
                    waves = load_wave_dict(wave_file)
                except ValueError as exc:
                    wave_problem = f"corrupt audio file {rel}: {str(exc).split(': ', 1)[-1]}"[:200]
            for row in group:
                odd: list[tuple[str, int, int]] = []
                try:
                    if wave_problem is not None:
                        raise DecodeError(wave_problem)
                    wave = _wave(waves, row, wave_file, base)
                    frames = _read_pngs(
                        [spec.frame_path(data, row, k) for k in range(1, AVS_NUM_SEGMENTS + 1)],
                        read_frame_png,
                        size,
                        "frame",
                        base,
                        odd,
                    )
                    masks = _masks_array(spec, data, row, size, base, odd)
                    if odd and resized is not None:
                        resized[row.name] = odd[0]
                except DecodeError as exc:
                    failed[row.name] = exc.reason
                else:
                    # Masks first, audio last: an interrupted write leaves the video incomplete (redone).
                    atomic_save_npy(array_path(out, "masks", row.name), masks)
                    atomic_save_npy(array_path(out, "frames", row.name), frames)
                    atomic_save_npy(array_path(out, "audio", row.name), wave)
                    written += 1
                if bar is not None:
                    bar.advance(job)
    return written


def _prepare_from_videos(
    spec: AVSSetting,
    data: Path,
    rows: list[MetaRow],
    video_dir: Path,
    out: Path,
    size: int,
    workers: int,
    failed: dict[str, str],
    base: Path,
    progress: bool,
    console: Console | None,
    resized: dict[str, tuple[str, int, int]] | None = None,
) -> tuple[int, int]:
    """Frames and audio decoded from the raw clips (AVSBench's frame rule), masks from the PNGs."""
    # Masks first (cheap, and a video without them is not worth decoding).
    masks: dict[str, np.ndarray] = {}
    for row in rows:
        odd: list[tuple[str, int, int]] = []
        try:
            masks[row.name] = _masks_array(spec, data, row, size, base, odd)
            if odd and resized is not None:
                resized[row.name] = odd[0]
        except DecodeError as exc:
            failed[row.name] = exc.reason
    paths = {}
    for row in rows:
        if row.name in masks:
            candidates = spec.video_paths(video_dir, row)
            paths[row.name] = next((p for p in candidates if p.is_file()), candidates[0])
    for name, array in masks.items():
        atomic_save_npy(array_path(out, "masks", name), array)
    outcome = decode_videos_to_cache(
        paths,
        out,
        num_segments=AVS_NUM_SEGMENTS,
        image_size=size,
        sample_rate=AVS_SAMPLE_RATE,
        workers=workers,
        progress=progress,
        console=console,
        description=f"decoding AVSBench {spec.name.upper()} videos",
        frame_rule="last_of_sixteen",
    )
    failed.update(outcome.failed)
    return len(outcome.decoded), len(outcome.reused)


# --------------------------------------------------------------------------- synthetic

MARKER = ".dgsct-synthetic"
_SYNTH_CATEGORIES = ("dog_barking", "race_car", "playing_violin")
# Bright, saturated discs on darker backgrounds (20-110): a tiny model finds them within a few epochs.
_COLOURS = np.array([[245, 205, 40], [245, 125, 40], [235, 70, 170], [90, 220, 245]], dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient (compresses well as PNG)."""
    a, b = rng.uniform(20, 110, 3), rng.uniform(20, 110, 3)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ramp = (t[:, None] + t[None, :]) / 2 if rng.random() < 0.5 else np.repeat(t[None, :], size, 0)
    return a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]


def _disc(size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def _tone(freq: float, rng: np.random.Generator, rate: int = AVS_SAMPLE_RATE) -> np.ndarray:
    t = np.arange(rate, dtype=np.float64) / rate
    return 0.3 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))


def tone_for_position(x: float, size: int = AVS_IMAGE_SIZE) -> float:
    """The synthetic sound's pitch follows the sounding disc across the frame (300 Hz at the left
    edge to 2,700 Hz at the right)."""
    return 300.0 + 2400.0 * x / size


def write_synthetic_avsbench(
    root: str | Path, setting: str = "s4", num_videos: int = 24, seed: int = 0
) -> Path:
    """Write a small learnable AVSBench-format dataset (CSV, PNG frames and masks, ``AVS.npy``)
    under ``root/<Single-source|Multi-sources>``.

    Each second shows a coloured disc that sounds: its tone's pitch follows the disc's horizontal
    position, and the mask is the disc. MS3 videos have two discs, each heard or not per second
    (the mask is the union of the sounding ones; a silent disc is not drawn). A grey square that
    never sounds appears in some frames; a few later seconds are silent and empty. About 70/15/15
    train/val/test, every split non-empty. Deterministic for a ``seed``. Refuses to overwrite a
    layout it did not write.
    """
    from PIL import Image

    spec = get_setting(setting)
    if num_videos < 3:
        raise ValueError(
            f"num_videos must be >= 3 so that train, val and test each get a video, got {num_videos}"
        )
    base = Path(root) / spec.folder
    if (base / spec.csv).exists() and not (Path(root) / MARKER).exists():
        raise ValueError(
            f"{base}: holds a {spec.csv} not written by dgsct's synthetic writer; refusing to overwrite"
        )
    base.mkdir(parents=True, exist_ok=True)
    (Path(root) / MARKER).write_text("written by dgsct_cli.data.avsbench.write_synthetic_avsbench\n")
    data = base / spec.data
    rng = np.random.default_rng([seed, 1 if spec.by_category else 2])
    size = AVS_IMAGE_SIZE
    n_eval = max(1, round(0.15 * num_videos))
    split_of = ["train"] * num_videos
    for i in range(n_eval):
        split_of[num_videos - 1 - i] = "test"
        split_of[num_videos - 1 - n_eval - i] = "val"
    waves: dict[Path, dict[str, np.ndarray]] = {}
    lines = []
    for i in range(num_videos):
        name = f"syn{spec.name}_{i:04d}"
        category = _SYNTH_CATEGORIES[i % len(_SYNTH_CATEGORIES)] if spec.by_category else ""
        row = MetaRow(name, category, split_of[i], 0)
        lines.append(f"{name},0,{category},{row.split}" if spec.by_category else f"{name},{row.split}")
        background = _background(rng, size)
        sources = 1 if spec.by_category else 2
        colours = rng.choice(len(_COLOURS), sources, replace=False)
        start = rng.uniform(50, size - 50, (sources, 2))
        step = rng.uniform(-18, 18, (sources, 2))
        radius = rng.uniform(22, 36, sources)
        audio = []
        for t in range(AVS_NUM_SEGMENTS):
            frame = background.copy()
            mask = np.zeros((size, size), dtype=bool)
            if rng.random() < 0.4:  # a silent distractor
                y0, x0 = rng.integers(10, size - 50, 2)
                frame[y0 : y0 + 40, x0 : x0 + 40] = 150.0
            sound = rng.normal(0, 0.01, AVS_SAMPLE_RATE)
            for s in range(sources):
                heard = t == 0 or rng.random() > (0.15 if sources == 1 else 0.3)
                if not heard:
                    continue
                cy, cx = np.clip(start[s] + t * step[s], 40, size - 40)
                disc = _disc(size, cy, cx, radius[s])
                frame[disc] = _COLOURS[colours[s]]
                mask |= disc
                sound = sound + _tone(tone_for_position(cx, size), rng)
            audio.append(sound.astype(np.float32))
            frame_path = spec.frame_path(data, row, t + 1)
            frame_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(frame_path)
            if t < spec.masks_read(row.split):
                mask_path = spec.mask_path(data, row, t + 1)
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_path)
        waves.setdefault(spec.wave_path(data, row), {})[f"{name}.wav"] = np.concatenate(audio)
    for path, entries in waves.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, np.array(entries, dtype=object), allow_pickle=True)  # the published format
        path.write_bytes(buffer.getvalue())
    header = "name,start,category,split" if spec.by_category else "video_id,split"
    (base / spec.csv).write_text("\n".join([header, *lines]) + "\n")
    return Path(root)
