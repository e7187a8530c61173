"""AVE (Audio-Visual Event localisation): annotation reader and cache preparation.

Raw layout (as published)::

    <root>/Annotations.txt   header + one '&'-separated line per sample (all splits)
    <root>/trainSet.txt      same format, no header (also valSet.txt, testSet.txt)
    <root>/categories.txt    optional; must match the class order if present
    <root>/AVE/<VideoID>.mp4

A sample is an annotation line, not a video: a few videos carry two or three events (one line
each), and some of those lines sit in different splits. Each video is decoded once.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from .. import __version__
from .decode import decode_videos_to_cache
from .lines import LineProblems, numbered_lines
from .manifest import MANIFEST_NAME, build_manifest, valid_video_id, write_manifest

# Re-exported: these used to live here and are shared with the other datasets now.
from .report import (
    REPORT_NAME,
    PrepareSummary,
    SkippedVideo,
    raise_on_empty_split,
    summary_table,
    write_prepare_report,
)

__all__ = [
    "AVE_CATEGORIES",
    "AVE_HEADER",
    "AVE_NUM_SEGMENTS",
    "AVE_SPLIT_FILES",
    "AnnotationRow",
    "REPORT_NAME",
    "PrepareSummary",
    "SkippedVideo",
    "ave_sample_ids",
    "prepare_ave",
    "read_ave_annotations",
    "segment_labels",
    "summary_table",
]

# The 28 AVE categories in the published class order (categories.txt).
AVE_CATEGORIES = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats, mice",
    "Accordion",
    "Mandolin",
)

AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"
AVE_NUM_SEGMENTS = 10
# Split name -> file, in the order samples are listed in the manifest.
AVE_SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


class AnnotationRow(NamedTuple):
    category: str
    video_id: str
    quality: str
    start: int  # first event segment (whole seconds)
    end: int  # one past the last event segment


def segment_labels(
    start: int, end: int, class_index: int, background_index: int, num_segments: int = AVE_NUM_SEGMENTS
) -> list[int]:
    """Per-segment labels: ``class_index`` on segments ``start..end-1``, background elsewhere."""
    return [class_index if start <= t < end else background_index for t in range(num_segments)]


def _parse_line(path: Path, line_no: int, line: str) -> AnnotationRow:
    def bad(problem: str) -> ValueError:
        return ValueError(f"{path}:{line_no}: {problem}")

    fields = line.split("&")
    if len(fields) != 5:
        raise bad(f"expected 5 '&'-separated fields ({AVE_HEADER}), got {len(fields)}: {line!r}")
    category, video_id, quality, start_s, end_s = (f.strip() for f in fields)
    if not category:
        raise bad("empty Category")
    if not valid_video_id(video_id):
        raise bad(f"invalid VideoID {video_id[:60]!r}{'...' if len(video_id) > 60 else ''} (it names a file)")
    try:
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise bad(f"StartTime/EndTime must be whole seconds, got {start_s!r}/{end_s!r}") from None
    if not 0 <= start <= end <= AVE_NUM_SEGMENTS:
        raise bad(f"need 0 <= StartTime <= EndTime <= {AVE_NUM_SEGMENTS}, got {start}..{end}")
    return AnnotationRow(category, video_id, quality, start, end)


def _parse_file(path: Path, problems: LineProblems | None = None) -> list[tuple[int, AnnotationRow]]:
    """``(line number, row)`` for every annotation line of ``path``; a malformed line is reported
    to ``problems`` (and skipped) or, without it, raised."""
    problems = problems or LineProblems(strict=True)
    rows: list[tuple[int, AnnotationRow]] = []
    for line_no, line in numbered_lines(path, problems):
        if not line.strip():
            continue
        if line_no == 1 and line.strip().lower() == AVE_HEADER.lower():
            continue  # Annotations.txt has a header; the split files do not
        try:
            rows.append((line_no, _parse_line(path, line_no, line)))
        except ValueError as exc:
            problems.add(str(exc))
    return rows


def _require(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        expected = ", ".join(["Annotations.txt", *AVE_SPLIT_FILES.values()])
        raise ValueError(f"{root}: missing {name} (an AVE root holds {expected} and the AVE/ video folder)")
    return path


def read_ave_annotations(
    root: str | Path, problems: LineProblems | None = None
) -> tuple[list[str], dict[str, list[AnnotationRow]]]:
    """Parse the AVE annotation files under ``root``.

    Returns ``(class_names, {"train": rows, "val": rows, "test": rows})``. Class order is the order
    of first appearance in Annotations.txt (checked against categories.txt when present). Raises
    ``ValueError("<file>:<line>: <problem>")`` on a malformed line (or, with ``problems``, reports
    it there and skips it) and names a missing file.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: AVE root folder not found")
    annotations_file = _require(root, "Annotations.txt")
    annotations = _parse_file(annotations_file, problems)
    source = annotations_file
    categories_file = root / "categories.txt"
    if categories_file.is_file():
        listed = [
            c.strip() for c in categories_file.read_text(encoding="utf-8-sig").splitlines() if c.strip()
        ]
        # A line with a class categories.txt does not list is that line's fault (reported with its
        # file and line, and skipped unless strict), not categories.txt's.
        kept = []
        for line_no, row in annotations:
            if row.category in listed:
                kept.append((line_no, row))
            else:
                (problems or LineProblems()).add(
                    f"{annotations_file}:{line_no}: unknown category {row.category!r} (not in {categories_file})"
                )
        annotations, source = kept, categories_file
    class_names: list[str] = []
    for _, row in annotations:
        if row.category not in class_names:
            class_names.append(row.category)
    if not class_names:
        raise ValueError(f"{annotations_file}: no annotation lines")
    if source == categories_file and listed != class_names:
        absent = [c for c in listed if c not in class_names]
        if absent:
            raise ValueError(
                f"{categories_file}: lists {absent[0]!r}, which no line of {annotations_file} has"
            )
        i = next(i for i, (a, b) in enumerate(zip(listed, class_names)) if a != b)
        raise ValueError(
            f"{categories_file}: not in the order of first appearance in {annotations_file.name} "
            f"(name {i + 1} is {listed[i]!r}, Annotations.txt has {class_names[i]!r} there)"
        )

    splits: dict[str, list[AnnotationRow]] = {}
    known = set(class_names)
    for split, name in AVE_SPLIT_FILES.items():
        path = _require(root, name)
        rows = []
        for line_no, row in _parse_file(path, problems):
            if row.category not in known:
                (problems or LineProblems()).add(
                    f"{path}:{line_no}: unknown category {row.category!r} (not in {source.name})"
                )
                continue
            rows.append(row)
        splits[split] = rows
    return class_names, splits


