"""Decode one clip into per-second frames and a fixed-length mono waveform (decord).

The layout matches the release's data pipeline (AVE/dataloader.py:150-180): ``num_segments`` frames,
one per second, resized bicubically (no antialias) to ``image_size`` squared, and
``num_segments`` seconds of mono audio at ``sample_rate``; a short clip's audio is tiled.
"""

from __future__ import annotations

import fractions
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_output

__all__ = [
    "FRAME_RULES",
    "ClipWindow",
    "DecodeError",
    "decode_clip",
    "decode_clip_sizes",
    "decode_windows",
    "read_frames",
    "frame_indices",
    "linspace_1fps",
    "resize_frames",
    "tile_audio",
    "write_mp4",
]


class DecodeError(ValueError):
    """A clip that cannot be used; ``reason`` is short enough for a report table.

    Reasons: ``"missing"``, ``"corrupt: <message>"`` or ``"no audio"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# decord prefixes its messages with "[hh:mm:ss] /path/to/file.cc:123: "; drop that noise.
_DECORD_PREFIX = re.compile(r"^\[[0-9:]+\]\s+\S+:\d+:\s*")


def _short_message(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = next((line for line in text.splitlines() if line.strip()), text)
    first = _DECORD_PREFIX.sub("", first.strip())
    return first if len(first) <= limit else first[: limit - 3] + "..."


def frame_indices(num_frames: int, fps: float, num_segments: int) -> np.ndarray:
    """Index of the frame nearest the middle of each second (int64 ``[num_segments]``).

    A clip shorter than ``num_segments`` seconds (or with an unusable fps) gets indices spread
    evenly over the frames it has, so every segment still gets a frame.
    """
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    if fps > 0 and math.isfinite(fps) and num_frames / fps >= num_segments:
        # Round half up: "nearest" with a deterministic tie rule (Python's round() is banker's).
        mids = np.floor((np.arange(num_segments) + 0.5) * fps + 0.5).astype(np.int64)
        return np.minimum(mids, num_frames - 1)
    return np.round(np.linspace(0, num_frames - 1, num_segments)).astype(np.int64)


def second_centres(num_frames: int, fps: float, num_segments: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The default frame rule: the frame nearest the middle of each second; the audio is the
    clip's first ``num_segments`` seconds (``None``: no per-segment audio windows)."""
    return frame_indices(num_frames, fps, num_segments), None


def last_of_sixteen(num_frames: int, fps: float, num_segments: int) -> tuple[np.ndarray, np.ndarray | None]:
    """AVSBench's rule (release AVS/preprocess_scripts/preprocess_s4.py:24-29,55-64): each second is
    sampled 16 times and the last sample kept, i.e. frame ``int(l*F + 15/16*F)`` of second ``l``
    with ``F = round(fps)``, clamped to the last frame; the audio is the clip's first seconds."""
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    if not (fps > 0 and math.isfinite(fps)):
        return frame_indices(num_frames, fps, num_segments), None
    rate = int(round(fps))
    picks = [int(second * rate + (15 * 1.0 / 16) * rate) for second in range(num_segments)]
    return np.minimum(np.array(picks, dtype=np.int64), num_frames - 1), None


