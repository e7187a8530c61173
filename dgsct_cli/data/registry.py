"""Per-task dataset preparation entry points (used when a tiny recipe's data folder is absent)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def prepare_synthetic(
    task: str,
    out: str | Path,
    videos: int = 24,
    image_size: int = 192,
    num_classes: int = 4,
    console: Console | None = None,
) -> Path:
    """Write a small learnable synthetic dataset for ``task`` under ``out/raw`` and prepare it."""
    out = Path(out)
    if task == "ave":
        from .ave import prepare_ave
        from .synthetic import write_synthetic_ave

        write_synthetic_ave(out / "raw", num_videos=videos, num_classes=num_classes)
        prepare_ave(out / "raw", out, workers=2, image_size=image_size, console=console)
        return out
    raise ValueError(f"no synthetic dataset for task {task!r}")