def ave_sample_ids(splits: dict[str, list[AnnotationRow]]) -> dict[str, list[str]]:
    """Unique sample ids ``<VideoID>_<start>_<end>``, with ``_2``, ``_3``... on repeats.

    Repeats exist in the real data (one video, same times, two classes). Ids are assigned over all
    splits in order, so they do not depend on which videos a run managed to decode.
    """
    bases = {split: [f"{r.video_id}_{r.start}_{r.end}" for r in rows] for split, rows in splits.items()}
    all_bases = {b for split_bases in bases.values() for b in split_bases}
    used: set[str] = set()
    out: dict[str, list[str]] = {}
    for split, split_bases in bases.items():
        ids = []
        for base in split_bases:
            sample_id, n = base, 1
            # A suffixed id never takes a name that another line has as its base.
            while sample_id in used or (n > 1 and sample_id in all_bases):
                n += 1
                sample_id = f"{base}_{n}"
            used.add(sample_id)
            ids.append(sample_id)
        out[split] = ids
    return out


def prepare_ave(
    root: str | Path,
    out: str | Path,
    workers: int = 2,
    image_size: int = 192,
    sample_rate: int = 32000,
    progress: bool = True,
    console: Console | None = None,
    strict: bool = False,
    extra_sizes: tuple[int, ...] = (),
) -> PrepareSummary:
    """Decode the AVE videos under ``root`` into a prepared cache at ``out``.

    ``extra_sizes``: also store the frames at these sizes (``frames_<size>/``, e.g. 224 for the
    CLIP-based few-shot tasks), resized from the same decode.

    Resumable: videos already in the cache are not decoded again. Missing, corrupt and audio-less
    videos are skipped and reported (summary, ``manifest.json`` and ``prepare_report.json``). Raises
    ``ValueError`` for missing annotation files or a split left without samples; a malformed
    annotation line is reported and skipped (``strict``: it stops the run).
    """
    started = time.monotonic()
    root, out = Path(root), Path(out)
    problems = LineProblems(strict=strict)
    class_names, splits = read_ave_annotations(root, problems)
    video_dir = root / "AVE"
    if not video_dir.is_dir():
        raise ValueError(f"{root}: missing the AVE/ folder with the <VideoID>.mp4 files")
    background = len(class_names)
    ids = ave_sample_ids(splits)

    # Each video once, in order of first appearance; remember which splits use it.
    video_splits: dict[str, list[str]] = {}
    for split, rows in splits.items():
        for row in rows:
            video_splits.setdefault(row.video_id, [])
            if split not in video_splits[row.video_id]:
                video_splits[row.video_id].append(split)
    videos = {vid: video_dir / f"{vid}.mp4" for vid in video_splits}

    def account(
        failed: dict[str, str], decoded: int, reused: int
    ) -> tuple[PrepareSummary, list[dict[str, Any]]]:
        """Summarise, write prepare_report.json and fail on an empty split."""
        usable = [
            (split, sample_id, row)
            for split, rows in splits.items()
            for sample_id, row in zip(ids[split], rows, strict=True)
            if row.video_id not in failed
        ]
        skipped = [SkippedVideo(vid, reason, list(video_splits[vid])) for vid, reason in failed.items()]
        summary = PrepareSummary(
            out=out,
            split_samples={split: len(rows) for split, rows in splits.items()},
            split_usable={split: sum(1 for u in usable if u[0] == split) for split in splits},
            videos=len(videos),
            decoded=decoded,
            reused=reused,
            skipped=skipped,
            seconds=time.monotonic() - started,
            bad_lines=list(problems.messages),
        )
        write_prepare_report(out, root, summary, "ave")
        raise_on_empty_split(
            summary,
            {split: root / name for split, name in AVE_SPLIT_FILES.items()},
            f"videos expected in {video_dir}",
        )
        samples = [
            {
                "id": sample_id,
                "video_id": row.video_id,
                "split": split,
                "targets": {
                    "segment_labels": segment_labels(
                        row.start, row.end, class_names.index(row.category), background
                    ),
                    "event_label": [class_names.index(row.category)],
                },
            }
            for split, sample_id, row in usable
        ]
        return summary, samples

    # Fail fast, before hours of decoding, when a whole split's files are absent.
    out.mkdir(parents=True, exist_ok=True)
    absent = {vid: "missing" for vid, path in videos.items() if not path.is_file()}
    if absent:
        account(absent, 0, 0)

    outcome = decode_videos_to_cache(
        videos,
        out,
        num_segments=AVE_NUM_SEGMENTS,
        image_size=image_size,
        sample_rate=sample_rate,
        workers=workers,
        progress=progress,
        console=console,
        description="decoding AVE videos",
        extra_sizes=extra_sizes,
    )
    summary, samples = account(outcome.failed, len(outcome.decoded), len(outcome.reused))
    manifest = build_manifest(
        dataset="ave",
        num_segments=AVE_NUM_SEGMENTS,
        image_size=image_size,
        sample_rate=sample_rate,
        class_names=class_names,
        background_index=background,
        samples=samples,
        split_names=list(splits),
        skipped=[asdict(s) for s in summary.skipped],
        created_by=f"dgsct {__version__} prepare ave",
        frame_sizes=[s for s in extra_sizes if s != image_size],
    )
    write_manifest(out / MANIFEST_NAME, manifest)
    return summary
