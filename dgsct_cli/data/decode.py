"""Decoding videos once into the prepared cache, in a pool of worker processes.

Each video is decoded (decord) in a spawned worker, with any extra per-video arrays computed in the
same call; failures are collected per video, never raised; a worker that dies takes only its own
video down. Videos already in the cache with the right shapes are reused (resume).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .manifest import array_path, atomic_save_npy, frames_kind, remove_stale_temp_files
from .video import DecodeError, decode_clip_sizes

__all__ = [
    "DecodeOutcome",
    "ExtraArraySpec",
    "cached_video_ok",
    "decode_videos_to_cache",
    "frames_kind",
    "make_progress",
]


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
    extra_sizes: Sequence[int] = (),
) -> bool:
    """True when every array of ``video_id`` (frames, audio, ``extras`` and the frames at
    ``extra_sizes``, ``frames_<size>``) exists with the expected shape and dtype.

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
        and all(
            _header_ok(
                array_path(cache_dir, frames_kind(size), video_id),
                (num_segments, size, size, 3),
                np.dtype(np.uint8),
            )
            for size in extra_sizes
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
    frame_rule: str = "second_centres"
    extra_sizes: tuple[int, ...] = ()


def _exit_with_parent() -> None:
    """Ask Linux to end this worker when its parent dies (a killed ``prepare`` leaves no workers
    blocked on their pipe)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _init_worker() -> None:
    _exit_with_parent()
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
        frame_sets, audio = decode_clip_sizes(
            job.path,
            (job.image_size, *job.extra_sizes),
            num_segments=job.num_segments,
            sample_rate=job.sample_rate,
            num_threads=job.num_threads,
            frame_rule=job.frame_rule,
        )
        frames = frame_sets[0]
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
    for size, value in zip(job.extra_sizes, frame_sets[1:]):
        atomic_save_npy(array_path(job.out, frames_kind(size), job.video_id), value)
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


def read_in_threads(
    video_ids: Sequence[str],
    read_one: Callable[[str], str | None],
    workers: int,
    description: str,
    progress: bool,
    console: Console | None,
) -> tuple[list[str], dict[str, str]]:
    """(decoded, failed) of ``read_one`` over ``video_ids`` in a thread pool (for readers that spend
    their time in C: JPEG/PNG decoding, file copies), with one progress bar. ``read_one`` returns
    None when a video was written, else the reason it was not."""
    decoded: list[str] = []
    failed: dict[str, str] = {}
    bar = make_progress(console) if video_ids and progress else None
    with bar if bar is not None else nullcontext(), ThreadPoolExecutor(max_workers=workers) as pool:
        job = bar.add_task(description, total=len(video_ids)) if bar is not None else None
        for vid, reason in zip(video_ids, pool.map(read_one, video_ids)):
            if reason is None:
                decoded.append(vid)
            else:
                failed[vid] = reason
            if bar is not None:
                bar.advance(job)
    return decoded, failed


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
    frame_rule: str = "second_centres",
    extra_sizes: Sequence[int] = (),
) -> DecodeOutcome:
    """Decode every video (id -> file) once into ``out``'s ``frames/`` and ``audio/``.

    Videos whose arrays already exist with the right shapes are reused (resume). With
    ``workers > 1`` decoding runs in a spawn process pool; ``frame_rule`` names the rule (in
    ``video.FRAME_RULES``) that picks each segment's frame; failures are collected per video
    (``"missing"``, ``"corrupt: ..."``, ``"no audio"``), never raised. Each of ``extras`` is
    computed in the same worker call as the decoding and stored under ``<kind>/``; the frames
    are also stored at each of ``extra_sizes`` (``frames_<size>/``), resized from the same decode.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    extras = tuple(extras)
    extra_sizes = tuple(s for s in dict.fromkeys(extra_sizes) if s != image_size)
    for spec in extras:
        array_path(out, spec.kind, "x")  # validates the kind as a folder name
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for spec in extras:
        (out / spec.kind).mkdir(parents=True, exist_ok=True)
    for size in extra_sizes:
        (out / frames_kind(size)).mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out, [*(s.kind for s in extras), *map(frames_kind, extra_sizes)])

    outcome = DecodeOutcome()
    jobs: list[_DecodeJob] = []
    results: dict[str, str | None] = {}
    for video_id, path in videos.items():
        if cached_video_ok(out, video_id, num_segments, image_size, sample_rate, extras, extra_sizes):
            outcome.reused.append(video_id)
        elif not Path(path).is_file():
            results[video_id] = "missing"  # no need to start a worker to find that out
        else:
            threads = 1 if workers > 1 else 0
            jobs.append(
                _DecodeJob(
                    video_id,
                    str(path),
                    str(out),
                    num_segments,
                    image_size,
                    sample_rate,
                    threads,
                    extras,
                    frame_rule,
                    extra_sizes,
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
