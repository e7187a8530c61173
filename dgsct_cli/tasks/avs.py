"""AVS: audio-visual segmentation on AVSBench, S4 (single source) and MS3 (multi-source)
(release AVS/avs_scripts/avs_s4 and avs_ms3: PVT_AVSModel.py, loss.py, train.py, test.py).

Two tasks, ``avs-s4`` and ``avs-ms3``, share this module: the model (the DG-SCT encoders with the
AVS adapter variants and the release's ``Pred_endecoder`` head), the losses, the metrics (M_J and
M_F exactly as ``test.py``), the data (``dgsct prepare avs --setting s4|ms3``) and mask figures.
They differ in their defaults (gamma, trainable set, loss) and release layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table

from ..models.heads.avs import (
    AVS_S4_UNUSED_RELEASE_KEYS,
    AVS_UNUSED_RELEASE_KEYS,
    NUM_STAGES,
    AVSHead,
)
from .avs_metrics import VIDEOS_PER_BATCH, f_measure, mask_iou
from .base import DataInfo, ReleaseLayout, Task, heard_text, register_task, sample_ids
from .builtin_prepare import prepare_avs_command
from .configs import AVSLossConfig, AVSMS3HeadConfig, AVSMS3LossConfig, AVSS4HeadConfig

__all__ = [
    "AVSEvaluator",
    "AVSLossConfig",
    "AVSMS3HeadConfig",
    "AVSMS3LossConfig",
    "AVSS4HeadConfig",
    "avs_loss_terms",
    "avm_cosine_loss",
    "avm_kl_loss",
    "mask_bce_loss",
]


# -- settings ----------------------------------------------------------------------------------


# -- losses ------------------------------------------------------------------------------------


def mask_bce_loss(logits: torch.Tensor, masks: torch.Tensor, frames: str = "all") -> torch.Tensor:
    """``BCELoss(sigmoid(logits), masks)`` as the release computes it (log clamped at -100).

    ``logits [B*T, 1, H, W]`` (video-major), ``masks [B, T, H, W]``; ``frames="first"`` uses rows
    0, T, 2T, ... against each clip's first mask (S4)."""
    b, t = masks.shape[:2]
    if logits.shape[0] != b * t or logits.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"mask logits {list(logits.shape)} do not fit the masks {list(masks.shape)} "
            "(model.head.grid sets the mask size: 32 * grid)"
        )
    prob = torch.sigmoid(logits)
    if frames == "first":
        return F.binary_cross_entropy(prob[::t], masks[:, :1].float())
    return F.binary_cross_entropy(prob, masks.reshape(b * t, 1, *masks.shape[-2:]).float())


def avm_kl_loss(
    logits: torch.Tensor, maps: list[torch.Tensor], audio: list[torch.Tensor], stages: list[int]
) -> torch.Tensor:
    """MS3's AVM term (avs_ms3/loss.py:23-73 with kl_flag, norm_fea False, threshold False): per
    stage, the logits average-pooled to the map's grid then sigmoid (pooling before the sigmoid),
    the map weighted by it and averaged over pixels, and ``kl_div(log(softmax(v)), softmax(a),
    'sum')``; the mean over the stages."""
    total = 0
    for stage in stages:
        v_map, a = maps[stage], audio[stage]
        a = a.reshape(-1, a.shape[-1])
        weight = torch.sigmoid(F.adaptive_avg_pool2d(logits, v_map.shape[-2:]))
        v = (v_map * weight).mean(-1).mean(-1)
        # log of the softmax, not log_softmax: the release's numbers (loss.py:68).
        total = total + F.kl_div(v.softmax(dim=-1).log(), a.softmax(dim=-1), reduction="sum")
    return total / len(stages)


def avm_cosine_loss(
    logits: torch.Tensor, maps: list[torch.Tensor], audio: list[torch.Tensor], stages: list[int]
) -> torch.Tensor:
    """S4's optional AVM term (avs_s4/loss.py:30-76, off in train.sh): sigmoid, average-pooled,
    thresholded at 0.5; the map averaged over the object pixels; ``-log(ReLU(cos) + 1e-6)``."""
    prob = torch.sigmoid(logits)
    total = 0
    for stage in stages:
        v_map, a = maps[stage], audio[stage]
        a = a.reshape(-1, a.shape[-1])
        mask = (F.adaptive_avg_pool2d(prob, v_map.shape[-2:]) > 0.5).float()
        pixels = mask.sum(-1).sum(-1)
        v = (v_map * mask).sum(-1).sum(-1) / (pixels + 1e-6)
        cos = torch.sum(F.normalize(v, dim=-1) * F.normalize(a, dim=-1), dim=-1)
        total = total + (-(F.relu(cos) + 1e-6).log()).mean()
    return total / len(stages)


