"""AVE: audio-visual event localisation (release AVE/nets/net_trans.py, AVE/main_trans.py).

Two heads (``model.head.type``): DG-SCT's CMBS (a segment's class is the clip's event class where
its event logit is positive) and LAVisH's per-segment classifier (a segment's class is the argmax
over the classes and background; LAVisH AVE/main_trans.py:134), each with its release's loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table

from ..data.manifest import label_names
from ..models.heads.ave import AVE_UNUSED_RELEASE_KEYS, AVEHeadConfig, build_ave_head
from .base import (
    DataInfo,
    OtherRelease,
    ReleaseLayout,
    Task,
    heard_text,
    label_runs,
    register_task,
    sample_ids,
)
from .builtin_prepare import prepare_ave_command
from .configs import AVELossConfig


def ave_targets(batch: dict[str, Any], background: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``is_event [B, T]`` (float) and the clip's event class ``[B]`` from the batch labels."""
    segment_labels = batch["segment_labels"]
    is_event = (segment_labels != background).float()
    event = batch["event_label"].view(-1)
    return is_event, event


def lavish_loss_terms(outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """LAVisH's AVE loss (AVE/main_trans.py:100, 219): ``nn.BCELoss`` between the per-segment
    softmax and the one-hot labels (classes + background), averaged over every element."""
    logits = outputs["segment_class_logits"]
    target = F.one_hot(batch["segment_labels"].to(logits.device), logits.shape[-1]).to(logits.dtype)
    return {"segment_class": F.binary_cross_entropy(torch.softmax(logits, dim=-1), target)}


def ave_loss_terms(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVELossConfig
) -> dict[str, torch.Tensor]:
    """The four loss terms of the release (AVE/main_trans.py:119-130), as tensors (LAVisH's one
    term for its head)."""
    if "segment_class_logits" in outputs:
        return lavish_loss_terms(outputs, batch)
    background = outputs["event_logits"].shape[-1]
    is_event, event = ave_targets(batch, background)
    seg = F.binary_cross_entropy_with_logits(outputs["segment_logits"], is_event)
    if cfg.gate_loss == "release":
        gate = F.binary_cross_entropy_with_logits(outputs["av_gate"], is_event)
    else:
        gate = F.binary_cross_entropy(outputs["av_gate"].clamp(1e-7, 1 - 1e-7), is_event)
    cls = F.cross_entropy(outputs["event_logits"], event)
    av = F.cross_entropy(outputs["av_score"], event)
    return {"segment": seg, "gate": gate, "event": cls, "av_score": av}


def _sum_terms(t: dict[str, torch.Tensor]) -> torch.Tensor:
    if "segment_class" in t:
        return t["segment_class"]
    return t["segment"] + t["gate"] + t["event"] + t["av_score"]


def ave_total_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVELossConfig
) -> torch.Tensor:
    """The training loss: no per-term ``.item()``, which would stall every GPU step on a sync."""
    return _sum_terms(ave_loss_terms(outputs, batch, cfg))


def ave_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVELossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss and each term as a number (for inspection)."""
    t = ave_loss_terms(outputs, batch, cfg)
    return _sum_terms(t), {k: v.item() for k, v in t.items()}


def segment_predictions(segment_logits: torch.Tensor, event_logits: torch.Tensor) -> torch.Tensor:
    """Per-segment class: the clip's argmax event class where sigmoid(segment) > 0.5, else background."""
    background = event_logits.shape[-1]
    event = event_logits.argmax(-1, keepdim=True).expand_as(segment_logits)
    return torch.where(torch.sigmoid(segment_logits) > 0.5, event, torch.full_like(event, background))


