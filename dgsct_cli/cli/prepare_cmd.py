"""``dgsct prepare``: decode a raw dataset once into the prepared cache used for training."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..data.ave import prepare_ave, summary_table

prepare_app = typer.Typer(
    help="Decode a dataset once into a prepared cache (frames + audio arrays + manifest.json).",
    no_args_is_help=True,
)


@prepare_app.callback()
def _prepare_group() -> None:
    """Decode a dataset once into a prepared cache (frames + audio arrays + manifest.json)."""
    # A callback keeps this a command group even while it has a single command.


@prepare_app.command("ave")
def prepare_ave_command(
    out: Path = typer.Option(..., "--out", help="Cache directory to create or resume."),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="AVE root: Annotations.txt, trainSet/valSet/testSet.txt and AVE/<VideoID>.mp4. "
        "With --synthetic it defaults to <out>/raw.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding processes."),
    image_size: int = typer.Option(192, "--image-size", min=8, help="Frame side length in the cache."),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Write a small synthetic AVE dataset to --root first, then prepare it."
    ),
    videos: int | None = typer.Option(
        None, "--videos", min=3, help="Number of synthetic videos (only with --synthetic; default 24)."
    ),
) -> None:
    """Prepare the AVE dataset (or a synthetic stand-in) for training and evaluation."""
    console = Console()
    errors = Console(stderr=True)
    try:
        if videos is not None and not synthetic:
            raise ValueError("--videos only applies with --synthetic")
        if root is None:
            if not synthetic:
                raise ValueError("--root is required (or pass --synthetic to generate a dataset)")
            root = out / "raw"
        if synthetic:
            from ..data.synthetic import write_synthetic_ave

            with console.status(f"writing a synthetic AVE dataset to {root}"):
                write_synthetic_ave(root, num_videos=videos if videos is not None else 24)
        summary = prepare_ave(root, out, workers=workers, image_size=image_size, console=console)
    except ValueError as exc:
        errors.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(summary_table(summary))
    console.print(f"manifest: {out / 'manifest.json'}", markup=False, highlight=False)
