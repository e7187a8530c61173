"""Few-shot tasks on the ``clip-clap`` family: AVE localisation, AVE classification and LLP
classification from K videos per class (release: few-shot/main_AVE.py, main_AVE_class.py,
main_LLP_class.py), and the scoring shared with pre-training and zero-shot.

One head (``models/heads/fewshot.py``) matches every 1-s segment against text prompts of the class
names; the settings differ in the data they read, whether a "background" text class exists,
whether the loss is per segment or per video (logits averaged over the 10 segments), how the three
loss terms are weighted, and how accuracy is counted:

| task | data | classes | event loss | release weighting | metric |
|---|---|---|---|---|---|
| ``fewshot-ave`` | AVE cache | 28 + background | per segment | 500/2/1.5, then 5/2/1.5 after epoch 10 | 29-way segment accuracy |
| ``fewshot-ave-cls`` | AVE cache | 28 | per video | loss-adaptive, with main_AVE_class.py:130's bracket | video accuracy |
| ``fewshot-llp-cls`` | AVVP (LLP) cache | 25 | per video | loss-adaptive | video accuracy |

Protocols (``model.head.protocol``): ``default`` counts an LLP prediction right when it is any of
the video's classes and skips AVE videos without an event; ``release`` compares with the lowest
true class index (so every video with Speech, 52 % of the LLP test set, needs "Speech") and counts
an event-less AVE video as class 0, and averages per-batch accuracies as the release prints them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table

from ..models.heads.fewshot import FewShotHead, FewShotHeadConfig
from .base import DataInfo, ReleaseLayout, Task, register_task, sample_ids
from .configs import BackgroundHeadConfig, FewShotLossConfig, VideoLossConfig

__all__ = [
    "FewShotEvaluator",
    "FewShotLossConfig",
    "FewShotTask",
    "combine_losses",
    "event_targets",
    "fewshot_loss_terms",
    "first_event_class",
    "soft_cross_entropy",
]

LOSS_TERMS = ("event", "audio_image", "image_audio")


# -- losses -------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``nn.CrossEntropyLoss`` with probability targets: ``-sum(t * log_softmax(x))``, mean over
    rows. The product takes the target's dtype (float64 targets give a float64 loss, as released)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def first_event_class(segment_labels: torch.Tensor, background: int) -> torch.Tensor:
    """The class of each video's first non-background segment, -1 when it has none ``[B]``
    (main_AVE_class.py:97-110)."""
    is_event = segment_labels != background
    first = is_event.float().argmax(dim=1)
    cls = segment_labels.gather(1, first[:, None]).squeeze(1)
    return torch.where(is_event.any(dim=1), cls, torch.full_like(cls, -1))


def event_targets(
    batch: dict[str, Any], num_text_classes: int, mode: str, background: int | None
) -> torch.Tensor:
    """Probability targets of the event loss: ``[B*T, C]`` per segment or ``[B, C]`` per video.

    Per video: the multi-hot ``labels`` (LLP) or the one-hot first event class of
    ``segment_labels`` (a zero row for a video without an event, which then adds zero loss)."""
    if mode == "segment":
        labels = batch["segment_labels"].reshape(-1)
        if int(labels.max()) >= num_text_classes:
            raise ValueError(
                f"a segment label is {int(labels.max())} but the head scores {num_text_classes} classes "
                "(per-segment training needs model.head.background: true for background segments)"
            )
        return F.one_hot(labels, num_text_classes).float()
    if "labels" in batch:
        return batch["labels"]
    cls = first_event_class(batch["segment_labels"], background)
    target = torch.zeros(cls.shape[0], num_text_classes, device=cls.device)
    has = cls >= 0
    target[has.nonzero().squeeze(1), cls[has]] = 1.0
    return target


def fewshot_loss_terms(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: FewShotLossConfig, background: int | None
) -> dict[str, torch.Tensor]:
    """``event`` (soft CE on the event logits), ``audio_image`` and ``image_audio`` (CE of each
    video's audio against its own frames inside the batch, main_AVE.py:115-117)."""
    scores = outputs["event_logits"]  # [B, T, C]
    c = scores.shape[-1]
    target = event_targets(batch, c, cfg.event, background)
    x = scores.reshape(-1, c) if cfg.event == "segment" else scores.mean(dim=1)
    if cfg.float64_targets and x.device.type == "mps":
        # MPS has no float64: these float64 terms (and their weighted total) run on the CPU.
        x, target = x.cpu(), target.cpu()
        outputs = {k: outputs[k].cpu() for k in ("logits_audio_image", "logits_image_audio")}
    if cfg.float64_targets:
        target = target.double()
    event = soft_cross_entropy(x, target)
    b = outputs["logits_audio_image"].shape[0]
    same = torch.arange(b, device=x.device)
    return {
        "event": event,
        "audio_image": F.cross_entropy(outputs["logits_audio_image"], same),
        "image_audio": F.cross_entropy(outputs["logits_image_audio"], same),
    }


def combine_losses(terms: dict[str, torch.Tensor], cfg: FewShotLossConfig, epoch: int) -> torch.Tensor:
    """The weighted total for ``epoch`` (1-based), by ``cfg.weighting``."""
    losses = [terms[k] for k in LOSS_TERMS]
    if cfg.weighting in ("fixed", "step"):
        w = cfg.weights if cfg.weighting == "fixed" or epoch <= cfg.switch_epoch else cfg.late_weights
        return sum(wk * lk for wk, lk in zip(w, losses))
    total = losses[0] + losses[1] + losses[2]
    s = epoch + total
    weights = [lk / s + 1 / epoch for lk in losses]
    if cfg.weighting == "adaptive-ave-cls":
        weights[2] = losses[2] / epoch + total + 1 / epoch  # main_AVE_class.py:130, as released
    return sum(wk * lk for wk, lk in zip(weights, losses))


# -- metrics ------------------------------------------------------------------------------------


class FewShotEvaluator:
    """Accuracy of the event logits ``[B, T, C]``.

    ``metric``: "segment" (argmax per segment against ``segment_labels``; a background segment is
    won only when the head has a background class) or "video" (argmax of the segment-averaged
    logits against the video's class). ``averaging``: "global" (correct / counted over the split)
    or "batch_mean" (the mean of per-batch accuracies, as few-shot eval() prints it).
    ``llp_rule``: "any" (right when the prediction is any true class) or "lowest" (the release's
    argmax of the multi-hot label). ``no_event``: "skip" an AVE video without an event, or count
    it as class 0 ("class0", the release's argmax of a zero row).
    """

    def __init__(
        self,
        metric: str,
        background: int | None,
        averaging: str = "global",
        llp_rule: str = "any",
        no_event: str = "skip",
        protocol: str = "default",
    ) -> None:
        self.metric, self.background, self.averaging = metric, background, averaging
        self.llp_rule, self.no_event, self.protocol = llp_rule, no_event, protocol
        self.correct = self.counted = 0
        self.batch_accuracies: list[float] = []

    def counts(self, scores: torch.Tensor, batch: dict[str, Any]) -> tuple[int, int]:
        """(correct, counted) of one batch."""
        if self.metric == "segment":
            pred = scores.argmax(dim=-1)
            labels = batch["segment_labels"].to(pred.device)
            return int((pred == labels).sum()), labels.numel()
        pred = scores.mean(dim=1).argmax(dim=-1)
        if "labels" in batch:
            labels = batch["labels"].to(pred.device)
            if self.llp_rule == "lowest":
                right = pred == labels.argmax(dim=-1)
            else:
                right = labels.gather(1, pred[:, None]).squeeze(1) > 0
            return int(right.sum()), pred.numel()
        target = first_event_class(batch["segment_labels"].to(pred.device), self.background)
        if self.no_event == "class0":
            target = target.clamp(min=0)
            return int((pred == target).sum()), pred.numel()
        keep = target >= 0
        return int((pred[keep] == target[keep]).sum()), int(keep.sum())

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        c, n = self.counts(outputs["event_logits"], batch)
        self.correct += c
        self.counted += n
        if n:
            self.batch_accuracies.append(100.0 * c / n)

    def compute(self) -> dict[str, Any]:
        if self.averaging == "batch_mean":
            acc = sum(self.batch_accuracies) / len(self.batch_accuracies) if self.batch_accuracies else 0.0
        else:
            acc = 100.0 * self.correct / self.counted if self.counted else 0.0
        return {
            "accuracy": acc,
            "num_correct": self.correct,
            "num_counted": self.counted,
            "metric": self.metric,
            "averaging": self.averaging,
            "protocol": self.protocol,
        }


# -- release layout ----------------------------------------------------------------------------

# Release keys of modules the few-shot model builds but never runs, or recomputes.
FEWSHOT_UNUSED_RELEASE_KEYS = {
    r"^CMBS\.": "the main AVE head (CMBS), built but never called in the few-shot model",
    r"^audio_adapter\.": "AudioAdapter, built but never called",
    r"^prompt_learner\.meta_net\.": "CoCoOp meta-net, built but its input is ignored (prompt_learner.py:217-282)",
    r"^prompt_learner\.token_(prefix|suffix)$": "prompt token embeddings, derived from the CLIP token "
    "embedding and the class names (recomputed)",
    r"\.fc_caption\.": "adapter caption projection, unused (caption is always None)",
    r"^clap_text_encoder\.text_transform\.": "CLAP's text transform, loaded but never used",
    r"^clap_text_encoder\.text_branch\.embeddings\.(position_ids|token_type_ids)$": "buffers transformers recomputes",
    r"^htsat\.(tscam_conv|head)\.": "HTS-AT's classification head, computed but unused",
    r"^htsat\..*\.(relative_position_index|attn_mask)$": "buffers timm recomputes",
}

_ADAPTERS = (
    "audio_adapter_blocks_p1.",
    "vis_adapter_blocks_p1.",
    "audio_adapter_blocks_p2.",
    "vis_adapter_blocks_p2.",
)
_HEAD = ("prompt_learner.", "clip_adapter.", "clip_adapter_text.", "audio_visual_contrastive_learner.")


def map_fewshot_state(
    state: dict[str, torch.Tensor], model, unused: dict[str, str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The release's ``MMIL_Net`` state dict (few-shot, pre-training) -> our keys.

    ``ViT.*`` -> the CLIP visual tower; ``text_encoder.*``, ``token_embedding``, ``logit_scale``
    -> the CLIP text tower; ``htsat.*`` -> CLAP's HTS-AT (merging moved to the next stage);
    ``clap_text_encoder.*`` -> CLAP's RoBERTa and text projection; ``audio_projection``, the 48
    adapters and the head by name. CLAP's ``logit_scale_a``/``logit_scale_t`` are not in the
    release's state dict (net_trans.py:653): they come from the CLAP file ``model.audio.weights``.
    """
    import re

    from ..models.encoders.clap import read_clap_file
    from ..models.encoders.htsat import htsat_key_map, htsat_unused_keys

    audio_unused = htsat_unused_keys(model.encoder.audio.cfg)
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if any(re.search(p, key) for p in unused):
            dropped.append(key)
        elif key.startswith("ViT."):
            out[f"encoder.visual.{key[len('ViT.') :]}"] = value
        elif key.startswith("text_encoder."):
            out[f"encoder.text.clip.{key[len('text_encoder.') :]}"] = value
        elif key in ("token_embedding.weight", "logit_scale"):
            out[f"encoder.text.clip.{key}"] = value
        elif key.startswith("htsat."):
            new = htsat_key_map(key[len("htsat.") :], audio_unused)
            if new is None:
                dropped.append(key)
            else:
                out[f"encoder.audio.{new}"] = value
        elif key.startswith("clap_text_encoder.text_branch."):
            out[f"encoder.text.clap.roberta.{key[len('clap_text_encoder.text_branch.') :]}"] = value
        elif key.startswith("clap_text_encoder.text_projection."):
            out[f"encoder.text.clap.{key[len('clap_text_encoder.') :]}"] = value
        elif key.startswith("audio_projection."):
            out[f"encoder.{key}"] = value
        elif key.startswith(_ADAPTERS):
            out[f"encoder.{key}"] = value
        elif key.startswith(_HEAD):
            out[f"head.{key}"] = value
        else:
            out[key] = value  # reported as unexpected by the strict load
    clap = getattr(model.cfg.audio, "weights", None)
    if clap is None:
        raise ValueError(
            "the release's few-shot state dict has no CLAP logit scales: give the CLAP file "
            "(load_official_checkpoint(..., clap=FILE) or model.audio.weights)"
        )
    clap_state = read_clap_file(clap)
    for name in ("logit_scale_a", "logit_scale_t"):
        if name not in clap_state:
            raise ValueError(f"{clap}: no '{name}' (not a CLAP checkpoint)")
        out[f"encoder.text.clap.{name}"] = clap_state[name].reshape(())
    return out, dropped


def configure_fewshot(model_cfg, options: dict[str, Any]):
    """``clap=FILE`` (the LAION CLAP file: logit scales) and ``tokenizer=DIR`` (roberta-base
    ``vocab.json`` + ``merges.txt``) for a release state dict."""
    import copy

    unknown = set(options) - {"clap", "tokenizer"}
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))} (expected clap=, tokenizer=)")
    cfg = copy.deepcopy(model_cfg)
    if options.get("clap") is not None:
        path = Path(options["clap"])
        if not path.is_file():
            raise ValueError(f"{path}: CLAP weights file not found (clap=)")
        cfg.audio.weights = str(path)
    if options.get("tokenizer") is not None:
        cfg.text.tokenizer = str(options["tokenizer"])
    return cfg


def text_class_count(n: int):
    """A release file of this task has ``n`` text classes (its prompt buffers' rows)."""

    def matches(state: dict) -> bool:
        prefix = state.get("prompt_learner.token_prefix")
        return prefix is not None and prefix.shape[0] == n

    return matches


def fewshot_release_layout(num_text_classes: int) -> ReleaseLayout:
    """The release's few-shot file layout; the three scripts' files differ only in their class count."""
    return ReleaseLayout(
        marker="prompt_learner.ctx",
        unused_keys=FEWSHOT_UNUSED_RELEASE_KEYS,
        map_state=map_fewshot_state,
        matches=text_class_count(num_text_classes),
        configure=configure_fewshot,
    )


# -- the tasks -----------------------------------------------------------------------------------


class FewShotTask(Task):
    """Shared behaviour of the CLIP + CLAP tasks; subclasses set the class attributes."""

    datasets: tuple[str, ...] = ()
    metric: str = "segment"  # what accuracy counts: "segment" or "video"

    def prepare_hint(self) -> str:
        # The few-shot tasks read the AVE / LLP caches ("ave", "avvp": their prepare commands).
        return self.prepare_name or self.datasets[0]

    targets: tuple[str, ...] = ("segment_labels",)
    single_label_shots = False  # LLP: K-shot picks single-label videos only

    # The paper's printed numbers by shot count (figs/few-zero.png), marked in sweep figures.
    published: dict[int, float] = {}

    def default_class_names(self) -> list[str]:
        """Class names when there is no data to take them from (bench, info, release files)."""
        return []

    def protocol_overrides(self, protocol: str) -> list[str]:
        """Recipe overrides of a protocol: "release" selects the checkpoint on the test split and
        scores as the release does (per-batch mean at its test batch of 2, lowest-index LLP
        label, event-less AVE videos as class 0)."""
        if protocol == "default":
            return ["model.head.protocol=default"]
        if protocol == "release":
            return ["model.head.protocol=release", "data.val_split=test", "train.eval_batch_size=2"]
        raise ValueError(f"--protocol must be default or release, got {protocol!r}")

    # -- model ---------------------------------------------------------------------------------
    def resolve_head(self, head_cfg: FewShotHeadConfig, data: DataInfo | None, where: str = "recipe"):
        """Class count and names from the data (unless the recipe pins them)."""
        head_cfg = super().resolve_head(head_cfg, data, where)
        names = list(head_cfg.class_names)
        if data is not None:
            if names and names != list(data.class_names):
                raise ValueError(
                    f"{where}: model.head.class_names differ from the {data.dataset} data's class names; "
                    "remove the key to take the data's"
                )
            names = list(data.class_names)
        if not names:
            names = self.default_class_names() or [f"class {i}" for i in range(head_cfg.num_classes)]
        if len(names) != head_cfg.num_classes:
            raise ValueError(
                f"{where}: {len(names)} class names for model.head.num_classes {head_cfg.num_classes}"
            )
        return replace(head_cfg, class_names=names)

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        if visual_dim != audio_dim:
            raise ValueError(f"the CLIP ({visual_dim}) and CLAP ({audio_dim}) embeddings must have one width")
        return FewShotHead(visual_dim, model_cfg.visual.text_width, cfg, model_cfg.text.tokenizer)

    # -- data ------------------------------------------------------------------------------------
    def open_dataset(self, cache, split, model_cfg, data_cfg):
        from ..data.fewshot import FewShotDataset, kshot_per_class, sample_classes, short_classes_warning
        from ..models.encoders.base import get_family

        mean, std = get_family(model_cfg.family).normalization(model_cfg.visual)
        indices = None
        if data_cfg.shots is not None and split == data_cfg.train_split:
            classes = [
                sample_classes(cache.samples[i], cache.background_index) for i in cache.split_indices(split)
            ]
            per_class = kshot_per_class(
                classes, data_cfg.shots, len(cache.class_names), self.single_label_shots
            )
            indices = [i for chosen in per_class for i in chosen]
            warning = short_classes_warning(per_class, data_cfg.shots, cache.class_names)
            if warning is not None:
                logging.getLogger(__name__).warning("%s: %s", cache.path, warning)
        dataset = FewShotDataset(
            cache,
            split,
            model_cfg.visual.img_size,
            model_cfg.audio.sample_rate,
            mean=mean,
            std=std,
            indices=indices,
            targets=self.targets,
            segment_tiling=data_cfg.segment_tiling,
        )
        dataset.protocol = model_cfg.head.protocol
        return dataset

    # -- training --------------------------------------------------------------------------------
    def loss(self, outputs, batch, cfg):
        terms = fewshot_loss_terms(outputs, batch, cfg, _background(batch))
        return combine_losses(terms, cfg, int(batch.get("epoch", 1)))

    def batch_accuracy(self, outputs, batch):
        ev = FewShotEvaluator(self.metric, _background(batch))
        return ev.counts(outputs["event_logits"].detach(), batch)

    def make_evaluator(self, dataset):
        release = getattr(dataset, "protocol", "default") == "release"
        return FewShotEvaluator(
            self.metric,
            dataset.background_index if dataset.background_index is not None else len(dataset.class_names),
            averaging="batch_mean" if release else "global",
            llp_rule="lowest" if release else "any",
            no_event="class0" if release else "skip",
            protocol="release" if release else "default",
        )

    def metrics_table(self, metrics):
        table = Table(title=f"{self.name}: {metrics['metric']} accuracy {metrics['accuracy']:.2f}%")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in ("accuracy", "num_correct", "num_counted", "averaging", "protocol"):
            v = metrics[key]
            table.add_row(key, f"{v:.2f}" if isinstance(v, float) else str(v))
        return table

    def segment_labels(self, batch):
        if "segment_labels" in batch:
            return batch["segment_labels"]
        # A video-level multi-hot label: its lowest class on every segment (for colours only).
        t = batch["frames"].shape[1]
        return batch["labels"].argmax(dim=-1, keepdim=True).expand(-1, t)

    def prediction_rows(self, outputs, batch, dataset):
        """Per video: the class of the segment-averaged scores and its probability against the
        video's class(es); with segment labels, per segment the top class (``background`` when the
        head has that text class) and its probability against the true label."""
        from ..data.manifest import label_names

        scores = outputs["event_logits"].float().cpu()
        names = list(dataset.class_names)
        if scores.shape[-1] > len(names):
            names.append("background")
        truth = label_names(dataset.class_names, dataset.background_index)
        segment = torch.softmax(scores, -1)
        video = torch.softmax(scores.mean(1), -1)
        rows = []
        for i, sample in enumerate(sample_ids(batch, dataset)):
            top = int(video[i].argmax())
            row: dict[str, Any] = {"id": sample, "video": [names[top], round(float(video[i, top]), 4)]}
            if "labels" in batch:  # LLP: a video's weak labels
                row["true_video"] = [truth[c] for c in (batch["labels"][i] > 0.5).nonzero().view(-1).tolist()]
            if "segment_labels" in batch:
                labels = batch["segment_labels"][i].cpu()
                background = dataset.background_index
                first = int(
                    first_event_class(labels[None], len(names) if background is None else background)[0]
                )
                row["true_video"] = [truth[first]] if first >= 0 else []
                row["segments"] = [
                    {
                        "predicted": names[int(segment[i, t].argmax())],
                        "probability": round(float(segment[i, t].max()), 4),
                        "true": truth[int(labels[t])],
                    }
                    for t in range(labels.shape[0])
                ]
            rows.append(row)
        return rows

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        c, t = model_cfg.head.num_classes, model_cfg.num_segments
        if "labels" in self.targets:
            batch["labels"] = F.one_hot(torch.randint(0, c, (batch_size,), generator=generator), c).float()
        else:
            batch["segment_labels"] = torch.randint(0, c + 1, (batch_size, t), generator=generator)
            batch["background_index"] = torch.full((batch_size,), c, dtype=torch.long)
        return batch

    # -- synthetic data ----------------------------------------------------------------------------
    def write_synthetic(self, out, videos, image_size, progress, console):
        from ..data.synthetic import prepare_synthetic_ave

        prepare_synthetic_ave(out, videos, image_size, progress, console, raw_image_size=max(image_size, 32))


def _background(batch: dict[str, Any]) -> int | None:
    """The segment label that means background (the cache's), carried by every item."""
    value = batch.get("background_index")
    return None if value is None else int(value.reshape(-1)[0])


def _ave_names() -> list[str]:
    from ..data.synthetic import AVE_CATEGORIES

    return list(AVE_CATEGORIES)


def _llp_names() -> list[str]:
    from ..data.avvp import AVVP_CLASSES

    return list(AVVP_CLASSES)


class FewShotAVETask(FewShotTask):
    name = "fewshot-ave"
    description = "few-shot AVE event localisation on CLIP + CLAP (28 classes + background, per segment)"
    head_config = BackgroundHeadConfig
    loss_config = FewShotLossConfig
    datasets = ("ave",)
    default_num_classes = 28
    metric = "segment"
    targets = ("segment_labels",)
    recipe = "fewshot-ave"
    published = {16: 72.4}
    release = fewshot_release_layout(29)

    def default_class_names(self):
        return _ave_names()


class FewShotAVEClsTask(FewShotTask):
    name = "fewshot-ave-cls"
    description = "few-shot AVE classification on CLIP + CLAP (28 classes, per video)"
    head_config = FewShotHeadConfig
    loss_config = VideoLossConfig
    datasets = ("ave",)
    default_num_classes = 28
    metric = "video"
    targets = ("segment_labels",)
    recipe = "fewshot-ave-cls"
    published = {16: 84.2}
    release = fewshot_release_layout(28)

    def default_class_names(self):
        return _ave_names()


class FewShotLLPClsTask(FewShotTask):
    name = "fewshot-llp-cls"
    description = "few-shot LLP classification on CLIP + CLAP (25 classes, per video)"
    head_config = FewShotHeadConfig
    loss_config = VideoLossConfig
    datasets = ("avvp",)
    default_num_classes = 25
    metric = "video"
    targets = ("labels",)
    single_label_shots = True
    recipe = "fewshot-llp-cls"
    published = {16: 32.6}
    release = fewshot_release_layout(25)

    def default_class_names(self):
        return _llp_names()

    def write_synthetic(self, out, videos, image_size, progress, console):
        from ..data.synthetic import prepare_synthetic_llp

        prepare_synthetic_llp(out, videos, image_size, progress, console, raw_image_size=max(image_size, 32))


FEWSHOT_AVE = register_task(FewShotAVETask())
FEWSHOT_AVE_CLS = register_task(FewShotAVEClsTask())
FEWSHOT_LLP_CLS = register_task(FewShotLLPClsTask())
