"""The built-in tasks' ``dgsct prepare`` commands, in a module that imports neither torch nor a
task, so that ``dgsct prepare NAME --help`` answers at once. Each task module imports its command
from here (``Task.prepare_command``); a plug-in task may keep its command in its own module.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .prepare_options import CacheOut, ExtraSizes, ImageSize, SyntheticVideos

# VGG-Sound(40K) synthetic sets cycle through their classes: hold out every 5th training row (a
# multiple of the class count would hold out one class entirely).
SYNTHETIC_VAL_EVERY = 5


def prepare_ave_command(
    out: CacheOut,
    root: Path | None = typer.Option(
        None,
        "--root",
        help="AVE root: Annotations.txt, trainSet/valSet/testSet.txt and AVE/<VideoID>.mp4. "
        "With --synthetic it defaults to <out>/raw.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding processes."),
    image_size: ImageSize = 192,
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Write a small synthetic AVE dataset to --root first, then prepare it."
    ),
    videos: SyntheticVideos = None,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed annotation line."),
    extra_size: ExtraSizes = None,
    *,
    progress: bool = True,
    console: Console | None = None,
):
    """Prepare the AVE dataset (or a synthetic stand-in) for training and evaluation."""
    from ..data.ave import prepare_ave
    from ..data.synthetic import synthetic_root, write_synthetic_ave

    root = synthetic_root(out, root, synthetic, videos, write_synthetic_ave, "AVE", console)
    return prepare_ave(
        root,
        out,
        workers=workers,
        image_size=image_size,
        progress=progress,
        console=console,
        strict=strict,
        extra_sizes=tuple(extra_size or ()),
    )


def prepare_avvp_command(
    out: CacheOut,
    root: Path | None = typer.Option(
        None,
        "--root",
        help="LLP root: AVVP_{train,val_pd,test_pd,eval_audio,eval_visual}.csv (here or under data/AVVP/) "
        "and <filename>.mp4 (here, in video/ or in LLP_dataset/video/). With --synthetic it defaults "
        "to <out>/raw.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding processes."),
    image_size: ImageSize = 192,
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
    videos: SyntheticVideos = None,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed annotation line."),
    extra_size: ExtraSizes = None,
    *,
    progress: bool = True,
    console: Console | None = None,
):
    """Prepare the LLP dataset for AVVP (or a synthetic stand-in), with its 3-D visual features."""
    from ..data.avvp import prepare_avvp
    from ..data.synthetic import synthetic_root, write_synthetic_llp

    if features is not None and r2plus1d_weights is not None:
        raise ValueError("give either --features or --r2plus1d-weights, not both")
    root = synthetic_root(out, root, synthetic, videos, write_synthetic_llp, "LLP", console)
    if synthetic and features is None and r2plus1d_weights is None:
        features = root / "feats" / "r2plus1d_18"
    return prepare_avvp(
        root,
        out,
        workers=workers,
        image_size=image_size,
        features=features,
        r2plus1d_weights=r2plus1d_weights,
        progress=progress,
        console=console,
        strict=strict,
        extra_sizes=tuple(extra_size or ()),
    )


def prepare_avs_command(
    out: CacheOut,
    setting: str = typer.Option(..., "--setting", help="s4 (single source) or ms3 (multi-source)."),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="AVSBench_data (or its Single-source / Multi-sources folder): the meta CSV, PNG frames, "
        "gt_masks and wave/<...>/AVS.npy. With --synthetic it defaults to <out>/raw.",
    ),
    source: str = typer.Option(
        "frames",
        "--source",
        help="frames: the published PNG frames and AVS.npy waves; videos: decode raw clips.",
    ),
    video_dir: Path | None = typer.Option(
        None, "--video-dir", help="Raw clips for --source videos (default <setting data>/raw_videos)."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding processes (--source videos)."),
    synthetic: bool = typer.Option(
        False,
        "--synthetic",
        help="Write a small synthetic AVSBench-format set to --root first, then prepare it.",
    ),
    videos: SyntheticVideos = None,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed CSV line."),
    *,
    progress: bool = True,
    console: Console | None = None,
):
    """Prepare AVSBench S4 or MS3 (or a synthetic stand-in) for audio-visual segmentation."""
    from ..data.avsbench import get_setting, prepare_avsbench, write_synthetic_avsbench
    from ..data.synthetic import synthetic_root

    get_setting(setting)

    def write(path: Path, num_videos: int) -> Path:
        return write_synthetic_avsbench(path, setting, num_videos)

    root = synthetic_root(out, root, synthetic, videos, write, f"AVSBench {setting.upper()}", console)
    return prepare_avsbench(
        root,
        out,
        setting,
        source=source,
        videos=video_dir,
        workers=workers,
        progress=progress,
        console=console,
        strict=strict,
    )


def prepare_avqa_command(
    out: CacheOut,
    root: Path | None = typer.Option(
        None,
        "--root",
        help="MUSIC-AVQA root: json/avqa-{train,val,test}.json and either frames/<id>/%08d.jpg + "
        "audio_wave/<id>.npy (the release's layout) or <id>.mp4 videos (here, in videos/ or in "
        "MUSIC-AVQA-videos-Real/-Synthetic/). With --synthetic it defaults to <out>/raw.",
    ),
    annotations: str = typer.Option(
        "json",
        "--annotations",
        help="json (what the release reads) or json_update (the cleaned annotations).",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding processes (threads for jpg frames)."),
    image_size: ImageSize = 192,
    synthetic: bool = typer.Option(
        False,
        "--synthetic",
        help="Write a small learnable MUSIC-AVQA-format dataset to --root first, then prepare it.",
    ),
    videos: SyntheticVideos = None,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first record that cannot be read."),
    *,
    progress: bool = True,
    console: Console | None = None,
):
    """Prepare MUSIC-AVQA for AVQA (or a synthetic stand-in): questions, vocabularies, frames, audio."""
    from ..data.avqa import prepare_avqa
    from ..data.avqa_synthetic import write_synthetic_avqa
    from ..data.synthetic import synthetic_root

    root = synthetic_root(out, root, synthetic, videos, write_synthetic_avqa, "MUSIC-AVQA", console)
    return prepare_avqa(
        root,
        out,
        workers=workers,
        image_size=image_size,
        annotations=annotations,
        progress=progress,
        console=console,
        strict=strict,
    )


def prepare_vggsound40k_command(
    out: CacheOut,
    root: Path | None = typer.Option(
        None,
        "--root",
        help="VGG-Sound(40K) root: vggsound-avel40k_labels.csv, VggsoundAVEL40kCategories.txt and "
        "frames/<id>/%08d.jpg + wave/<id>.npy (or video/<id>.mp4). With --synthetic it defaults to <out>/raw.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Parallel readers / decoding processes."),
    image_size: ImageSize = 224,
    val_every: int = typer.Option(
        20, "--val-every", min=0, help="Hold out every N-th training row as 'val' (0: no val split)."
    ),
    extra_size: list[int] = typer.Option(
        None, "--extra-size", min=8, help="Also store the frames at this size (repeatable)."
    ),
    synthetic: bool = typer.Option(
        False,
        "--synthetic",
        help="Write a small synthetic VGG-Sound(40K) set to --root first, then prepare it.",
    ),
    videos: SyntheticVideos = None,
    strict: bool = typer.Option(False, "--strict", help="Stop at the first malformed CSV row."),
    *,
    progress: bool = True,
    console: Console | None = None,
):
    """Prepare VGG-Sound(40K) (141 classes + background, per-second labels) for pre-training."""
    from ..data.synthetic import synthetic_root
    from ..data.vggsound import prepare_vggsound40k, write_synthetic_vggsound40k

    root = synthetic_root(
        out, root, synthetic, videos, write_synthetic_vggsound40k, "VGG-Sound(40K)", console
    )
    return prepare_vggsound40k(
        root,
        out,
        workers=workers,
        image_size=image_size,
        val_every=SYNTHETIC_VAL_EVERY if synthetic and val_every == 20 else val_every,
        extra_sizes=tuple(extra_size or ()),
        progress=progress,
        console=console,
        strict=strict,
    )
