"""Options every task's ``dgsct prepare`` command spells the same way (Typer ``Annotated`` types;
each command gives its own default where it has one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["CacheOut", "ExtraSizes", "ImageSize", "SyntheticVideos"]

CacheOut = Annotated[Path, typer.Option("--out", help="Cache directory to create or resume.")]
ImageSize = Annotated[int, typer.Option("--image-size", min=8, help="Frame side length in the cache.")]
SyntheticVideos = Annotated[
    int | None,
    typer.Option("--videos", min=3, help="Number of synthetic videos (only with --synthetic; default 24)."),
]
ExtraSizes = Annotated[
    list[int] | None,
    typer.Option(
        "--extra-size",
        min=8,
        help="Also store the frames at this size, from the same decode (repeatable; 224 for the few-shot tasks).",
    ),
]
