"""AVVP: audio-visual video parsing on LLP, head = MGN (release AVVP/nets/mgn.py, AVVP/main.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from ..data.avvp import AVVP_CLASSES
from ..models.heads.mgn import (
    MGN_UNUSED_RELEASE_KEYS,
    MGNHead,
    avvp_loss,
)
from .avvp_metrics import SCORE_KEYS, format_parsing_table, parsing_scores
from .base import DataInfo, ReleaseLayout, Task, label_runs, register_task, sample_ids
from .builtin_prepare import prepare_avvp_command
from .configs import AVVPHeadConfig, AVVPLossConfig

__all__ = ["AVVP_CLASSES", "AVVPHeadConfig", "AVVPLossConfig", "parsing_scores"]


def build_mgn_head(visual_dim: int, audio_dim: int, cfg: AVVPHeadConfig) -> MGNHead:
    return MGNHead(visual_dim=visual_dim, audio_dim=audio_dim, **asdict(cfg))


def avvp_task_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVVPLossConfig
) -> torch.Tensor:
    return avvp_loss(outputs, batch["labels"], cfg.visual_smoothing)


def video_label_accuracy(outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Per (video, class) agreement of the video-level prediction with the weak labels."""
    pred = (outputs["video_prob"].detach() >= 0.5).long()
    labels = batch["labels"].long().to(pred.device)
    return (pred == labels).sum(), labels.numel()


class AVVPEvaluator:
    """Collects predictions over the split and scores them exactly as the release (section A.6)."""

    def __init__(self) -> None:
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


