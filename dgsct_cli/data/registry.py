"""Per-task synthetic datasets (used when a tiny recipe's data folder is absent), by task name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console


def _synthetic_ave(out: Path, videos: int, image_size: int, num_classes: int, **common) -> None:
    from .ave import prepare_ave
    from .synthetic import write_synthetic_ave

    write_synthetic_ave(out / "raw", num_videos=videos, num_classes=num_classes)
    prepare_ave(out / "raw", out, workers=2, image_size=image_size, **common)


def _synthetic_avvp(out: Path, videos: int, image_size: int, num_classes: int, **common) -> None:
    from .avvp import prepare_avvp
    from .synthetic import write_synthetic_llp

    raw = write_synthetic_llp(out / "raw", num_videos=videos, num_classes=num_classes)
    # The synthetic root carries its own 3-D features (no r2plus1d_18 weights needed).
    prepare_avvp(raw, out, workers=2, image_size=image_size, features=raw / "feats" / "r2plus1d_18", **common)


SYNTHETIC_DATASETS: dict[str, Callable[..., None]] = {"ave": _synthetic_ave, "avvp": _synthetic_avvp}


def prepare_synthetic(
    task: str,
    out: str | Path,
    videos: int = 24,
    image_size: int = 192,
    num_classes: int = 4,
    progress: bool = True,
    console: Console | None = None,
) -> Path:
    """Write a small learnable synthetic dataset for ``task`` under ``out/raw`` and prepare it."""
    if task not in SYNTHETIC_DATASETS:
        raise ValueError(
            f"no synthetic dataset for task {task!r}; available: {', '.join(SYNTHETIC_DATASETS)}"
        )
    out = Path(out)
    SYNTHETIC_DATASETS[task](out, videos, image_size, num_classes, progress=progress, console=console)
    return out
