"""The prepared cache shared by every dataset: per-video arrays plus one ``manifest.json``.

Layout of a cache directory::

    manifest.json            what is in the cache (see ``validate_manifest``)
    frames/<video_id>.npy    uint8   [S, H, W, 3]
    audio/<video_id>.npy     float32 [S * sample_rate]  (mono)
    <kind>/<video_id>.npy    float32, any fixed shape: one folder per name in the manifest's
                             optional ``extra_arrays`` (e.g. AVVP's ``video_st`` [S, 512])

Every file is written atomically (temp file in the same directory, then ``os.replace``), so an
interrupted ``prepare`` leaves either a complete file or none; stray temp files are removed by the
next run. Training reads the arrays memory-mapped; nothing is decoded per sample.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import Dataset

from ..atomic import TMP_PREFIX, atomic_write_bytes, atomic_write_json
from .video import DecodeError, decode_clip

__all__ = [
    "label_names",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "TMP_PREFIX",
    "DecodeOutcome",
    "ExtraArraySpec",
    "PreparedCache",
    "SegmentDataset",
    "array_path",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "build_manifest",
    "cached_video_ok",
    "decode_videos_to_cache",
    "make_progress",
    "remove_stale_temp_files",
    "validate_manifest",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD, copied so the data path does not import timm.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESERVED_ITEM_KEYS = frozenset({"frames", "audio", "index"})
# Array kinds become folder names and item keys: keep them plain identifiers.
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


# --------------------------------------------------------------------------- atomic writes


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` ``array`` to ``path`` (exact name, no ``.npy`` appended) atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def _is_numeric_nest(value: Any) -> bool:
    """A list of numbers, or a list of such lists (any depth)."""
    if not isinstance(value, list):
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or all(
        _is_numeric_nest(v) for v in value
    )


def _json_text(obj: Any, depth: int = 0) -> str:
    if isinstance(obj, list) and obj and _is_numeric_nest(obj):
        return json.dumps(obj, separators=(",", ":"))
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(obj, dict) and obj:
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_json_text(v, depth + 1)}"
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj:
        return "[\n" + ",\n".join(inner + _json_text(v, depth + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_manifest(path: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write a manifest atomically as indented JSON with every numeric list on one line.

    Plain ``indent=2`` puts each number on its own line; dense per-segment targets such as
    AVVP's ``[10][25]`` ground truth would then make a multi-megabyte file of mostly spaces.
    """
    return atomic_write_bytes(path, (_json_text(dict(manifest)) + "\n").encode("utf-8"))