def linspace_1fps(num_frames: int, fps: float, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """MUSIC-AVQA (AVQA): the release reads frames ``linspace(1, N, num_segments)`` (truncated to
    integers) of a 1-fps frame sequence ``%08d.jpg`` (AVQA/net_grd_avst/dataloader_avst.py:183-190).

    We take the 1-fps sequence to be one frame per whole second of the clip (N = whole seconds,
    at least 1), frame k (1-based) being the frame nearest the middle of second k; each segment's
    1-s audio window is centred on its frame. The release's own extraction and audio cut are not
    published, so this is our reading, not a copy.
    """
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    if not (fps > 0 and math.isfinite(fps)):
        fps = num_frames / num_segments  # unusable rate: spread the frames over num_segments seconds
    seconds = max(int(num_frames / fps), 1)
    picked = np.linspace(1, seconds, num_segments).astype(np.int64)  # 1-based, truncated
    centres = picked - 0.5  # seconds
    indices = np.minimum(np.floor(centres * fps + 0.5).astype(np.int64), num_frames - 1)
    return indices, centres - 0.5


# Frame rules by name: ``rule(num_frames, fps, num_segments) -> (frame indices [S], audio window
# starts in seconds [S] or None)``. A dataset whose release picks its frames another way adds a
# module-level function here (workers are spawned, so rules are looked up by name).
FRAME_RULES = {
    "second_centres": second_centres,
    "last_of_sixteen": last_of_sixteen,
    "linspace_1fps": linspace_1fps,
}


def resize_frames(frames: np.ndarray, image_size: int) -> np.ndarray:
    """Bicubic resize of uint8 ``[S, H, W, 3]`` frames to ``[S, image_size, image_size, 3]``.

    Resizes float values without antialiasing (what the release did), then rounds and clamps
    back to uint8 so the cache stays compact.
    """
    if frames.shape[1] == image_size and frames.shape[2] == image_size:
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def tile_audio(wave: np.ndarray, length: int, dtype=np.float32) -> np.ndarray:
    """Cut ``wave`` to ``length`` samples, repeating it first when it is shorter."""
    if wave.size == 0:
        raise ValueError("cannot tile an empty waveform")
    if wave.shape[0] < length:
        wave = np.tile(wave, -(-length // wave.shape[0]))
    return np.ascontiguousarray(wave[:length], dtype=dtype)


def _open_failure(path: Path, exc: BaseException) -> str:
    """Why decord could not open ``path``.

    decord only says "Error reading <path>..." and logs FFmpeg's reason to stderr, so ask PyAV
    (same FFmpeg) for a message worth putting in a report.
    """
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
    except Exception as probe_exc:  # PyAV raises a family of FFmpeg error classes
        message = getattr(probe_exc, "strerror", None) or _short_message(probe_exc)
        return str(message)
    return _short_message(exc)


def read_frames(reader, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` of a decord ``VideoReader`` as uint8 RGB ``[N, H, W, 3]``.

    decord (0.6.0 and decord2 up to at least 3.4.0) returns padded rows for some frame widths:
    where the RGB row padded to FFmpeg's alignment is a whole multiple of the width (widths 16,
    24, 32, 48, 96, 144 in decord2; 16, 24, 48, 72 in decord 0.6.0), a frame comes back as
    ``[H, W, C]`` with ``C`` = padded row / width (4, 6, ...) and ``get_batch`` fails on a size
    check. The first ``3 W`` bytes of each row are the pixels (checked against PyAV's decode in
    tests/test_decord.py), so such frames are read one by one and cropped.
    """
    first = reader[indices[0]] if indices else None
    if first is None or first.shape[-1] == 3:
        return reader.get_batch(list(indices)).asnumpy()
    frames = []
    for index in indices:
        padded = reader[index].asnumpy()
        height, width, channels = padded.shape
        frames.append(padded.reshape(height, width * channels)[:, : width * 3].reshape(height, width, 3))
    return np.stack(frames)


def quiet_decord():
    """decord, with its read errors: ``(module, exception types)``.

    Imported lazily so that importing this module stays cheap and decord's global log level
    is set in whichever process does the decoding (worker processes included).
    """
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    # decord raises DECORDError for most failures and RuntimeError for some open errors.
    return decord, (decord.DECORDError, RuntimeError, ValueError, IndexError, OSError)


def decode_clip(
    path: str | Path,
    num_segments: int = 10,
    image_size: int = 192,
    sample_rate: int = 32000,
    num_threads: int = 0,
    frame_rule: str = "second_centres",
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``path`` into ``(frames, audio)`` (see :func:`decode_clip_sizes`)."""
    frames, audio = decode_clip_sizes(path, (image_size,), num_segments, sample_rate, num_threads, frame_rule)
    return frames[0], audio


def decode_clip_sizes(
    path: str | Path,
    image_sizes: tuple[int, ...],
    num_segments: int = 10,
    sample_rate: int = 32000,
    num_threads: int = 0,
    frame_rule: str = "second_centres",
) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode ``path`` once into ``([frames at each of image_sizes], audio)``: each frame set is
    resized from the decoded frames (not from another set).

    Returns frames uint8 ``[num_segments, size, size, 3]`` per size and audio float32
    ``[num_segments * sample_rate]`` (mono). ``frame_rule`` names the rule in
    :data:`FRAME_RULES` that picks the frames (and, if it says so, 1-s audio windows per
    segment). ``num_threads`` is passed to decord's video reader (0 = decord's default). Raises
    :class:`DecodeError` for a missing file, a video that decord cannot open or decode, or a clip
    without usable audio.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError("missing")
    decord, errors = quiet_decord()

    try:
        reader = decord.VideoReader(str(path), num_threads=num_threads)
    except errors as exc:
        raise DecodeError(f"corrupt: {_open_failure(path, exc)}") from exc
    try:
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
        indices, windows = FRAME_RULES[frame_rule](num_frames, fps, num_segments)
        frames = read_frames(reader, indices.tolist())
        del reader
    except errors as exc:
        raise DecodeError(f"corrupt: {_short_message(exc)}") from exc
    if frames.ndim != 4 or frames.shape[0] != num_segments or frames.shape[-1] != 3:
        raise DecodeError(f"corrupt: unexpected frame batch shape {tuple(frames.shape)}")
    frames = frames.astype(np.uint8, copy=False)
    frame_sets = [resize_frames(frames, size) for size in image_sizes]
    return frame_sets, _segment_audio(_read_wave(path, sample_rate), windows, num_segments, sample_rate)


def _read_wave(path: Path, sample_rate: int) -> np.ndarray:
    """The clip's whole mono audio at ``sample_rate`` (float32); :class:`DecodeError` when it has
    none or it is not finite."""
    decord, errors = quiet_decord()
    try:
        audio_reader = decord.AudioReader(str(path), sample_rate=sample_rate, mono=True)
        wave = np.asarray(audio_reader[:].asnumpy(), dtype=np.float32).reshape(-1)
        del audio_reader
    except errors as exc:
        raise DecodeError("no audio") from exc
    if wave.size == 0:
        raise DecodeError("no audio")
    if not np.isfinite(wave).all():
        raise DecodeError("corrupt: non-finite audio samples")
    return wave


def _segment_audio(
    wave: np.ndarray, starts: np.ndarray | None, num_segments: int, sample_rate: int, dtype=np.float32
) -> np.ndarray:
    """``[num_segments * sample_rate]`` audio: the clip's first seconds (tiled when short) when a
    frame rule gives no audio windows, else one second per segment from each start (clamped)."""
    if starts is None:
        return tile_audio(wave, num_segments * sample_rate, dtype)
    audio = []
    for start in starts:
        first = int(round(float(start) * sample_rate))
        first = min(max(first, 0), max(wave.shape[0] - sample_rate, 0))
        audio.append(tile_audio(wave[first : first + sample_rate], sample_rate, dtype))
    return np.concatenate(audio)


def _heard_spans(
    length: int, offset: float, starts: np.ndarray | None, num_segments: int, sample_rate: int
) -> list[list[tuple[float, float]]]:
    """What each segment hears, in seconds of the source clip: :func:`_segment_audio` run on the
    sample indices of a ``length``-sample piece that starts ``offset`` seconds into the clip, then
    each segment's indices as runs of consecutive samples (a tiled short clip wraps around)."""
    picked = _segment_audio(np.arange(length), starts, num_segments, sample_rate, dtype=np.int64)
    spans = []
    for seg in picked.reshape(num_segments, sample_rate):
        cuts = np.flatnonzero(np.diff(seg) != 1) + 1
        spans.append(
            [
                (
                    round(offset + int(run[0]) / sample_rate, 3),
                    round(offset + (int(run[-1]) + 1) / sample_rate, 3),
                )
                for run in np.split(seg, cuts)
            ]
        )
    return spans


@dataclass
class ClipWindow:
    """One model window of a user's clip: ``num_segments`` one-second segments from ``start``
    (seconds), frames uint8 ``[S, H, W, 3]`` (square, the model's size) and mono audio float32
    ``[S * sample_rate]``; what each segment saw in the source clip: the time of its frame
    (``frame_times``, seconds) and the stretches of audio it heard (``audio_spans``, seconds; empty
    for a clip without an audio track, which is heard as silence: ``silent``); ``aspect`` is the
    source frames' width / height (pictures undo the square resize)."""

    start: int
    frames: np.ndarray
    audio: np.ndarray
    frame_times: np.ndarray | None = None
    audio_spans: list[list[tuple[float, float]]] | None = None
    silent: bool = False
    aspect: float = 1.0


@contextmanager
def _quiet_stderr():
    """decord/FFmpeg write C++ log lines straight to file descriptor 2; the reason of a failure
    is reported to the user anyway, so hide those lines while decord opens and reads a file."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def decode_windows(
    path: str | Path,
    num_segments: int,
    image_size: int,
    sample_rate: int,
    stride: int | None = None,
    frame_rule: str = "second_centres",
    whole_clip: bool = False,
    max_windows: int | None = None,
    start_at: float | None = None,
) -> tuple[list[ClipWindow], float]:
    """A clip of any length as model windows, decoded once; returns (windows, duration in s).

    A clip of at most ``num_segments`` seconds (or any clip with ``whole_clip``, for tasks whose
    sample is a whole video) is one window, decoded as ``prepare`` decodes a clip with the same
    ``frame_rule``. A longer one is cut into windows of ``num_segments`` seconds every ``stride``
    seconds (default: back to back); the last window is aligned to the clip's end so every second
    is covered, and the rule picks each window's frames (and audio windows, if it has them) as it
    would for a clip that starts at the window's first frame. ``max_windows``: decode only the
    first windows; ``start_at``: only the window that starts at that second (clamped to the clip).
    A clip without an audio track is heard as silence (``ClipWindow.silent``). Raises
    :class:`DecodeError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError("missing")
    rule = FRAME_RULES[frame_rule]
    decord, errors = quiet_decord()
    try:
        with _quiet_stderr():
            reader = decord.VideoReader(str(path), num_threads=0)
        num_frames, fps = len(reader), float(reader.get_avg_fps())
    except errors as exc:
        raise DecodeError(f"corrupt: {_open_failure(path, exc)}") from exc
    if num_frames <= 0:
        raise DecodeError("corrupt: no frames")
    usable_fps = fps > 0 and math.isfinite(fps)
    duration = num_frames / fps if usable_fps else float(num_segments)
    seconds = max(1, int(math.floor(duration + 1e-6)))
    if whole_clip or seconds <= num_segments or not usable_fps:
        starts = [0]
    else:
        step = max(1, stride or num_segments)
        starts = list(range(0, seconds - num_segments + 1, step))
        if starts[-1] != seconds - num_segments:
            starts.append(seconds - num_segments)
    one_window = len(starts) == 1
    if start_at is not None:
        if whole_clip:
            raise ValueError("a model that reads the whole clip has no windows to start at")
        # The window that starts at start_at (clamped so that it ends by the clip's end).
        starts = [min(max(0, int(start_at)), max(0, seconds - num_segments))]
    starts = starts[:max_windows]
    with _quiet_stderr():
        wave, silent = _read_wave_or_silence(path, sample_rate, duration)
    windows = []
    try:
        for start in starts:
            if one_window:  # the whole clip, exactly as prepare reads it
                first_frame, available, clip_wave = 0, num_frames, wave
            else:
                first_frame = int(math.floor(start * fps + 0.5))
                available = num_frames - first_frame
                clip_wave = wave[start * sample_rate : (start + num_segments) * sample_rate]
            indices, audio_starts = rule(available, fps, num_segments)
            indices = np.minimum(indices + first_frame, num_frames - 1)
            audio = _segment_audio(clip_wave, audio_starts, num_segments, sample_rate)
            frames = read_frames(reader, indices.tolist()).astype(np.uint8, copy=False)
            offset = 0.0 if one_window else float(start)
            heard = (
                [[] for _ in range(num_segments)]
                if silent
                else _heard_spans(clip_wave.shape[0], offset, audio_starts, num_segments, sample_rate)
            )
            times = indices / fps if usable_fps else indices * duration / max(num_frames, 1)
            windows.append(
                ClipWindow(
                    start,
                    resize_frames(frames, image_size),
                    audio,
                    frame_times=np.round(times.astype(np.float64), 3),
                    audio_spans=heard,
                    silent=silent,
                    aspect=frames.shape[2] / max(frames.shape[1], 1),
                )
            )
    except errors as exc:
        raise DecodeError(f"corrupt: {_short_message(exc)}") from exc
    finally:
        del reader
    return windows, duration


def _read_wave_or_silence(path: Path, sample_rate: int, duration: float) -> tuple[np.ndarray, bool]:
    """(the clip's mono audio, False), or (silence as long as the clip, True) for a clip without an
    audio track (screen recordings, GIF conversions); an audio track that cannot be decoded is
    still an error."""
    try:
        return _read_wave(path, sample_rate), False
    except DecodeError as exc:
        if exc.reason != "no audio":
            raise
        if _has_audio_stream(path):
            raise DecodeError("corrupt: the audio track cannot be decoded") from exc
    length = max(1, int(math.ceil(duration * sample_rate)))
    return np.zeros(length, dtype=np.float32), True


def _has_audio_stream(path: Path) -> bool:
    """Whether FFmpeg (through PyAV) sees an audio stream in the file."""
    try:
        import av

        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except Exception:  # PyAV raises a family of FFmpeg error classes
        return False


def _video_codec() -> str:
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # not built into this FFmpeg
            continue
        return name
    raise RuntimeError("PyAV has no h264 or mpeg4 encoder")


def write_mp4(
    path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sample_rate: int = 32000
) -> None:
    """Encode uint8 RGB ``frames [N, H, W, 3]`` (even sides; + mono float ``audio`` when given)
    into ``path`` with PyAV, via a temp file so it is never partial."""
    import av

    codec = _video_codec()
    with atomic_output(path, suffix=".mp4") as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        vstream = container.add_stream(codec, rate=fps)
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        if codec != "mpeg4":
            vstream.options = {"preset": "ultrafast", "crf": "28"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
            astream.bit_rate = 48000
        for img in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is None:
            return
        chunk = 1024  # AAC frame size
        for start in range(0, audio.shape[0], chunk):
            frame = av.AudioFrame.from_ndarray(
                audio[None, start : start + chunk], format="fltp", layout="mono"
            )
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = fractions.Fraction(1, sample_rate)
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
