"""Small, learnable synthetic datasets in the real AVE and LLP (AVVP) layouts (real .mp4 files).

During an event the frames show a class colour with a class stripe pattern and the audio is a
class tone; elsewhere the picture is noisy grey and the audio is faint noise. A model that works
should separate the classes within a few epochs. ``break_dataset`` damages chosen videos so tests
can exercise the missing / corrupt / audio-less paths of ``prepare``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_output
from .ave import AVE_CATEGORIES, AVE_HEADER, AVE_NUM_SEGMENTS, AVE_SPLIT_FILES
from .avvp import AVVP_CLASSES, AVVP_EVAL_FILES, AVVP_NUM_SEGMENTS, AVVP_SPLIT_FILES, VIDEO_ST_DIM
from .video import write_mp4

__all__ = [
    "AVE_CATEGORIES",
    "LLP_MODALITIES",
    "break_dataset",
    "class_tone_hz",
    "synthetic_root",
    "write_synthetic_ave",
    "write_synthetic_llp",
]

# Marks a root written by this module, so we never overwrite a real dataset's annotations.
MARKER = ".dgsct-synthetic"
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def class_tone_hz(k: int) -> tuple[float, float]:
    """``(tone frequency, tremolo rate)`` of class ``k``.

    Tones go up by a fifth per class (440 * 1.5**k) for the first 8 classes, which stays under
    8 kHz (so 16 kHz audio works); later classes reuse those tones with a distinct tremolo.
    """
    return 440.0 * 1.5 ** (k % 8), 3.0 * (k // 8)


def _class_colour(k: int, num_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(k / max(num_classes, 1), 0.85, 0.9)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _class_pattern(k: int, size: int) -> np.ndarray:
    """A [size, size] brightness factor: stripes whose direction and period depend on the class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = 6.0 + 4.0 * (k // 4)
    coord = (xx, yy, xx + yy, xx - yy)[k % 4]  # vertical, horizontal, two diagonals
    stripes = (np.floor(coord / (period / 2)) % 2).astype(np.float32)
    return 0.55 + 0.45 * stripes


def _render_frames(seg_class: list[int], num_classes: int, size: int, fps: int, rng) -> np.ndarray:
    frames = np.empty((len(seg_class) * fps, size, size, 3), dtype=np.uint8)
    for f in range(frames.shape[0]):
        k = seg_class[f // fps]
        if k < 0:
            img = np.full((size, size, 3), 128.0, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
        else:
            img = _class_colour(k, num_classes)[None, None, :] * _class_pattern(k, size)[:, :, None]
            img = img + rng.normal(0, 5, (size, size, 3))
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _render_audio(seg_class: list[int], sample_rate: int, rng) -> np.ndarray:
    t = np.arange(sample_rate, dtype=np.float64) / sample_rate
    parts = []
    for k in seg_class:
        if k < 0:
            parts.append(rng.normal(0, 0.01, sample_rate))
            continue
        freq, tremolo = class_tone_hz(k)
        envelope = 1.0 - 0.45 * (1.0 - np.cos(2 * np.pi * tremolo * t)) if tremolo else 1.0
        parts.append(0.3 * envelope * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.02, sample_rate))
    return np.concatenate(parts).astype(np.float32)


def _video_ids(count: int, rng) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        candidate = "".join(rng.choice(_ID_ALPHABET, 11))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _assign_splits(classes: list[int], rng) -> list[str]:
    """Per-class ~60/20/20 split; then make sure val and test are not empty."""
    split_of = ["train"] * len(classes)
    by_class: dict[int, list[int]] = {}
    for i, k in enumerate(classes):
        by_class.setdefault(k, []).append(i)
    for members in by_class.values():
        members = list(rng.permutation(members))
        n = len(members)
        n_eval = max(1, round(0.2 * n)) if n >= 3 else 0
        for i in members[:n_eval]:
            split_of[i] = "val"
        for i in members[n_eval : 2 * n_eval]:
            split_of[i] = "test"
    for split in ("val", "test"):
        if split not in split_of:
            # Take a train video from the class with the most train videos.
            counts = {k: sum(1 for i in m if split_of[i] == "train") for k, m in by_class.items()}
            k = max(counts, key=lambda c: counts[c])
            if sum(counts.values()) < 2:
                continue  # cannot happen for num_videos >= 3; keeps train non-empty regardless
            split_of[next(i for i in by_class[k] if split_of[i] == "train")] = split
    return split_of


def _check_synthetic_args(
    num_classes: int,
    max_classes: int,
    num_videos: int,
    image_size: int,
    seconds: int,
    max_seconds: int,
    sample_rate: int,
) -> None:
    if not 1 <= num_classes <= max_classes:
        raise ValueError(f"num_classes must be in 1..{max_classes}, got {num_classes}")
    if num_videos < 3:
        raise ValueError(
            f"num_videos must be >= 3 so that train, val and test each get a video, got {num_videos}"
        )
    if image_size < 16 or image_size % 2:
        raise ValueError(f"image_size must be an even number >= 16 (yuv420p), got {image_size}")
    if seconds < 1 or seconds > max_seconds:
        raise ValueError(f"seconds must be in 1..{max_seconds}, got {seconds}")
    if sample_rate not in (16000, 32000):
        raise ValueError(f"sample_rate must be 16000 or 32000, got {sample_rate}")


def write_synthetic_ave(
    root: str | Path,
    num_videos: int = 24,
    num_classes: int = 4,
    image_size: int = 96,
    fps: int = 8,
    seconds: int = 10,
    sample_rate: int = 32000,
    seed: int = 0,
) -> Path:
    """Write a synthetic AVE dataset (annotations + ``AVE/<id>.mp4``) under ``root``.

    Videos cycle through the first ``num_classes`` AVE categories; each has one event 2..10 s
    long (the last video of a 6+ video set carries a second event of another class on its own
    annotation line, as some real videos do). Deterministic for a given ``seed``.
    """
    _check_synthetic_args(
        num_classes, len(AVE_CATEGORIES), num_videos, image_size, seconds, AVE_NUM_SEGMENTS, sample_rate
    )
    root = Path(root)
    if (root / "Annotations.txt").exists() and not (root / MARKER).exists():
        raise ValueError(
            f"{root}: holds an Annotations.txt not written by write_synthetic_ave; refusing to overwrite"
        )
    (root / "AVE").mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by dgsct_cli.data.synthetic.write_synthetic_ave\n")

    rng = np.random.default_rng(seed)
    ids = _video_ids(num_videos, rng)
    classes = [i % num_classes for i in range(num_videos)]
    split_of = _assign_splits(classes, rng)

    # lines[k] = (class, annotation text); one event per video, plus one two-event video.
    lines: list[tuple[int, str, str]] = []
    for i, (vid, k) in enumerate(zip(ids, classes, strict=True)):
        seg_class = [-1] * seconds
        length = int(rng.integers(2, seconds + 1)) if seconds >= 2 else seconds
        start = int(rng.integers(0, seconds - length + 1))
        events = [(k, start, start + length)]
        if i == num_videos - 1 and num_videos >= 6 and num_classes >= 2 and seconds >= 4:
            # Two events in one video: first and second half, different classes.
            half = seconds // 2
            events = [(k, 0, half), ((k + 1) % num_classes, half, seconds)]
        for cls, s, e in events:
            seg_class[s:e] = [cls] * (e - s)
            lines.append((cls, split_of[i], f"{AVE_CATEGORIES[cls]}&{vid}&good&{s}&{e}"))
        frames = _render_frames(seg_class, num_classes, image_size, fps, rng)
        audio = _render_audio(seg_class, sample_rate, rng)
        write_mp4(root / "AVE" / f"{vid}.mp4", frames, fps, audio, sample_rate)

    # Like the real file: grouped by category in class order, so first appearance == class index.
    lines.sort(key=lambda line: line[0])
    (root / "Annotations.txt").write_text("\n".join([AVE_HEADER, *(text for _, _, text in lines)]) + "\n")
    for split, name in AVE_SPLIT_FILES.items():
        body = "".join(text + "\n" for _, s, text in lines if s == split)
        (root / name).write_text(body)
    present = sorted({cls for cls, _, _ in lines})
    (root / "categories.txt").write_text("".join(AVE_CATEGORIES[k] + "\n" for k in present))
    return root


def break_dataset(
    root: str | Path,
    missing: Iterable[str] = (),
    corrupt: Iterable[str] = (),
    no_audio: Iterable[str] = (),
    video_dir: str | Path | None = None,
) -> None:
    """Damage videos of a synthetic root: delete (``missing``), overwrite with garbage bytes
    (``corrupt``) or rewrite without the audio stream (``no_audio``). Videos are
    ``<video_dir>/<id>.mp4``; ``video_dir`` defaults to ``<root>/AVE`` (use ``<root>/video`` for LLP)."""
    import av

    video_dir = Path(video_dir) if video_dir is not None else Path(root) / "AVE"
    for vid in missing:
        (video_dir / f"{vid}.mp4").unlink(missing_ok=True)
    for vid in corrupt:
        garbage = np.random.default_rng(len(vid)).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        (video_dir / f"{vid}.mp4").write_bytes(b"this is not a video\n" + garbage)
    for vid in no_audio:
        path = video_dir / f"{vid}.mp4"
        # Remux the video packets only; no re-encoding needed.
        with (
            atomic_output(path, suffix=".mp4") as tmp,
            av.open(str(path)) as src,
            av.open(str(tmp), mode="w", format="mp4") as dst,
        ):
            in_stream = src.streams.video[0]
            out_stream = dst.add_stream_from_template(in_stream)
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue  # the demuxer's final flush packet
                packet.stream = out_stream
                dst.mux(packet)


# --------------------------------------------------------------------------- LLP (AVVP)

# How an LLP event shows: heard only, seen only, or both (the AVVP ground truth distinguishes them).
LLP_MODALITIES = ("audio", "visual", "audio-visual")
_LLP_FILES = (*AVVP_SPLIT_FILES.values(), *AVVP_EVAL_FILES.values())


# How often an event is heard and seen, heard only, or seen only. Weak labels do not say which: a
# set where most events are both (as in LLP, where most labelled events are audio-visual) lets a
# model learn each modality's timing from its own cue; the rest keep the two apart.
LLP_MODALITY_WEIGHTS = {"audio-visual": 0.6, "audio": 0.2, "visual": 0.2}


def _llp_events(index: int, num_classes: int, seconds: int, rng) -> list[tuple[int, str, int, int]]:
    """1-2 events ``(class, modality, onset, offset)`` of distinct classes; the first class cycles
    through the classes so that every class occurs. An event lasts 7-10 of the 10 seconds (at
    least 70% of a shorter clip): the MGN head marks a class it detects in every segment (its frame
    "probabilities" are the modality probability times 1 + a softmax over time), so events that
    fill most of the clip let a model that learns the classes score well at the segment level."""
    count = 2 if num_classes >= 2 and rng.random() < 0.2 else 1
    classes = [index % num_classes]
    if count == 2:
        others = [k for k in range(num_classes) if k != classes[0]]
        classes.append(int(rng.choice(others)))
    weights = np.array([LLP_MODALITY_WEIGHTS[m] for m in LLP_MODALITIES])
    events = []
    for k in classes:
        length = int(rng.integers(max(1, round(0.7 * seconds)), seconds + 1))
        onset = int(rng.integers(0, seconds - length + 1))
        modality = LLP_MODALITIES[int(rng.choice(len(LLP_MODALITIES), p=weights / weights.sum()))]
        events.append((k, modality, onset, onset + length))
    return events


def _render_llp_frames(
    visual: list[tuple[int, int, int]], num_classes: int, size: int, fps: int, seconds: int, rng
) -> np.ndarray:
    """Background frames with each visual event's picture; two simultaneous visual events share
    the picture (top half / bottom half)."""
    frames = _render_frames([-1] * seconds, num_classes, size, fps, rng)
    layers = [
        (s, e, _render_frames([k if s <= t < e else -1 for t in range(seconds)], num_classes, size, fps, rng))
        for k, s, e in visual
    ]
    half = size // 2
    for f in range(frames.shape[0]):
        active = [layer for s, e, layer in layers if s <= f // fps < e]
        if len(active) == 1:
            frames[f] = active[0][f]
        elif len(active) >= 2:
            frames[f, :half] = active[0][f, :half]
            frames[f, half:] = active[1][f, half:]
    return frames


def _render_llp_audio(audible: list[tuple[int, int, int]], seconds: int, sample_rate: int, rng) -> np.ndarray:
    """Faint noise, plus each audible event's class tone over its segments (tones add up)."""
    if not audible:
        return _render_audio([-1] * seconds, sample_rate, rng)
    tracks = [
        _render_audio([k if s <= t < e else -1 for t in range(seconds)], sample_rate, rng)
        for k, s, e in audible
    ]
    return np.sum(tracks, axis=0).astype(np.float32)


def write_synthetic_llp(
    root: str | Path,
    num_videos: int = 24,
    num_classes: int = 4,
    image_size: int = 96,
    fps: int = 8,
    seconds: int = 10,
    sample_rate: int = 32000,
    seed: int = 0,
) -> Path:
    """Write a synthetic LLP dataset under ``root``: the five AVVP CSVs (tab-separated, real
    headers), ``video/<filename>.mp4`` and ``feats/r2plus1d_18/<YouTubeID>.npy``.

    Classes are the first ``num_classes`` AVVP classes. Each video has 1-2 events, each heard only,
    seen only or both, with random onsets/offsets; the weak labels list every event's class and the
    eval CSVs list the audio and visual events of the val/test videos. The ``[10, 512]`` features
    carry the visual signal (a class vector during visual events, plus noise), so ``--features``
    works on this root. About 60/20/20 train/val/test, each split non-empty. Deterministic for
    a given ``seed``. Refuses to overwrite AVVP CSVs it did not write. (decord cannot read back
    some tiny frame sizes, e.g. 16 or 48; 32, 64 and 96 work.)
    """
    _check_synthetic_args(
        num_classes, len(AVVP_CLASSES), num_videos, image_size, seconds, AVVP_NUM_SEGMENTS, sample_rate
    )
    root = Path(root)
    if any((root / name).exists() for name in _LLP_FILES) and not (root / MARKER).exists():
        raise ValueError(
            f"{root}: holds AVVP annotation files not written by write_synthetic_llp; refusing to overwrite"
        )
    video_dir = root / "video"
    feats_dir = root / "feats" / "r2plus1d_18"
    video_dir.mkdir(parents=True, exist_ok=True)
    feats_dir.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by dgsct_cli.data.synthetic.write_synthetic_llp\n")

    rng = np.random.default_rng(seed)
    # Separate stream for the class vectors, so they do not depend on num_videos.
    prototypes = np.abs(np.random.default_rng([seed, 512]).normal(0.0, 1.0, (num_classes, VIDEO_ST_DIM)))
    ids = _video_ids(num_videos, rng)
    names = [
        f"{vid}_{10 * int(s)}_{10 * int(s) + 10}" for vid, s in zip(ids, rng.integers(0, 30, num_videos))
    ]
    n_eval = max(1, round(0.2 * num_videos))
    order = rng.permutation(num_videos)
    split_of = ["train"] * num_videos
    for i in order[:n_eval]:
        split_of[i] = "val"
    for i in order[n_eval : 2 * n_eval]:
        split_of[i] = "test"

    split_lines: dict[str, list[str]] = {split: [] for split in AVVP_SPLIT_FILES}
    eval_lines: dict[str, list[str]] = {kind: [] for kind in AVVP_EVAL_FILES}
    for i, (vid, name) in enumerate(zip(ids, names)):
        events = _llp_events(i, num_classes, seconds, rng)
        audible = [(k, s, e) for k, m, s, e in events if m != "visual"]
        visual = [(k, s, e) for k, m, s, e in events if m != "audio"]
        frames = _render_llp_frames(visual, num_classes, image_size, fps, seconds, rng)
        audio = _render_llp_audio(audible, seconds, sample_rate, rng)
        write_mp4(video_dir / f"{name}.mp4", frames, fps, audio, sample_rate)

        feats = np.abs(rng.normal(0.0, 0.3, (AVVP_NUM_SEGMENTS, VIDEO_ST_DIM)))
        for k, s, e in visual:
            feats[s:e] += prototypes[k]
        np.save(feats_dir / f"{vid}.npy", feats.astype(np.float32))

        split_lines[split_of[i]].append(f"{name}\t{','.join(AVVP_CLASSES[k] for k, _, _, _ in events)}")
        if split_of[i] != "train":
            for kind, rows in (("audio", audible), ("visual", visual)):
                eval_lines[kind].extend(f"{name}\t{s}\t{e}\t{AVVP_CLASSES[k]}" for k, s, e in rows)

    for split, name in AVVP_SPLIT_FILES.items():
        (root / name).write_text("\n".join(["filename\tevent_labels", *split_lines[split]]) + "\n")
    for kind, name in AVVP_EVAL_FILES.items():
        (root / name).write_text(
            "\n".join(["filename\tonset\toffset\tevent_labels", *eval_lines[kind]]) + "\n"
        )
    return root


def synthetic_root(
    out: Path, root: Path | None, synthetic: bool, videos: int | None, write, name: str, console=None
) -> Path:
    """The raw dataset folder of a ``prepare`` run; with ``synthetic``, a synthetic dataset is
    first written there (default ``<out>/raw``) by ``write(root, num_videos=...)``."""
    from contextlib import nullcontext

    from ..atomic import naming_the_folder

    if videos is not None and not synthetic:
        raise ValueError("--videos only applies with --synthetic")
    if root is None:
        if not synthetic:
            raise ValueError("--root is required (or pass --synthetic to generate a dataset)")
        root = Path(out) / "raw"
    if synthetic:
        status = console.status(f"writing a synthetic {name} dataset to {root}") if console else nullcontext()
        with status, naming_the_folder(root):
            write(root, num_videos=videos if videos is not None else 24)
    return root


def prepare_synthetic_ave(
    out: Path, videos: int, image_size: int, progress: bool, console=None, raw_image_size: int = 96
) -> None:
    """A synthetic AVE root written to ``<out>/raw`` (videos of ``raw_image_size`` pixels) and
    prepared into the cache ``out`` at ``image_size``: a tiny recipe's data when it is missing."""
    from .ave import prepare_ave

    raw = write_synthetic_ave(Path(out) / "raw", num_videos=videos, image_size=raw_image_size)
    # One process: starting a decoding pool costs more than decoding a few dozen tiny videos
    # (24 videos: 7.6 s in-process, 9.5 s with two workers, on 2 idle cores).
    prepare_ave(raw, out, workers=1, image_size=image_size, progress=progress, console=console)


def prepare_synthetic_llp(
    out: Path, videos: int, image_size: int, progress: bool, console=None, raw_image_size: int = 96
) -> None:
    """The same for LLP; the synthetic root carries its own 3-D features (no R(2+1)D weights)."""
    from .avvp import prepare_avvp

    raw = write_synthetic_llp(Path(out) / "raw", num_videos=videos, image_size=raw_image_size)
    prepare_avvp(
        raw,
        out,
        workers=1,  # in-process, as prepare_synthetic_ave
        image_size=image_size,
        features=raw / "feats" / "r2plus1d_18",
        progress=progress,
        console=console,
    )