def remove_stale_temp_files(directory: str | Path, extra_kinds: Iterable[str] = ()) -> int:
    """Delete temp files left in ``directory`` and its ``frames``/``audio`` (and ``extra_kinds``)
    folders by an interrupted run; returns how many were removed. Not safe while another run
    writes there."""
    removed = 0
    root = Path(directory)
    for folder in (root, root / "frames", root / "audio", *(root / k for k in extra_kinds)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


# --------------------------------------------------------------------------- per-video arrays


def array_path(cache_dir: str | Path, kind: str, video_id: str) -> Path:
    """``<cache_dir>/<kind>/<video_id>.npy`` for ``kind`` ``frames``, ``audio`` or an extra array."""
    if not _KIND_RE.fullmatch(kind) or kind == "index":
        raise ValueError(
            f"unknown array kind {kind!r} (expected 'frames', 'audio' or an extra array name "
            "made of letters, digits and '_')"
        )
    # Video ids become file names: refuse anything that could escape the folder or hide the file.
    if not video_id or "/" in video_id or "\\" in video_id or video_id.startswith(".") or "\0" in video_id:
        raise ValueError(f"video id {video_id!r} cannot be used as a file name")
    return Path(cache_dir) / kind / f"{video_id}.npy"


def _header_ok(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return tuple(arr.shape) == shape and arr.dtype == dtype


@dataclass(frozen=True)
class ExtraArraySpec:
    """An extra per-video array computed in the decoding worker, right after ``decode_clip``.

    ``compute(video_path, **options)`` must be a module-level function (workers are spawned, so
    it is pickled by reference) returning an array of ``shape``; it is stored as
    ``<kind>/<video_id>.npy`` in ``dtype``. Raising :class:`DecodeError` skips the video with that
    reason; any other exception skips it with the exception's message.
    """

    kind: str
    shape: tuple[int, ...]
    compute: Callable[..., np.ndarray]
    options: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"


def cached_video_ok(
    cache_dir: str | Path,
    video_id: str,
    num_segments: int,
    image_size: int,
    sample_rate: int,
    extras: Sequence[ExtraArraySpec] = (),
) -> bool:
    """True when every array of ``video_id`` (frames, audio and ``extras``) exists with the
    expected shape and dtype.

    Only the .npy headers are read, so checking thousands of videos on resume is quick; a file
    from a run with other settings (image size, sample rate) counts as absent.
    """
    frames = array_path(cache_dir, "frames", video_id)
    audio = array_path(cache_dir, "audio", video_id)
    return (
        _header_ok(frames, (num_segments, image_size, image_size, 3), np.dtype(np.uint8))
        and _header_ok(audio, (num_segments * sample_rate,), np.dtype(np.float32))
        and all(
            _header_ok(array_path(cache_dir, s.kind, video_id), tuple(s.shape), np.dtype(s.dtype))
            for s in extras
        )
    )


@dataclass(frozen=True)
class _DecodeJob:
    video_id: str
    path: str
    out: str
    num_segments: int
    image_size: int
    sample_rate: int
    num_threads: int
    extras: tuple[ExtraArraySpec, ...] = ()


def _init_worker() -> None:
    # One intra-op thread per worker process: the pool already uses every core.
    torch.set_num_threads(1)
    # decord/FFmpeg print C++ log lines for every bad file, which would shred the progress bar;
    # the reasons are collected per video and reported, so workers write stderr to /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _decode_job(job: _DecodeJob) -> tuple[str, str | None]:
    """Decode one video and store its arrays; returns ``(video_id, failure reason or None)``.

    Top level (picklable) so it runs under the ``spawn`` start method. Write errors (disk full,
    permissions) propagate: they are not a property of the video.
    """
    try:
        frames, audio = decode_clip(
            job.path,
            num_segments=job.num_segments,
            image_size=job.image_size,
            sample_rate=job.sample_rate,
            num_threads=job.num_threads,
        )
    except DecodeError as exc:
        return job.video_id, exc.reason
    except Exception as exc:  # a decoder bug on one file must not stop a 4,000-video run
        return job.video_id, f"corrupt: {type(exc).__name__}: {exc}"[:200]
    extra_arrays: dict[str, np.ndarray] = {}
    for spec in job.extras:
        try:
            value = np.asarray(spec.compute(job.path, **dict(spec.options)), dtype=spec.dtype)
        except DecodeError as exc:
            return job.video_id, f"{spec.kind}: {exc.reason}"[:200]
        except Exception as exc:
            return job.video_id, f"{spec.kind} failed: {type(exc).__name__}: {exc}"[:200]
        if value.shape != tuple(spec.shape):
            return job.video_id, f"{spec.kind}: got shape {value.shape}, expected {tuple(spec.shape)}"
        extra_arrays[spec.kind] = value
    # Extras first, frames/audio last: an interrupted write leaves the video incomplete (redone).
    for kind, value in extra_arrays.items():
        atomic_save_npy(array_path(job.out, kind, job.video_id), value)
    atomic_save_npy(array_path(job.out, "frames", job.video_id), frames)
    atomic_save_npy(array_path(job.out, "audio", job.video_id), audio)
    return job.video_id, None


@dataclass
class DecodeOutcome:
    """What ``decode_videos_to_cache`` did, each list in the order the videos were given."""

    decoded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # video id -> reason


def make_progress(console: Console | None = None) -> Progress:
    """A progress bar with description, bar, done/total, elapsed time and ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def _run_pool(
    queue: deque[_DecodeJob], workers: int, on_result: Callable[[str, str | None], None]
) -> list[_DecodeJob]:
    """Run ``queue`` in a fresh spawn pool; returns the jobs in flight if a worker died hard."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools: unsafe
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    inflight: dict[Future, _DecodeJob] = {}
    finished = False
    try:
        while queue or inflight:
            # Keep a short queue only, so a crash implicates few videos.
            while queue and len(inflight) < workers + 1:
                job = queue.popleft()
                inflight[pool.submit(_decode_job, job)] = job
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            crashed: list[_DecodeJob] = []
            for fut in done:
                job = inflight.pop(fut)
                try:
                    video_id, reason = fut.result()
                except BrokenProcessPool:
                    crashed.append(job)
                    continue
                on_result(video_id, reason)
            if crashed:
                crashed.extend(inflight.values())
                finished = True
                return crashed
        finished = True
        return []
    finally:
        # On Ctrl-C or a write error, do not wait for the videos still queued.
        pool.shutdown(wait=finished, cancel_futures=not finished)


def _ping() -> bool:
    return True


def _pool_can_start() -> bool:
    """Whether a spawn worker can run at all (it cannot if the calling script re-runs its work
    on import, i.e. lacks an ``if __name__ == "__main__":`` guard)."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return pool.submit(_ping).result()
    except BrokenProcessPool:
        return False
    finally:
        pool.shutdown(wait=True)


def _run_parallel(
    jobs: Sequence[_DecodeJob], workers: int, on_result: Callable[[str, str | None], None]
) -> None:
    queue = deque(jobs)
    while queue:
        suspects = _run_pool(queue, min(workers, len(queue)), on_result)
        if suspects and not _pool_can_start():
            # Not the videos' fault: blaming them would mark every video corrupt.
            raise RuntimeError(
                "decoding worker processes died on start-up; if you call this from a script, put the "
                "call under `if __name__ == '__main__':` (spawn start method), or use workers=1"
            )
        for job in suspects:
            # A worker died (decoder segfault): rerun each suspect alone to find the culprit.
            if _run_pool(deque([job]), 1, on_result):
                on_result(job.video_id, "corrupt: the decoder crashed on this file")


def decode_videos_to_cache(
    videos: Mapping[str, str | Path],
    out: str | Path,
    *,
    num_segments: int,
    image_size: int,
    sample_rate: int,
    workers: int = 2,
    progress: bool = True,
    console: Console | None = None,
    description: str = "decoding videos",
    extras: Sequence[ExtraArraySpec] = (),
) -> DecodeOutcome:
    """Decode every video (id -> file) once into ``out``'s ``frames/`` and ``audio/``.

    Videos whose arrays already exist with the right shapes are reused (resume). With
    ``workers > 1`` decoding runs in a spawn process pool; failures are collected per video
    (``"missing"``, ``"corrupt: ..."``, ``"no audio"``), never raised. Each of ``extras`` is
    computed in the same worker call as the decoding and stored under ``<kind>/``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    extras = tuple(extras)
    for spec in extras:
        array_path(out, spec.kind, "x")  # validates the kind as a folder name
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for spec in extras:
        (out / spec.kind).mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out, [s.kind for s in extras])

    outcome = DecodeOutcome()
    jobs: list[_DecodeJob] = []
    results: dict[str, str | None] = {}
    for video_id, path in videos.items():
        if cached_video_ok(out, video_id, num_segments, image_size, sample_rate, extras):
            outcome.reused.append(video_id)
        elif not Path(path).is_file():
            results[video_id] = "missing"  # no need to start a worker to find that out
        else:
            threads = 1 if workers > 1 else 0
            jobs.append(
                _DecodeJob(
                    video_id, str(path), str(out), num_segments, image_size, sample_rate, threads, extras
                )
            )

    # No bar when everything is reused.
    bar = make_progress(console) if jobs and progress else None
    if bar is not None:
        label = description + (f" ({len(outcome.reused)} reused)" if outcome.reused else "")
        task = bar.add_task(label, total=len(jobs))

    def on_result(video_id: str, reason: str | None) -> None:
        results[video_id] = reason
        if bar is not None:
            bar.advance(task)

    with bar if bar is not None else nullcontext():
        if workers > 1 and len(jobs) > 1:
            _run_parallel(jobs, workers, on_result)
        else:
            for job in jobs:
                on_result(*_decode_job(job))

    for video_id in videos:
        if video_id in results:
            reason = results[video_id]
            if reason is None:
                outcome.decoded.append(video_id)
            else:
                outcome.failed[video_id] = reason
    return outcome


# --------------------------------------------------------------------------- manifest


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _numeric_shape(values: Any) -> tuple[int, ...] | None:
    """Shape of a list of finite numbers or of a rectangular nest of them; None otherwise."""
    if not isinstance(values, list):
        return None
    if all(_is_number(v) for v in values):
        return (len(values),)
    inner = {_numeric_shape(v) for v in values}
    if len(inner) != 1 or None in inner:
        return None  # ragged, or something that is not a number
    return (len(values), *inner.pop())


def validate_manifest(manifest: Any, where: str = MANIFEST_NAME) -> dict[str, Any]:
    """Check a manifest's structure; raises ``ValueError('<where>: <problem>')``."""
    if not isinstance(manifest, dict):
        raise _fail(where, "expected a JSON object at the top level")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(
            where,
            f"format_version {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION});"
            " re-run 'dgsct prepare'",
        )
    for key in ("dataset", "created_by"):
        if not isinstance(manifest.get(key), str):
            raise _fail(where, f"'{key}' must be a string")
    for key in ("num_segments", "image_size", "sample_rate"):
        if not _is_int(manifest.get(key)) or manifest[key] <= 0:
            raise _fail(where, f"'{key}' must be a positive integer, got {manifest.get(key)!r}")
    names = manifest.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(where, "'class_names' must be a list of strings")
    bg = manifest.get("background_index", "absent")
    if bg is not None and not _is_int(bg):
        raise _fail(where, f"'background_index' must be an integer or null, got {bg!r}")
    # Optional: caches written before extra arrays existed (AVE) simply have none.
    extra = manifest.get("extra_arrays", [])
    if (
        not isinstance(extra, list)
        or not all(isinstance(k, str) and _KIND_RE.fullmatch(k) for k in extra)
        or len(set(extra)) != len(extra)
    ):
        raise _fail(where, f"'extra_arrays' must be a list of distinct array names, got {extra!r}")
    if set(extra) & _RESERVED_ITEM_KEYS:
        raise _fail(where, f"'extra_arrays' may not use the reserved names {sorted(_RESERVED_ITEM_KEYS)}")
    taken = _RESERVED_ITEM_KEYS | set(extra)

    samples = manifest.get("samples")
    if not isinstance(samples, list):
        raise _fail(where, "'samples' must be a list")
    seen: set[str] = set()
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise _fail(where, f"samples[{i}] must be an object")
        for key in ("id", "video_id", "split"):
            if not isinstance(sample.get(key), str) or not sample[key]:
                raise _fail(where, f"samples[{i}] needs a non-empty string '{key}'")
        if sample["id"] in seen:
            raise _fail(where, f"samples[{i}]: duplicate sample id {sample['id']!r}")
        seen.add(sample["id"])
        targets = sample.get("targets")
        if not isinstance(targets, dict):
            raise _fail(where, f"samples[{i}] needs a 'targets' object")
        for name, values in targets.items():
            if name in taken:
                raise _fail(where, f"samples[{i}]: target name {name!r} is reserved")
            if _numeric_shape(values) is None:
                raise _fail(
                    where,
                    f"samples[{i}]: target {name!r} must be a list of numbers "
                    "or a rectangular nested list of numbers",
                )

    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise _fail(where, "'splits' must be an object (split name -> sample indices)")
    for split, indices in splits.items():
        if not isinstance(indices, list) or not all(_is_int(j) and 0 <= j < len(samples) for j in indices):
            raise _fail(where, f"splits[{split!r}] must list sample indices in 0..{len(samples) - 1}")
    skipped = manifest.get("skipped")
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and isinstance(s.get("video_id"), str) and isinstance(s.get("reason"), str)
        for s in skipped
    ):
        raise _fail(where, "'skipped' must be a list of {video_id, reason, splits} objects")
    return manifest