def predicted_segments(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each segment's class ``[B, T]`` (background = the class count) by the head's own rule."""
    if "segment_class_logits" in outputs:
        return outputs["segment_class_logits"].detach().argmax(-1)
    return segment_predictions(outputs["segment_logits"].detach(), outputs["event_logits"].detach())


def segment_accuracy_counts(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any]
) -> tuple[torch.Tensor, int]:
    pred = predicted_segments(outputs)
    labels = batch["segment_labels"].to(pred.device)
    return (pred == labels).sum(), labels.numel()


class AVEEvaluator:
    """Segment accuracy over the whole split (not a mean of per-batch accuracies) + per class."""

    def __init__(self, class_names: list[str], background_index: int | None = None) -> None:
        self.class_names = list(class_names)
        self.background = len(class_names) if background_index is None else background_index
        size = len(class_names) + 1
        self.correct = torch.zeros(size, dtype=torch.long)
        self.total = torch.zeros(size, dtype=torch.long)

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        pred = predicted_segments(outputs).cpu()
        labels = batch["segment_labels"].cpu()
        self.total += torch.bincount(labels.flatten(), minlength=self.total.numel())
        self.correct += torch.bincount(labels[pred == labels], minlength=self.correct.numel())

    def compute(self) -> dict[str, Any]:
        total = int(self.total.sum())
        names = label_names(self.class_names, self.background)
        per_class = {
            names[i] if i < len(names) else str(i): (
                100.0 * int(self.correct[i]) / int(self.total[i]) if int(self.total[i]) else None
            )
            for i in range(self.total.numel())
        }
        return {
            "accuracy": 100.0 * int(self.correct.sum()) / total if total else 0.0,
            "num_segments": total,
            "per_class_accuracy": per_class,
        }


def ave_metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table(title=f"AVE segment accuracy: {metrics['accuracy']:.2f}%")
    table.add_column("class")
    table.add_column("accuracy %", justify="right")
    for name, acc in metrics["per_class_accuracy"].items():
        table.add_row(name, "-" if acc is None else f"{acc:.1f}")
    return table


def _is_lavish_ave(state: dict) -> bool:
    """LAVisH's AVE ``MMIL_Net``: one Swin (no HTS-AT), LAVisH adapters, ``mlp_class`` heads."""
    return not any(k.startswith("htsat.") for k in state) and "audio_adapter_blocks_p1.0.my_tokens" in state


class AVETask(Task):
    name = "ave"
    description = "audio-visual event localisation (AVE, 28 classes, 10 one-second segments)"
    head_config = AVEHeadConfig
    loss_config = AVELossConfig
    datasets = ("ave",)
    default_num_classes = 28
    selection_metric = "accuracy"
    comparison_metrics = (("accuracy", "accuracy"),)
    # DG-SCT (NeurIPS 2023) Table 1; the issue that added LAVisH gives two LAVisH figures.
    published = {
        "DG-SCT": {"accuracy": 82.2},
        "LAVisH": {"accuracy": [81.1, 79.7]},
        "LAVisH*": {"accuracy": 78.6},
    }
    release = ReleaseLayout(
        marker="CMBS.localize_module.classifier.weight", unused_keys=AVE_UNUSED_RELEASE_KEYS
    )
    other_releases = {
        "ave-lavish": OtherRelease(
            task="ave",
            recipe="ave-lavish",
            layout=ReleaseLayout(marker="mlp_class_2.weight", matches=_is_lavish_ave),
            description="LAVisH AVE checkpoint (the MMIL_Net of github GenjiB/LAVISH, one shared Swin-V2-L)",
        ),
    }
    recipe = "ave"
    prepare_name = "ave"
    prepare_help = "Prepare the AVE dataset (or a synthetic stand-in) for training and evaluation."

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        return build_ave_head(visual_dim, audio_dim, cfg)

    def loss(self, outputs, batch, cfg):
        return ave_total_loss(outputs, batch, cfg)

    def batch_accuracy(self, outputs, batch):
        return segment_accuracy_counts(outputs, batch)

    def make_evaluator(self, dataset):
        return AVEEvaluator(dataset.class_names, dataset.background_index)

    def metrics_table(self, metrics):
        return ave_metrics_table(metrics)

    def segment_labels(self, batch):
        return batch["segment_labels"]

    def prediction_rows(self, outputs, batch, dataset):
        """Per video: the clip's event class and its probability; per segment the prediction (the
        class where sigmoid(segment logit) > 0.5, else background), p(event) and the true label."""
        names = label_names(dataset.class_names, dataset.background_index)
        pred = segment_predictions(outputs["segment_logits"], outputs["event_logits"]).cpu()
        p_event = torch.sigmoid(outputs["segment_logits"].float()).cpu()
        p_class = torch.softmax(outputs["event_logits"].float(), -1).cpu()
        labels = batch["segment_labels"].cpu()
        rows = []
        for i, sample in enumerate(sample_ids(batch, dataset)):
            event = int(p_class[i].argmax())
            rows.append(
                {
                    "id": sample,
                    "event_class": names[event],
                    "event_class_probability": round(float(p_class[i, event]), 4),
                    "correct_segments": int((pred[i] == labels[i]).sum()),
                    "segments": [
                        {
                            "predicted": names[int(pred[i, t])],
                            "event_probability": round(float(p_event[i, t]), 4),
                            "true": names[int(labels[i, t])],
                        }
                        for t in range(labels.shape[1])
                    ],
                }
            )
        return rows

    def write_synthetic(self, out, videos, image_size, progress, console):
        from ..data.synthetic import prepare_synthetic_ave

        prepare_synthetic_ave(out, videos, image_size, progress, console)

    def prepare_command(self):
        return prepare_ave_command

    def default_data_info(self, num_classes):
        from ..data.ave import AVE_CATEGORIES

        n = num_classes or len(AVE_CATEGORIES)
        return DataInfo("ave", list(AVE_CATEGORIES[:n]), n)

    def summarize_prediction(self, ctx, outputs):
        """A per-second (per-segment for a short clip) timeline: the event class or background,
        the probability that the second holds the event, the top classes, and what the segment
        saw (its frame's time and the audio it heard, in seconds of the clip)."""
        seg = ctx.per_second([torch.sigmoid(o["segment_logits"]) for o in outputs])
        probs = ctx.per_second(
            [torch.softmax(o["event_logits"], -1).expand(o["segment_logits"].shape[0], -1) for o in outputs]
        )
        names = ctx.info.class_names
        spans = ctx.spans(len(seg))
        segments, labels = [], []
        for (start, end), p, dist, seen in zip(
            spans, seg.tolist(), probs, ctx.sources(len(seg)), strict=True
        ):
            top = torch.topk(dist, min(3, dist.numel()))
            label = names[int(top.indices[0])] if p > 0.5 else "background"
            labels.append(label)
            segments.append(
                {
                    "start": round(start, 3),
                    "end": round(end, 3),
                    **seen,
                    "label": label,
                    "event_probability": round(float(p), 4),
                    "top_classes": [
                        [names[int(i)], round(float(v), 4)] for v, i in zip(top.values, top.indices)
                    ],
                }
            )
        return {
            "clip": str(ctx.path),
            "task": self.name,
            "duration": round(ctx.duration, 3),
            "windows": [w.start for w in ctx.windows],
            "segments": segments,
            "events": label_runs(labels, spans, skip="background"),
        }

    def prediction_table(self, summary):
        table = Table(title=f"{summary['clip']}: AVE timeline", title_justify="left")
        for column in ("time (s)", "frame (s)", "audio heard (s)", "prediction", "p(event)", "top class"):
            table.add_column(column, justify="right" if column.startswith("p(") else "left")
        for s in summary["segments"]:
            name, p = s["top_classes"][0]
            table.add_row(
                f"{s['start']:g}-{s['end']:g}",
                "-" if s["frame_time"] is None else f"{s['frame_time']:g}",
                heard_text(s["audio"]),
                s["label"],
                f"{s['event_probability']:.2f}",
                f"{name} ({p:.2f})",
            )
        return table

    def draw_prediction(self, ctx, summary, path):
        from ..viz.timeline import class_colours, draw_tracks, frame_strip

        segments = summary["segments"]
        names = ctx.info.class_names
        colours = dict(zip(names, class_colours(len(names)), strict=True))
        spans = [(e["start"], e["end"], e["label"]) for e in summary["events"]]
        draw_tracks(
            path,
            f"{Path(summary['clip']).name}: AVE events",
            frame_strip(ctx.windows),
            ctx.timeline_end(),
            [("event", spans)],
            colours,
            # Each segment's probability at the middle of its place on the clip's time axis.
            curves=[
                (
                    "p(event)",
                    [(s["start"] + s["end"]) / 2 for s in segments],
                    [s["event_probability"] for s in segments],
                )
            ],
            aspect=ctx.windows[0].aspect,
            notes=ctx.notes(),
            background_label="background (no event)",
        )

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        c, t = model_cfg.head.num_classes, model_cfg.num_segments
        # Per-segment class with background = num_classes, and the clip's event class.
        batch["segment_labels"] = torch.randint(0, c + 1, (batch_size, t), generator=generator)
        batch["event_label"] = torch.randint(0, c, (batch_size, 1), generator=generator)
        return batch


AVE = register_task(AVETask())