def stage_outputs(outputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    maps = [outputs[f"feature_map_{i}"] for i in range(NUM_STAGES)]
    audio = [outputs[f"tpavi_audio_{i}"] for i in range(NUM_STAGES)]
    return maps, audio


def avs_loss_terms(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVSLossConfig
) -> dict[str, torch.Tensor]:
    """``{"bce": ..., "avm": ...}`` (``avm`` only when the recipe uses it)."""
    masks = batch["masks"]
    if cfg.bce_frames == "all" and "mask_valid" in batch and not bool(batch["mask_valid"].bool().all()):
        raise ValueError(
            "loss.bce_frames is 'all' but this split has masks for the first frame only (S4 train); "
            "use loss.bce_frames=first"
        )
    terms = {"bce": mask_bce_loss(outputs["mask_logits"], masks, cfg.bce_frames)}
    if cfg.avm != "none":
        maps, audio = stage_outputs(outputs)
        fn = avm_kl_loss if cfg.avm == "kl" else avm_cosine_loss
        terms["avm"] = fn(outputs["mask_logits"], maps, audio, list(cfg.avm_stages))
    return terms


def avs_total_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVSLossConfig
) -> torch.Tensor:
    terms = avs_loss_terms(outputs, batch, cfg)
    total = terms["bce"]
    if "avm" in terms:
        total = total + cfg.avm_weight * terms["avm"]
    return total


# -- metrics -----------------------------------------------------------------------------------


class AVSEvaluator:
    """M_J and M_F over a split, batched as the release's test.py batches: groups of
    ``videos_per_batch`` videos in dataset (CSV) order, whatever the loader's batch size."""

    def __init__(self, videos_per_batch: int = VIDEOS_PER_BATCH) -> None:
        self.videos_per_batch = videos_per_batch
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits [T,H,W], masks [T,H,W])
        self.miou_sum = torch.zeros((), dtype=torch.float32)  # AverageMeter: a float32 tensor sum
        self.f_sum = 0.0  # ... and a Python float sum
        self.batches = self.frames = 0
        self.per_batch: list[dict[str, float]] = []

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        masks = batch["masks"].cpu()
        valid = batch.get("mask_valid")
        if valid is not None and not bool(valid.bool().all()):
            raise ValueError(
                "AVS evaluation needs all five masks per video; this split has only the first frame's "
                "(the S4 train split): use val or test"
            )
        b, t = masks.shape[:2]
        logits = outputs["mask_logits"].detach().float().cpu().view(b, t, *masks.shape[-2:])
        for i in range(b):
            self.pending.append((logits[i], masks[i].float()))
            if len(self.pending) == self.videos_per_batch:
                self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        logits = torch.cat([p[0] for p in self.pending])
        masks = torch.cat([p[1] for p in self.pending])
        self.pending = []
        miou = mask_iou(logits, masks)
        fscore = f_measure(logits, masks)
        self.miou_sum = self.miou_sum + miou
        self.f_sum += fscore
        self.batches += 1
        self.frames += logits.shape[0]
        self.per_batch.append({"miou": miou.item(), "fscore": fscore})

    def compute(self) -> dict[str, Any]:
        self._flush()
        if not self.batches:
            return {
                "miou": 0.0,
                "fscore": 0.0,
                "miou_fraction": 0.0,
                "fscore_fraction": 0.0,
                "num_batches": 0,
            }
        miou = (self.miou_sum / self.batches).item()
        fscore = self.f_sum / self.batches
        return {
            "miou": 100.0 * miou,
            "fscore": 100.0 * fscore,
            # The release's printed values ('test miou' / 'test F_score'), unscaled.
            "miou_fraction": miou,
            "fscore_fraction": fscore,
            "num_batches": self.batches,
            "num_frames": self.frames,
            "videos_per_batch": self.videos_per_batch,
        }