def build_manifest(
    *,
    dataset: str,
    num_segments: int,
    image_size: int,
    sample_rate: int,
    class_names: Sequence[str],
    background_index: int | None,
    samples: Iterable[Mapping[str, Any]],
    split_names: Sequence[str],
    skipped: Iterable[Mapping[str, Any]],
    created_by: str,
    extra_arrays: Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble and validate a manifest; ``samples`` are the usable ones only, and ``splits``
    is derived from each sample's ``split`` (every name in ``split_names`` is present).

    ``extra_arrays`` names per-video arrays stored as ``<kind>/<video_id>.npy`` (returned by
    ``SegmentDataset`` under that name); ``info`` is free-form provenance. Both keys are left out
    when empty, so manifests without them read exactly as before.
    """
    sample_list = [dict(s) for s in samples]
    splits: dict[str, list[int]] = {name: [] for name in split_names}
    for i, sample in enumerate(sample_list):
        if sample["split"] not in splits:
            raise ValueError(
                f"sample {sample['id']!r} has split {sample['split']!r} not in {list(split_names)}"
            )
        splits[sample["split"]].append(i)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "num_segments": num_segments,
        "image_size": image_size,
        "sample_rate": sample_rate,
        "class_names": list(class_names),
        "background_index": background_index,
        "samples": sample_list,
        "splits": splits,
        "skipped": [dict(s) for s in skipped],
        "created_by": created_by,
    }
    if extra_arrays:
        manifest["extra_arrays"] = list(extra_arrays)
    if info:
        manifest["info"] = dict(info)
    return validate_manifest(manifest, "manifest")


# --------------------------------------------------------------------------- reading


def label_names(class_names: Sequence[str], background_index: int | None) -> list[str]:
    """Names of the segment labels: the classes, then ``background`` when it is the next index."""
    extra = ["background"] if background_index is not None and background_index == len(class_names) else []
    return [*class_names, *extra]


class PreparedCache:
    """A validated prepared cache directory (read side)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ValueError(
                f"{manifest_path}: not found; run 'dgsct prepare ...' first "
                f"(e.g. 'dgsct prepare ave --root <AVE folder> --out {self.path}')"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{manifest_path}: cannot be read as JSON ({exc})") from exc
        self.manifest: dict[str, Any] = validate_manifest(manifest, str(manifest_path))

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def background_index(self) -> int | None:
        return self.manifest["background_index"]

    @property
    def num_segments(self) -> int:
        return self.manifest["num_segments"]

    @property
    def image_size(self) -> int:
        return self.manifest["image_size"]

    @property
    def sample_rate(self) -> int:
        return self.manifest["sample_rate"]

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.manifest["samples"]

    @property
    def splits(self) -> dict[str, list[int]]:
        return self.manifest["splits"]

    @property
    def extra_arrays(self) -> list[str]:
        """Names of the extra per-video arrays (``<kind>/<video_id>.npy``); empty for AVE."""
        return list(self.manifest.get("extra_arrays", []))

    def split_indices(self, split: str) -> list[int]:
        """Sample indices (into ``samples``) of ``split``."""
        if split not in self.splits:
            available = ", ".join(repr(s) for s in self.splits) or "none"
            raise ValueError(f"{self.path}: unknown split {split!r}; available splits: {available}")
        return list(self.splits[split])

    def _load(self, kind: str, video_id: str) -> np.ndarray:
        path = array_path(self.path, kind, video_id)
        if not path.is_file():
            raise ValueError(f"{path}: missing from the cache; re-run 'dgsct prepare' to restore it")
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def frames(self, video_id: str) -> np.ndarray:
        """Memory-mapped uint8 ``[S, H, W, 3]``."""
        return self._load("frames", video_id)

    def audio(self, video_id: str) -> np.ndarray:
        """Memory-mapped float32 ``[S * sample_rate]``."""
        return self._load("audio", video_id)

    def array(self, kind: str, video_id: str) -> np.ndarray:
        """Memory-mapped extra array ``kind`` (one of ``extra_arrays``) of ``video_id``."""
        if kind not in self.extra_arrays:
            listed = ", ".join(repr(k) for k in self.extra_arrays) or "none"
            raise ValueError(f"{self.path}: no extra array {kind!r} in this cache (it has: {listed})")
        return self._load(kind, video_id)


def _target_tensor(values: list) -> torch.Tensor:
    if values and isinstance(values[0], list):
        # Nested (e.g. [T][C] ground truth): same dtype rule over all leaves.
        tensor = torch.tensor(values)
        return tensor.float() if tensor.is_floating_point() else tensor.long()
    if all(_is_int(v) for v in values):
        return torch.tensor(values, dtype=torch.long)
    return torch.tensor(values, dtype=torch.float32)


class SegmentDataset(Dataset):
    """One item per sample of ``split``: normalised frames, tiled audio segments and targets.

    Item keys: ``frames`` float32 ``[S, 3, H, W]``; ``audio`` float32
    ``[S, sample_rate * segment_tiling]`` (each 1-s segment repeated back to back, the release's
    tiling); ``index`` (position in this dataset; ``sample_ids[index]`` names it); one float32
    tensor per name in the manifest's ``extra_arrays`` (e.g. ``video_st`` ``[S, 512]``); and one
    tensor per target of the sample, shaped like its (possibly nested) list (long when all values
    are ints, else float32).
    """

    def __init__(
        self,
        cache: PreparedCache,
        split: str,
        image_size: int | None = None,
        segment_tiling: int = 10,
        sample_rate: int | None = None,
    ) -> None:
        if segment_tiling < 1:
            raise ValueError(f"segment_tiling must be >= 1, got {segment_tiling}")
        self.cache = cache
        self.split = split
        self.manifest_indices = cache.split_indices(split)
        self.samples = [cache.samples[i] for i in self.manifest_indices]
        self.sample_ids: list[str] = [s["id"] for s in self.samples]
        self.class_names = cache.class_names
        self.background_index = cache.background_index
        self.num_segments = cache.num_segments
        self.image_size = image_size or cache.image_size
        self.sample_rate = sample_rate or cache.sample_rate
        self.segment_tiling = segment_tiling
        self.extra_arrays = cache.extra_arrays
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _frames(self, video_id: str) -> torch.Tensor:
        # np.array copies the memmapped slice, so the tensor owns writable memory; .float() makes
        # the one float copy and the arithmetic below works in place on it.
        x = torch.from_numpy(np.array(self.cache.frames(video_id))).permute(0, 3, 1, 2).float().div_(255.0)
        if self.image_size != self.cache.image_size:
            # The release resized float tensors bicubically, no antialias and no clamp.
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bicubic",
                align_corners=False,
                antialias=False,
            )
        return x.sub_(self._mean).div_(self._std)

    def _audio(self, video_id: str) -> torch.Tensor:
        wave = torch.from_numpy(np.array(self.cache.audio(video_id), dtype=np.float32))
        if self.sample_rate != self.cache.sample_rate:
            import torchaudio.functional as AF  # only needed when resampling

            wave = AF.resample(wave, self.cache.sample_rate, self.sample_rate)
        length = self.num_segments * self.sample_rate
        if wave.shape[0] < length:  # resampling can round a few samples away
            wave = F.pad(wave, (0, length - wave.shape[0]))
        segments = wave[:length].reshape(self.num_segments, self.sample_rate)
        # [a b c] -> [a b c a b c ...]: each row is its own second repeated (np.tile per row).
        return segments.repeat(1, self.segment_tiling)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        item: dict[str, Any] = {
            "frames": self._frames(sample["video_id"]),
            "audio": self._audio(sample["video_id"]),
            "index": i,
        }
        for kind in self.extra_arrays:
            item[kind] = torch.from_numpy(
                np.array(self.cache.array(kind, sample["video_id"]), dtype=np.float32)
            )
        for name, values in sample["targets"].items():
            item[name] = _target_tensor(values)
        return item
