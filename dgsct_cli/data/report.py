"""What a ``prepare`` run did, shared by every dataset: summary, ``prepare_report.json``, table.

Each dataset reader (AVE, AVVP, ...) fills a :class:`PrepareSummary`; this module writes it to the
report file, prints it as a table and refuses a cache with an empty split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from .manifest import MANIFEST_NAME, write_if_changed

__all__ = [
    "REPORT_NAME",
    "PrepareSummary",
    "SkippedVideo",
    "raise_on_empty_split",
    "summary_table",
    "write_prepare_report",
]

REPORT_NAME = "prepare_report.json"


@dataclass
class SkippedVideo:
    video_id: str
    reason: str
    splits: list[str]  # the splits that lost samples because of this video


@dataclass
class PrepareSummary:
    out: Path
    split_samples: dict[str, int]  # annotated samples per split
    split_usable: dict[str, int]  # samples whose video is in the cache
    videos: int  # distinct videos in the annotations
    decoded: int  # decoded by this run
    reused: int  # already in the cache from a previous run
    skipped: list[SkippedVideo] = field(default_factory=list)
    seconds: float = 0.0
    # Dataset-specific facts worth a table row (e.g. where AVVP's 3-D features came from).
    details: dict[str, str] = field(default_factory=dict)
    # Malformed annotation lines that were skipped: "<file>:<line>: <problem>".
    bad_lines: list[str] = field(default_factory=list)


def write_prepare_report(
    out: Path, root: Path, summary: PrepareSummary, dataset: str, extra: Mapping[str, Any] | None = None
) -> None:
    """Write ``<out>/prepare_report.json``: per-split counts, video counts and every skipped video.

    It describes the cache, not the run (how many videos this run decoded is in the printed
    summary), so a re-run over a complete cache changes nothing and writes nothing."""
    report: dict[str, Any] = {
        "dataset": dataset,
        "root": str(root),
        "splits": {
            split: {
                "samples": total,
                "usable": summary.split_usable[split],
                "lost": total - summary.split_usable[split],
            }
            for split, total in summary.split_samples.items()
        },
        "videos": {
            "total": summary.videos,
            "in_cache": summary.decoded + summary.reused,
            "skipped": len(summary.skipped),
        },
        "skipped": [asdict(s) for s in summary.skipped],
        "bad_lines": list(summary.bad_lines),
    }
    if summary.details:
        report["details"] = dict(summary.details)
    if extra:
        report.update(extra)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_if_changed(out / REPORT_NAME, text.encode("utf-8"))


def raise_on_empty_split(summary: PrepareSummary, split_files: Mapping[str, Path], hint: str) -> None:
    """Raise ``ValueError`` naming the first split without annotation lines or usable videos.

    ``split_files`` maps a split to its annotation file (named when the split has no lines);
    ``hint`` ends the "no usable videos" message (e.g. where the videos were expected). A stale
    manifest would describe videos this run could not find, so it is removed first.
    """
    out = summary.out
    for split, total in summary.split_samples.items():
        problem = None
        if total == 0:
            problem = f"split '{split}' has no annotation lines in {split_files[split]}"
        elif summary.split_usable[split] == 0:
            lost = sum(1 for s in summary.skipped if split in s.splits)
            problem = (
                f"split '{split}' has no usable videos ({lost} skipped); see {out / REPORT_NAME} "
                f"for the reasons ({hint})"
            )
        if problem:
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            raise ValueError(problem)


def summary_table(summary: PrepareSummary, max_skipped: int = 30) -> Table:
    """A rich table: usable/annotated samples per split, video counts and each skipped video."""
    table = Table(title=f"prepared cache: {summary.out}", title_justify="left")
    table.add_column("item")
    table.add_column("count", justify="right")
    table.add_column("details")
    for split, total in summary.split_samples.items():
        usable = summary.split_usable[split]
        lost = total - usable
        table.add_row(
            f"{split} samples", f"{usable}/{total}", f"[yellow]{lost} lost[/yellow]" if lost else "all usable"
        )
    table.add_section()
    table.add_row("videos", str(summary.videos), f"prepared in {summary.seconds:.1f} s")
    table.add_row("decoded now", str(summary.decoded), "")
    table.add_row("reused", str(summary.reused), "already in the cache")
    table.add_row("skipped", str(len(summary.skipped)), "see prepare_report.json" if summary.skipped else "")
    if summary.bad_lines:
        table.add_row("bad annotation lines", str(len(summary.bad_lines)), "skipped; see prepare_report.json")
    for name, text in summary.details.items():
        table.add_row(escape(name), "", escape(text))
    for message in summary.bad_lines[:max_skipped]:
        table.add_row("[red]bad line[/red]", "", escape(message))
    if summary.skipped:
        table.add_section()
        for entry in summary.skipped[:max_skipped]:
            # escape: reasons are free text and may contain [brackets]
            table.add_row(
                f"[red]{escape(entry.video_id)}[/red]",
                "",
                f"{escape(entry.reason)} ({', '.join(entry.splits)})",
            )
        if len(summary.skipped) > max_skipped:
            table.add_row("...", "", f"{len(summary.skipped) - max_skipped} more in prepare_report.json")
    return table