def avs_metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=f"{title}: M_J {metrics['miou']:.2f}, M_F {metrics['fscore']:.2f}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("release print", justify="right")
    table.add_row("M_J (mIoU, %)", f"{metrics['miou']:.2f}", f"{metrics['miou_fraction']:.6f}")
    table.add_row(
        "M_F (F-score, beta^2 = 0.3, %)", f"{metrics['fscore']:.2f}", f"{metrics['fscore_fraction']:.6f}"
    )
    table.add_row(
        "batches",
        f"{metrics['num_batches']} of {metrics.get('videos_per_batch', VIDEOS_PER_BATCH)} videos",
        "",
    )
    return table


def pixel_accuracy_counts(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct pixels of the annotated frames (the training progress bar), as device tensors
    (boolean indexing would wait for the device to learn the count)."""
    masks = batch["masks"]
    b, t = masks.shape[:2]
    pred = outputs["mask_logits"].detach().view(b, t, *masks.shape[-2:]) > 0
    valid = batch.get("mask_valid", torch.ones(b, t, device=masks.device)).bool().to(pred.device)
    correct = ((pred == masks.bool().to(pred.device)) & valid[..., None, None]).sum()
    return correct, valid.sum() * masks[0, 0].numel()


# -- release checkpoints -----------------------------------------------------------------------


def _reduction(state: dict[str, torch.Tensor]) -> int | None:
    down = state.get("vis_adapter_blocks_p1.0.down_sampler.weight")
    norm = state.get("vis_adapter_blocks_p1.0.ln_post.weight")
    if down is None or norm is None or down.shape[0] == 0:
        return None
    return norm.shape[0] // down.shape[0]


def _avs_release_name(key: str) -> str:
    from ..convert import release_key

    return release_key(key)  # the main tasks' layout (the decoder under no prefix)


def _map_avs_state(state: dict, model: Any, unused: dict[str, str]) -> tuple[dict, list[str]]:
    """The main tasks' mapping (``head.`` + the release key); a file without the HTS-AT STFT
    kernels and mel matrix loads into a ``front_end: weights`` model with the computed ones."""
    from ..convert import map_release_state_dict
    from ..models.encoders.htsat import with_front_end

    mapped, dropped = map_release_state_dict(state, model, unused)
    audio = model.encoder.audio
    if getattr(audio, "cfg", None) is not None and audio.cfg.front_end == "weights":
        mapped = with_front_end(mapped, audio, "release state dict", prefix="encoder.audio.")
    return mapped, dropped


# -- data --------------------------------------------------------------------------------------


# -- the tasks ---------------------------------------------------------------------------------


class AVSTask(Task):
    """One AVSBench setting; ``setting`` is "s4" or "ms3"."""

    setting: str = "s4"
    default_gamma: float = 0.05
    selection_metric = "miou"
    use_mixup = True  # audioset backbone: per-segment log-mel mixup in training (avs_s4/train.py:231-234)
    prepare_name = "avs"
    prepare_help = "Prepare AVSBench S4 or MS3 (or a synthetic stand-in) for audio-visual segmentation."

    def prepare_hint(self) -> str:
        return f"avs --setting {self.setting}"

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        return AVSHead(visual_dim, audio_dim, cfg)

    def is_trainable(self, name, model_cfg):
        if getattr(model_cfg.head, "train_audio_encoder", False) and name.startswith("encoder.audio."):
            return True
        return super().is_trainable(name, model_cfg)

    def data_info(self, cache):
        return DataInfo(cache.dataset, cache.class_names, None)

    def loss(self, outputs, batch, cfg):
        return avs_total_loss(outputs, batch, cfg)

    def batch_accuracy(self, outputs, batch):
        return pixel_accuracy_counts(outputs, batch)

    def make_evaluator(self, dataset):
        return AVSEvaluator()

    def metrics_table(self, metrics):
        return avs_metrics_table(self.name.upper(), metrics)

    def segment_labels(self, batch):
        # t-SNE colours: whether the frame's mask shows a sounding object (1) or not (0).
        return (batch["masks"].flatten(2).amax(-1) > 0).long()

    def label_names(self, dataset):
        return ["no sounding object", "sounding object"]

    def prediction_rows(self, outputs, batch, dataset):
        """Per video: each frame's IoU (the release's ``mask_iou``; None where the split has no
        true mask), the predicted and true sounding areas, and the video's mean IoU."""
        from ..viz.masks import masks_and_logits

        masks, logits, valid = masks_and_logits(outputs, batch)
        t = masks.shape[1]
        rows = []
        for i, sample in enumerate(sample_ids(batch, dataset)):
            frames = []
            for k in range(t):
                has_truth = bool(valid[i, k])
                frames.append(
                    {
                        "iou": round(float(mask_iou(logits[i, k : k + 1], masks[i, k : k + 1])), 4)
                        if has_truth
                        else None,
                        "predicted_area": round(float((torch.sigmoid(logits[i, k]) > 0.5).float().mean()), 4),
                        "true_area": round(float(masks[i, k].mean()), 4) if has_truth else None,
                    }
                )
            scored = [f["iou"] for f in frames if f["iou"] is not None]
            rows.append(
                {
                    "id": sample,
                    "miou": round(sum(scored) / len(scored), 4) if scored else None,
                    "frames": frames,
                }
            )
        return rows

    def write_synthetic(self, out, videos, image_size, progress, console):
        # AVSBench frames and masks are 224 pixels whatever the model's size (it resizes).
        from ..data.avsbench import prepare_avsbench, write_synthetic_avsbench

        raw = write_synthetic_avsbench(Path(out) / "raw", self.setting, num_videos=videos)
        prepare_avsbench(raw, out, self.setting, progress=progress, console=console)

    def prepare_command(self):
        return prepare_avs_command

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        t, m = model_cfg.num_segments, model_cfg.head.mask_size
        batch["masks"] = (torch.rand(batch_size, t, m, m, generator=generator) < 0.3).float()
        batch["mask_valid"] = torch.ones(batch_size, t, dtype=torch.long)
        return batch

    # -- predictions on a user's clip (``dgsct predict``) -------------------------------------------
    frame_rule = "last_of_sixteen"  # AVSBench's frames: the last of 16 samples per second

    def split_window_outputs(self, outputs, count):
        # mask_logits are [count * T, 1, H, W], video-major: one [T, H, W] per window.
        logits = outputs["mask_logits"].float().cpu()
        per_window = logits.view(count, -1, *logits.shape[-2:])
        return [{"mask_logits": per_window[j]} for j in range(count)]

    def summarize_prediction(self, ctx, outputs):
        """Per second (per segment for a short clip): the share of the frame the model marks as
        sounding and the box around it; the masks themselves go to the picture and the video."""
        import numpy as np

        prob = ctx.per_second([torch.sigmoid(o["mask_logits"]) for o in outputs])  # [S, H, W]
        frames: dict[int, np.ndarray] = {}
        for w in ctx.windows:
            for t in range(w.frames.shape[0]):
                frames.setdefault(w.start + t, w.frames[t])
        count = prob.shape[0]
        ctx.arrays["frames"] = np.stack([frames[t] for t in range(count)])
        ctx.arrays["probability"] = prob.numpy()
        spans = ctx.spans(count)
        segments = []
        for (start, end), p, seen in zip(spans, prob, ctx.sources(count), strict=True):
            mask = p > 0.5
            box = None
            if mask.any():
                ys, xs = torch.nonzero(mask, as_tuple=True)
                h, w = mask.shape
                box = [
                    round(float(xs.min()) / w, 4),
                    round(float(ys.min()) / h, 4),
                    round(float(xs.max() + 1) / w, 4),
                    round(float(ys.max() + 1) / h, 4),
                ]
            segments.append(
                {
                    "start": round(start, 3),
                    "end": round(end, 3),
                    **seen,
                    "sounding_area": round(float(mask.float().mean()), 4),
                    "box": box,
                }
            )
        return {
            "clip": str(ctx.path),
            "task": self.name,
            "duration": round(ctx.duration, 3),
            "windows": [w.start for w in ctx.windows],
            "mask_size": list(prob.shape[-2:]),
            "segments": segments,
        }

    def prediction_table(self, summary):
        table = Table(title=f"{summary['clip']}: sounding objects", title_justify="left")
        table.add_column("time (s)")
        table.add_column("frame (s)")
        table.add_column("audio heard (s)")
        table.add_column("sounding area", justify="right")
        table.add_column("box (x0, y0, x1, y1; fraction of the frame)")
        size = summary["mask_size"]
        for s in summary["segments"]:
            table.add_row(
                f"{s['start']:g}-{s['end']:g}",
                "-" if s["frame_time"] is None else f"{s['frame_time']:g}",
                heard_text(s["audio"]),
                f"{100 * s['sounding_area']:.1f}%",
                box_text(s["box"], s["sounding_area"], size),
            )
        return table

    def draw_prediction(self, ctx, summary, path):
        """``path`` (PNG): sampled frames with the predicted masks; beside it ``<stem>.mp4``: every
        second's frame with its mask, shown for that second."""
        from ..viz.masks import draw_clip_masks

        spans = [(s["start"], s["end"]) for s in summary["segments"]]
        draw_clip_masks(
            path,
            " / ".join([f"{Path(summary['clip']).name}: sounding objects", *ctx.notes()]),
            ctx.arrays["frames"],
            ctx.arrays["probability"],
            spans,
            frame_times=[s["frame_time"] for s in summary["segments"]],
            aspect=ctx.windows[0].aspect,
        )

    def draw_predictions(
        self, model, dataset, out, *, limit, device, precision, batch_size, console=None, progress=True
    ):
        from ..viz.masks import draw_mask_predictions

        return draw_mask_predictions(
            self,
            model,
            dataset,
            Path(out),
            iou=mask_iou,
            limit=limit,
            device=device,
            precision=precision,
            batch_size=batch_size,
            console=console,
            progress=progress,
        )