class AVVPTask(Task):
    name = "avvp"
    description = "audio-visual video parsing (LLP, 25 classes, weak labels, segment-level evaluation)"
    head_config = AVVPHeadConfig
    loss_config = AVVPLossConfig
    datasets = ("avvp",)
    default_num_classes = 25
    selection_metric = "segment_type"
    select_ties = True  # the release keeps the later epoch on a tie (>=)
    comparison_metrics = tuple(
        (k, k.replace("segment_", "seg ").replace("event_", "evt ")) for k in SCORE_KEYS
    )
    # DG-SCT (NeurIPS 2023), the AVVP table.
    published = {
        "DG-SCT": dict(
            zip(SCORE_KEYS, (59.0, 59.4, 52.8, 57.1, 57.0, 49.2, 56.1, 46.1, 50.5, 49.1), strict=True)
        )
    }
    use_mixup = True
    predict_options = ("r2plus1d_weights",)
    release = ReleaseLayout(
        marker="fc_prob_a.weight", unused_keys={**MGN_UNUSED_RELEASE_KEYS, **_AVVP_ADAPTER_UNUSED}
    )
    recipe = "avvp"
    prepare_name = "avvp"
    prepare_help = "Prepare the LLP dataset for AVVP (or a synthetic stand-in), with its 3-D visual features."

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        return build_mgn_head(visual_dim, audio_dim, cfg)

    def model_inputs(self, batch):
        return {"frames": batch["frames"], "audio": batch["audio"], "video_st": batch["video_st"]}

    def loss(self, outputs, batch, cfg):
        return avvp_task_loss(outputs, batch, cfg)

    def batch_accuracy(self, outputs, batch):
        return video_label_accuracy(outputs, batch)

    def make_evaluator(self, dataset):
        return AVVPEvaluator()

    def metrics_table(self, metrics):
        return avvp_metrics_table(metrics)

    def segment_labels(self, batch):
        return video_segment_labels(batch)

    def prediction_rows(self, outputs, batch, dataset):
        """Per video: the classes the video-level head keeps (p >= 0.5) against the weak labels;
        per segment the audio and visual events by the release's rule (frame probability >= 0.5
        where the video-level head says >= 0.5) with their probabilities, against the segment
        ground truth where the split has it."""
        names = list(dataset.class_names)
        video = outputs["video_prob"].float().cpu()
        keep = video >= 0.5
        probs = {m: outputs[f"{m}_frame_prob"].float().cpu() for m in ("audio", "visual")}
        rows = []
        for i, sample in enumerate(sample_ids(batch, dataset)):
            segments = []
            for t in range(probs["audio"].shape[1]):
                seg: dict[str, Any] = {}
                for m in ("audio", "visual"):
                    on = ((probs[m][i, t] >= 0.5) & keep[i]).nonzero().view(-1).tolist()
                    seg[m] = [[names[c], round(float(probs[m][i, t, c]), 4)] for c in on]
                    truth = batch.get(f"gt_{m}")
                    if truth is not None:
                        seg[f"true_{m}"] = [names[c] for c in (truth[i, t] > 0.5).nonzero().view(-1).tolist()]
                segments.append(seg)
            rows.append(
                {
                    "id": sample,
                    "video": [
                        [names[c], round(float(video[i, c]), 4)] for c in keep[i].nonzero().view(-1).tolist()
                    ],
                    "true_video": [names[c] for c in (batch["labels"][i] > 0.5).nonzero().view(-1).tolist()],
                    "segments": segments,
                }
            )
        return rows

    def write_synthetic(self, out, videos, image_size, progress, console):
        from ..data.synthetic import prepare_synthetic_llp

        prepare_synthetic_llp(out, videos, image_size, progress, console)

    def prepare_command(self):
        return prepare_avvp_command

    def default_data_info(self, num_classes):
        n = num_classes or len(AVVP_CLASSES)
        return DataInfo("avvp", list(AVVP_CLASSES[:n]), None)

    def predict_inputs(self, ctx, window):
        """The 3-D visual features of the window, computed with the user's r2plus1d_18 file."""
        from ..data.r2plus1d import compute_video_st

        weights = ctx.options.get("r2plus1d_weights")
        if not weights:
            raise ValueError(
                "AVVP predictions need the 3-D visual features: pass --r2plus1d-weights FILE "
                "(a torchvision r2plus1d_18 state dict)"
            )
        w = ctx.windows[window]
        start = w.start if len(ctx.windows) > 1 else 0
        return {"video_st": torch.from_numpy(compute_video_st(str(ctx.path), str(weights), start=start))}

    def summarize_prediction(self, ctx, outputs):
        """The parsing: audio, visual and audio-visual events with onsets and offsets, by the
        release's rule (frame probability >= 0.5, kept where the video-level head says >= 0.5)."""
        t = outputs[0]["audio_frame_prob"].shape[0]
        video = ctx.per_second([o["video_prob"].expand(t, -1) for o in outputs]) >= 0.5
        audio = (ctx.per_second([o["audio_frame_prob"] for o in outputs]) >= 0.5) & video
        visual = (ctx.per_second([o["visual_frame_prob"] for o in outputs]) >= 0.5) & video
        spans = ctx.spans(audio.shape[0])
        names = ctx.info.class_names
        events = []
        for modality, active in (("audio", audio), ("visual", visual), ("audio-visual", audio & visual)):
            for c in range(active.shape[1]):
                labels = [names[c] if bool(x) else "" for x in active[:, c]]
                for run in label_runs(labels, spans, skip=""):
                    events.append(
                        {
                            "modality": modality,
                            "class": run["label"],
                            "onset": run["start"],
                            "offset": run["end"],
                        }
                    )
        return {
            "clip": str(ctx.path),
            "task": self.name,
            "duration": round(ctx.duration, 3),
            "windows": [w.start for w in ctx.windows],
            # What each second (segment, for a short clip) saw: its frame's time and the audio heard.
            "segments": [
                {"start": round(a, 3), "end": round(b, 3), **seen}
                for (a, b), seen in zip(spans, ctx.sources(len(spans)), strict=True)
            ],
            "video_probabilities": {
                names[c]: round(float(p), 4)
                for c, p in enumerate(torch.stack([o["video_prob"] for o in outputs]).mean(0))
            },
            "events": events,
        }

    def prediction_table(self, summary):
        table = Table(title=f"{summary['clip']}: AVVP parsing", title_justify="left")
        for column in ("modality", "class", "onset (s)", "offset (s)"):
            table.add_column(column)
        for e in summary["events"]:
            table.add_row(e["modality"], e["class"], f"{e['onset']:g}", f"{e['offset']:g}")
        if not summary["events"]:
            table.add_row("-", "no event found", "", "")
        return table

    def draw_prediction(self, ctx, summary, path):
        from ..viz.timeline import class_colours, draw_tracks, frame_strip

        names = ctx.info.class_names
        colours = dict(zip(names, class_colours(len(names)), strict=True))
        tracks = [
            (m, [(e["onset"], e["offset"], e["class"]) for e in summary["events"] if e["modality"] == m])
            for m in ("audio", "visual", "audio-visual")
        ]
        draw_tracks(
            path,
            f"{Path(summary['clip']).name}: AVVP parsing",
            frame_strip(ctx.windows),
            ctx.timeline_end(),
            tracks,
            colours,
            aspect=ctx.windows[0].aspect,
            notes=ctx.notes(),
        )

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        head, t = model_cfg.head, model_cfg.num_segments
        # Weak multi-hot video labels and the R(2+1)D features the MGN head takes.
        batch["labels"] = (torch.rand(batch_size, head.num_classes, generator=generator) < 0.3).float()
        batch["video_st"] = torch.randn(batch_size, t, head.st_dim, generator=generator)
        return batch


AVVP = register_task(AVVPTask())
