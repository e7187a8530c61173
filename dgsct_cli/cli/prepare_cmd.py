"""``dgsct prepare``: decode a raw dataset once into the prepared cache used for training."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data.ave import prepare_ave
from ..data.report import summary_table
from .common import console, friendly_errors, show_progress

prepare_app = typer.Typer(
    help="Decode a dataset once into a prepared cache (frames + audio arrays + manifest.json).",
    no_args_is_help=True,
)


def _raw_root(out: Path, root: Path | None, synthetic: bool, videos: int | None, write, name: str) -> Path:
    """The raw dataset folder; with --synthetic, first write a synthetic dataset there."""
    if videos is not None and not synthetic:
        raise ValueError("--videos only applies with --synthetic")
    if root is None:
        if not synthetic:
            raise ValueError("--root is required (or pass --synthetic to generate a dataset)")
        root = out / "raw"
    if synthetic:
        with console.status(f"writing a synthetic {name} dataset to {root}"):
            write(root, num_videos=videos if videos is not None else 24)
    return root


@prepare_app.callback()
def _prepare_group() -> None:
    """Decode a dataset once into a prepared cache (frames + audio arrays + manifest.json)."""
    # A callback keeps this a command group even while it has a single command.


@prepare_app.command("ave")
@friendly_errors
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
    from ..data.synthetic import write_synthetic_ave

    root = _raw_root(out, root, synthetic, videos, write_synthetic_ave, "AVE")
    summary = prepare_ave(
        root, out, workers=workers, image_size=image_size, progress=show_progress(), console=console
    )
    console.print(summary_table(summary))
    console.print(f"manifest: {out / 'manifest.json'}", markup=False, highlight=False)


@prepare_app.command("avvp")
@friendly_errors
def prepare_avvp_command(
    out: Path = typer.Option(..., "--out", help="Cache directory to create or resume."),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="LLP root: AVVP_{train,val_pd,test_pd,eval_audio,eval_visual}.csv (here or under data/AVVP/) "
        "and <filename>.mp4 (here, in video/ or in LLP_dataset/video/). With --synthetic it defaults "
        "to <out>/raw.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding processes."),
    image_size: int = typer.Option(192, "--image-size", min=8, help="Frame side length in the cache."),
    features: Path | None = typer.Option(
        None,
        "--features",
        help="Published 3-D features folder (LLP_dataset/feats/r2plus1d_18: <YouTubeID>.npy, [10, 512]).",
    ),
    r2plus1d_weights: Path | None = typer.Option(
        None,
        "--r2plus1d-weights",
        help="Local torchvision r2plus1d_18 state dict: compute the 3-D features instead (slow on CPU).",
    ),
    synthetic: bool = typer.Option(
        False,
        "--synthetic",
        help="Write a small synthetic LLP dataset to --root first, then prepare it (with its own "
        "feats/r2plus1d_18 unless --features or --r2plus1d-weights is given).",
    ),
    videos: int | None = typer.Option(
        None, "--videos", min=3, help="Number of synthetic videos (only with --synthetic; default 24)."
    ),
) -> None:
    """Prepare the LLP dataset for AVVP (or a synthetic stand-in), with its 3-D visual features."""
    from ..data.synthetic import write_synthetic_llp

    if features is not None and r2plus1d_weights is not None:
        raise ValueError("give either --features or --r2plus1d-weights, not both")
    root = _raw_root(out, root, synthetic, videos, write_synthetic_llp, "LLP")
    if synthetic and features is None and r2plus1d_weights is None:
        features = root / "feats" / "r2plus1d_18"
    from ..data.avvp import prepare_avvp

    summary = prepare_avvp(
        root,
        out,
        workers=workers,
        image_size=image_size,
        features=features,
        r2plus1d_weights=r2plus1d_weights,
        progress=show_progress(),
        console=console,
    )
    console.print(summary_table(summary))
    console.print(f"manifest: {out / 'manifest.json'}", markup=False, highlight=False)