def box_text(box: list[float] | None, area: float, mask_size: list[int]) -> str:
    """A box for a table: ``none`` without one, or when it is too small to show at two decimals (a
    few pixels, whose corners would all print alike); its corners otherwise."""
    if box is None:
        return "none"
    x0, y0, x1, y1 = box
    if round(x1 - x0, 2) == 0 or round(y1 - y0, 2) == 0:
        pixels = max(1, round(area * mask_size[0] * mask_size[1]))
        return f"none ({pixels} pixel{'s' if pixels > 1 else ''} of the mask)"
    return ", ".join(f"{v:.2f}" for v in box)


def _is_setting(reduction: int) -> Any:
    return lambda state: _reduction(state) == reduction


class AVSS4Task(AVSTask):
    name = "avs-s4"
    setting = "s4"
    description = "audio-visual segmentation, AVSBench S4 (single sound source; 5 frames, 224-pixel masks)"
    head_config = AVSS4HeadConfig
    loss_config = AVSLossConfig
    datasets = ("avsbench-s4",)
    comparison_metrics = (("miou", "M_J"), ("fscore", "M_F"))
    # DG-SCT (NeurIPS 2023), the AVS table (S4 columns).
    published = {
        "DG-SCT": {"miou": 80.9, "fscore": 89.2},
        "LAVisH": {"miou": 80.1, "fscore": 88.0},
        "LAVisH*": {"miou": 78.0, "fscore": 87.0},
    }
    # S4's adapters bottleneck by 8, MS3's by 2: the only difference between their key sets.
    release = ReleaseLayout(
        marker="tpavi_b1.align_channel.weight",
        unused_keys=AVS_S4_UNUSED_RELEASE_KEYS,
        map_state=_map_avs_state,
        release_name=_avs_release_name,
        matches=_is_setting(8),
    )
    recipe = "avs-s4"

    def segment_labels(self, batch):
        # S4 videos have one category each (the meta CSV's); every frame takes it.
        return batch["category"].view(-1, 1).expand(-1, batch["frames"].shape[1])

    def label_names(self, dataset):
        return list(dataset.class_names)


class AVSMS3Task(AVSTask):
    name = "avs-ms3"
    setting = "ms3"
    description = (
        "audio-visual segmentation, AVSBench MS3 (multiple sound sources; 5 frames, 224-pixel masks)"
    )
    head_config = AVSMS3HeadConfig
    loss_config = AVSMS3LossConfig
    datasets = ("avsbench-ms3",)
    comparison_metrics = (("miou", "M_J"), ("fscore", "M_F"))
    # DG-SCT (NeurIPS 2023), the AVS table (MS3 columns).
    published = {
        "DG-SCT": {"miou": 53.5, "fscore": 64.2},
        "LAVisH": {"miou": 49.8, "fscore": 60.3},
        "LAVisH*": {"miou": 49.1, "fscore": 59.9},
    }
    release = ReleaseLayout(
        marker="tpavi_b1.align_channel.weight",
        unused_keys=AVS_UNUSED_RELEASE_KEYS,
        map_state=_map_avs_state,
        release_name=_avs_release_name,
        matches=_is_setting(2),
    )
    recipe = "avs-ms3"
    prepare_name = None  # one ``dgsct prepare avs --setting ...`` for both settings


AVS_S4 = register_task(AVSS4Task())
AVS_MS3 = register_task(AVSMS3Task())
