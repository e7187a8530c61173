"""AVVP: audio-visual video parsing on LLP (spec tasks-release.md section A), head = MGN."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.table import Table

from ..models.heads.mgn import (
    MGN_UNUSED_RELEASE_KEYS,
    MGNHead,
    avvp_loss,
)
from .avvp_metrics import AVVP_CLASSES, SCORE_KEYS, format_parsing_table, parsing_scores
from .base import Task, register_task

__all__ = ["AVVP_CLASSES", "AVVPHeadConfig", "AVVPLossConfig", "parsing_scores"]


@dataclass
class AVVPHeadConfig:
    """Recipe section ``model.head`` for AVVP (the MGN head, release values by default)."""

    num_classes: int = 25
    st_dim: int = 512  # R(2+1)D-18 3-D visual features
    dim: int = 128
    temporal_dim: int = 64
    temporal_heads: int = 4
    temporal_ff_dim: int = 1024
    temporal_scale: float = 0.05
    num_heads: int = 8
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    unimodal_depth: int = 3
    crossmodal_depth: int = 6
    unimodal_assign: str = "soft"
    crossmodal_assign: str = "soft"
    # The release discards the gated audio stream (quirk); true feeds it to the audio grouping.
    gated_audio: bool = False

    def __post_init__(self) -> None:
        for name in ("unimodal_assign", "crossmodal_assign"):
            if getattr(self, name) not in ("soft", "hard"):
                raise ValueError(f"{name} must be 'soft' or 'hard'")


@dataclass
class AVVPLossConfig:
    """Recipe section ``loss`` for AVVP."""

    visual_smoothing: float = 0.1  # visual target = (1 - s) y + s / 2 (release: 0.9 y + 0.05)


def build_mgn_head(visual_dim: int, audio_dim: int, cfg: AVVPHeadConfig) -> MGNHead:
    return MGNHead(visual_dim=visual_dim, audio_dim=audio_dim, **asdict(cfg))


def avvp_task_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVVPLossConfig
) -> torch.Tensor:
    return avvp_loss(outputs, batch["labels"], cfg.visual_smoothing)


def video_label_accuracy(outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[int, int]:
    """Per (video, class) agreement of the video-level prediction with the weak labels."""
    pred = (outputs["video_prob"].detach() >= 0.5).long()
    labels = batch["labels"].long().to(pred.device)
    return int((pred == labels).sum()), labels.numel()


class AVVPEvaluator:
    """Collects predictions over the split and scores them exactly as the release (section A.6)."""

    def __init__(self, class_names: list[str], background_index: int | None = None) -> None:
        self.keys = ("video_prob", "audio_frame_prob", "visual_frame_prob")
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*self.keys, "gt_audio", "gt_visual")}

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        if "gt_audio" not in batch:
            raise ValueError(
                "AVVP evaluation needs segment ground truth (gt_audio/gt_visual): use the val or test split"
            )
        for k in self.keys:
            self.parts[k].append(outputs[k].detach().float().cpu())
        for k in ("gt_audio", "gt_visual"):
            self.parts[k].append(batch[k].float().cpu())

    def compute(self) -> dict[str, Any]:
        if not self.parts["video_prob"]:
            return {k: 0.0 for k in SCORE_KEYS}
        cat = {k: torch.cat(v) for k, v in self.parts.items()}
        return parsing_scores(
            cat["video_prob"],
            cat["audio_frame_prob"],
            cat["visual_frame_prob"],
            cat["gt_audio"],
            cat["gt_visual"],
        )


def avvp_metrics_table(metrics: dict[str, Any]) -> Table:
    return format_parsing_table({k: metrics[k] for k in SCORE_KEYS})


def video_segment_labels(batch: dict[str, Any]) -> torch.Tensor:
    """t-SNE colours: each segment takes its video's first weak label."""
    labels = batch["labels"]
    first = labels.float().argmax(-1)
    return first[:, None].expand(-1, batch["frames"].shape[1])


# The release's adapters also carry two modules AVVP never runs.
_AVVP_ADAPTER_UNUSED = {
    r"^(audio|vis)_adapter_blocks_p[12]\.\d+\.(fc_caption|temporal_gated)\.": "adapter modules the release builds but never runs",
}

AVVP = register_task(
    Task(
        name="avvp",
        description="audio-visual video parsing (LLP, 25 classes, weak labels, segment-level evaluation)",
        head_config=AVVPHeadConfig,
        loss_config=AVVPLossConfig,
        build_head=build_mgn_head,
        loss=avvp_task_loss,
        make_evaluator=AVVPEvaluator,
        batch_accuracy=video_label_accuracy,
        selection_metric="segment_type",
        select_ties=True,  # the release keeps the later epoch on a tie (>=)
        metrics_table=avvp_metrics_table,
        segment_labels=video_segment_labels,
        head_inputs=("video_st",),
        target_keys=("labels",),
        unused_release_keys={**MGN_UNUSED_RELEASE_KEYS, **_AVVP_ADAPTER_UNUSED},
        release_marker="fc_prob_a.weight",
        use_mixup=True,
    )
)
