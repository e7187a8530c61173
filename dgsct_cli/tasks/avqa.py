"""AVQA: audio-visual question answering on MUSIC-AVQA, in the release's two stages.

- ``avqa-grounding`` (stage 1, AVQA/grounding_gen/): the plain encoders (no adapters) and the
  audio-visual grounding + match head, trained to tell a segment's own frame from another
  video's frame.
- ``avqa`` (stage 2, AVQA/net_grd_avst/): DG-SCT adapters and the spatial-temporal grounding
  network (``AVQA_Fusion_Net``), which starts from stage 1's ``fc_a1``, ``fc_a2``, ``fc_gl`` and
  ``fc1``..``fc4`` (``train.init_from``) and answers the question (42 answers).

Both read the cache ``dgsct prepare avqa`` writes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table

from ..data.avqa import ANSWER_VOCAB, QUESTION_TYPES, QUESTION_VOCAB
from ..models.heads.avqa import (
    AVQA_UNUSED_RELEASE_KEYS,
    AVSTHead,
    GroundingHead,
    LAVisHAVSTHead,
    interleave_pairs,
    match_labels,
)
from .base import DataInfo, ReleaseLayout, Task, register_task, sample_ids
from .builtin_prepare import prepare_avqa_command
from .configs import AVQAHeadConfig, AVQALossConfig, GroundingHeadConfig, GroundingLossConfig

__all__ = [
    "AVQAEvaluator",
    "AVQAHeadConfig",
    "AVQALossConfig",
    "GroundingEvaluator",
    "GroundingHeadConfig",
    "SUB_TYPE_KEYS",
    "avqa_loss",
    "grounding_loss",
    "per_type_accuracy",
]

# Metric keys of the nine sub-types, in the order of QUESTION_TYPES (the release's printout).
SUB_TYPE_KEYS = (
    "audio_counting",
    "audio_comparative",
    "visual_counting",
    "visual_location",
    "av_existential",
    "av_counting",
    "av_location",
    "av_comparative",
    "av_temporal",
)
# The paper's columns: question-weighted over their sub-types (main_avst.py:199-221).
GROUP_KEYS = {
    "audio_accuracy": ("Audio", "AQ"),
    "visual_accuracy": ("Visual", "VQ"),
    "audio_visual_accuracy": ("Audio-Visual", "AVQ"),
}
TRANSFER_MODULES = ("head.fc_a1", "head.fc_a2", "head.fc_gl", "head.fc1", "head.fc2", "head.fc3", "head.fc4")


# -- losses ---------------------------------------------------------------------------------------


def avqa_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: AVQALossConfig) -> torch.Tensor:
    """CE(answer) + w * CE(match) over the pairs interleaved positive 0, negative 0, ... with
    labels 1, 0, ... (main_avst.py:98-103). Without negatives only the answer term counts."""
    loss = F.cross_entropy(outputs["answer_logits"], batch["answer"].view(-1))
    if "match_logits_negative" in outputs and cfg.match_weight:
        logits, labels = interleave_pairs(outputs["match_logits_positive"], outputs["match_logits_negative"])
        loss = loss + cfg.match_weight * F.cross_entropy(logits, labels)
    return loss


def grounding_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any] | None = None, cfg: Any = None
) -> torch.Tensor:
    """CE of stage 1's interleaved match logits against 1, 0, 1, 0, ... (main_grd_gen.py:42-48)."""
    logits = outputs["match_logits"]
    return F.cross_entropy(logits, match_labels(logits.shape[0], logits.device))


# -- metrics --------------------------------------------------------------------------------------


def _percent(correct: int, count: int) -> float | None:
    return 100.0 * correct / count if count else None


def per_type_accuracy(
    correct: torch.Tensor,
    question_type: torch.Tensor,
    template: torch.Tensor | None = None,
    templates: list[str] | None = None,
) -> dict[str, Any]:
    """The release's test breakdown (main_avst.py:141-224) from per-question correctness.

    ``accuracy`` is correct/total over every question; ``audio_accuracy``, ``visual_accuracy``
    and ``audio_visual_accuracy`` pool the questions of their sub-types (question-weighted, not
    a mean of sub-type accuracies); one key per sub-type (``SUB_TYPE_KEYS``); ``question_counts``;
    and, with templates, ``per_template`` {template: {questions, correct, accuracy}}. A sub-type
    without questions is None (the release divides by zero there)."""
    correct = correct.long().view(-1)
    question_type = question_type.long().view(-1)
    counts = {k: int((question_type == i).sum()) for i, k in enumerate(SUB_TYPE_KEYS)}
    hits = {k: int(correct[question_type == i].sum()) for i, k in enumerate(SUB_TYPE_KEYS)}
    out: dict[str, Any] = {"accuracy": _percent(int(correct.sum()), correct.numel()) or 0.0}
    for key, (modality, _) in GROUP_KEYS.items():
        members = [k for k, t in zip(SUB_TYPE_KEYS, QUESTION_TYPES) if t[0] == modality]
        out[key] = _percent(sum(hits[k] for k in members), sum(counts[k] for k in members))
    for k in SUB_TYPE_KEYS:
        out[k] = _percent(hits[k], counts[k])
    out["question_counts"] = {**counts, "other": int((question_type < 0).sum()), "total": correct.numel()}
    if template is not None:
        template = template.long().view(-1)
        per: dict[str, Any] = {}
        for i in sorted(set(template.tolist())):
            name = templates[i] if templates and 0 <= i < len(templates) else str(i)
            n, c = int((template == i).sum()), int(correct[template == i].sum())
            per[name] = {"questions": n, "correct": c, "accuracy": _percent(c, n)}
        out["per_template"] = per
    return out


class AVQAEvaluator:
    """Answer accuracy over the split with the per-type breakdown."""

    def __init__(self, templates: list[str] | None = None) -> None:
        self.templates = list(templates or [])
        self.parts: dict[str, list[torch.Tensor]] = {"correct": [], "question_type": [], "template": []}

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        pred = outputs["answer_logits"].argmax(-1).cpu()
        self.parts["correct"].append(pred == batch["answer"].view(-1).cpu())
        self.parts["question_type"].append(batch["question_type"].view(-1).cpu())
        self.parts["template"].append(batch["template"].view(-1).cpu())

    def compute(self) -> dict[str, Any]:
        if not self.parts["correct"]:
            return per_type_accuracy(torch.zeros(0), torch.zeros(0), torch.zeros(0), self.templates)
        cat = {k: torch.cat(v) for k, v in self.parts.items()}
        return per_type_accuracy(cat["correct"], cat["question_type"], cat["template"], self.templates)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def avqa_metrics_table(metrics: dict[str, Any]) -> Table:
    """The paper's AQ / VQ / AVQ / Avg with the nine sub-types under their group."""
    counts = metrics.get("question_counts", {})
    table = Table(title=f"AVQA answer accuracy: {metrics['accuracy']:.2f}% (Avg)")
    for name, justify in (("question type", "left"), ("accuracy %", "right"), ("questions", "right")):
        table.add_column(name, justify=justify)
    for group, (modality, short) in GROUP_KEYS.items():
        members = [(k, t) for k, t in zip(SUB_TYPE_KEYS, QUESTION_TYPES) if t[0] == modality]
        n = sum(counts.get(k, 0) for k, _ in members)
        table.add_row(f"[bold]{modality} ({short})", f"[bold]{_fmt(metrics.get(group))}", str(n))
        for key, (_, kind) in members:
            table.add_row(f"  {kind}", _fmt(metrics.get(key)), str(counts.get(key, 0)))
    table.add_section()
    table.add_row("[bold]Overall (Avg)", f"[bold]{metrics['accuracy']:.2f}", str(counts.get("total", "")))
    return table


class GroundingEvaluator:
    """Stage 1: accuracy over the positive and negative pairs (the release's pair accuracy)."""

    def __init__(self) -> None:
        self.correct = {"positive": 0, "negative": 0}
        self.count = 0

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        self.correct["positive"] += int((outputs["match_logits_positive"].argmax(-1) == 1).sum())
        self.correct["negative"] += int((outputs["match_logits_negative"].argmax(-1) == 0).sum())
        self.count += outputs["match_logits_positive"].shape[0]

    def compute(self) -> dict[str, Any]:
        n = self.count
        return {
            "accuracy": _percent(self.correct["positive"] + self.correct["negative"], 2 * n) or 0.0,
            "positive_accuracy": _percent(self.correct["positive"], n),
            "negative_accuracy": _percent(self.correct["negative"], n),
            "num_pairs": 2 * n,
        }


# -- prepare --------------------------------------------------------------------------------------


# -- the two tasks --------------------------------------------------------------------------------


class _AVQAData:
    """What both stages read: the AVQA cache (answers as classes, the vocabulary in ``extra``)."""

    datasets = ("avqa",)
    prepare_name = "avqa"
    prepare_help = (
        "Prepare MUSIC-AVQA for AVQA (or a synthetic stand-in): questions, vocabularies, frames, audio."
    )
    use_mixup = True  # both stages mix log-mels per segment (audioset backbone)
    select_ties = True  # both keep the later epoch on a tie (>=)

    def data_info(self, cache):
        from ..data.avqa import cache_info

        info = cache_info(cache)
        extra = {"question_vocab": list(info["question_vocab"]), "templates": list(info.get("templates", []))}
        return DataInfo(cache.dataset, cache.class_names, None, extra)

    def write_synthetic(self, out, videos, image_size, progress, console):
        from ..data.avqa import prepare_avqa
        from ..data.avqa_synthetic import write_synthetic_avqa

        write_synthetic_avqa(out / "raw", num_videos=videos)
        # In-process, as data/synthetic.py's tiny sets (a decoding pool costs more than it saves).
        prepare_avqa(out / "raw", out, workers=1, image_size=image_size, progress=progress, console=console)

    def prepare_command(self):
        return prepare_avqa_command

    @staticmethod
    def _dataset_kwargs(model_cfg, data_cfg) -> dict[str, Any]:
        from ..models.encoders.base import get_family

        mean, std = get_family(model_cfg.family).normalization(model_cfg.visual)
        return {
            "image_size": model_cfg.visual.img_size,
            "segment_tiling": data_cfg.segment_tiling,
            "sample_rate": model_cfg.audio.sample_rate,
            "mean": mean,
            "std": std,
        }


class AVQATask(_AVQAData, Task):
    name = "avqa"
    description = "audio-visual question answering (MUSIC-AVQA, 42 answers, spatial-temporal grounding)"
    head_config = AVQAHeadConfig
    loss_config = AVQALossConfig
    default_num_classes = len(ANSWER_VOCAB)
    selection_metric = "accuracy"
    comparison_metrics = (
        ("audio_accuracy", "AQ"),
        ("visual_accuracy", "VQ"),
        ("audio_visual_accuracy", "AVQ"),
        ("accuracy", "Avg"),
    )
    # DG-SCT (NeurIPS 2023), the AVQA table.
    published = {
        "DG-SCT": {
            "audio_accuracy": 77.4,
            "visual_accuracy": 81.9,
            "audio_visual_accuracy": 70.7,
            "accuracy": 74.8,
        },
        "LAVisH": {
            "audio_accuracy": 75.7,
            "visual_accuracy": 80.4,
            "audio_visual_accuracy": 70.4,
            "accuracy": 74.0,
        },
        "LAVisH*": {
            "audio_accuracy": 75.4,
            "visual_accuracy": 79.6,
            "audio_visual_accuracy": 70.1,
            "accuracy": 73.6,
        },
    }
    release = ReleaseLayout(marker="question_encoder.word2vec.weight", unused_keys=AVQA_UNUSED_RELEASE_KEYS)
    recipe = "avqa"
    label_kinds = ("answer", "type")

    def resolve_head(self, head_cfg, data, where="recipe"):
        checks = (
            ("num_classes", "answers", data.class_names if data else None, len(ANSWER_VOCAB)),
            (
                "vocab_size",
                "question words",
                data.extra.get("question_vocab") if data else None,
                len(QUESTION_VOCAB),
            ),
        )
        for key, what, values, default in checks:
            pinned = getattr(head_cfg, key)
            if values is not None and pinned is not None and pinned != len(values):
                raise ValueError(
                    f"{where}: model.head.{key} is {pinned} but the AVQA data has {len(values)} {what}; "
                    "remove the key to take the data's"
                )
            if pinned is None:
                head_cfg = replace(head_cfg, **{key: len(values) if values is not None else default})
        return head_cfg

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        shared = dict(
            num_answers=cfg.num_classes,
            vocab_size=cfg.vocab_size,
            match_hidden=tuple(cfg.match_hidden),
            question_embed=cfg.question_embed,
            question_hidden=cfg.question_hidden,
            attention_heads=cfg.attention_heads,
            dropout=cfg.dropout,
            forget_bias=cfg.lstm_forget_bias,
        )
        if cfg.type == "lavish":
            return LAVisHAVSTHead(visual_dim, audio_dim, width=cfg.width, **shared)
        return AVSTHead(visual_dim, audio_dim, **shared)

    def model_inputs(self, batch):
        inputs = {"frames": batch["frames"], "audio": batch["audio"], "question": batch["question"]}
        if "negative_frames" in batch:
            inputs["negative_frames"] = batch["negative_frames"]
        return inputs

    def open_dataset(self, cache, split, model_cfg, data_cfg):
        from ..data.avqa import AVQADataset

        # Negatives only where the loss uses them (training); evaluation reads the answer alone.
        training = split == data_cfg.train_split
        negatives = model_cfg.head.negatives if training else None
        return AVQADataset(cache, split, negatives=negatives, **self._dataset_kwargs(model_cfg, data_cfg))

    def loss(self, outputs, batch, cfg):
        return avqa_loss(outputs, batch, cfg)

    def batch_accuracy(self, outputs, batch):
        pred = outputs["answer_logits"].detach().argmax(-1)
        return (pred == batch["answer"].view(-1).to(pred.device)).sum(), pred.numel()

    def make_evaluator(self, dataset):
        return AVQAEvaluator(getattr(dataset, "templates", None))

    def metrics_table(self, metrics):
        return avqa_metrics_table(metrics)

    def segment_labels(self, batch, kind=None):
        """t-SNE colours: each segment takes its question's answer (``type``: its question type,
        9 = a type outside the nine)."""
        values = batch["question_type"] if kind == "type" else batch["answer"]
        values = values.view(-1, 1)
        if kind == "type":
            values = torch.where(values < 0, torch.full_like(values, len(QUESTION_TYPES)), values)
        return values.expand(-1, batch["frames"].shape[1])

    def label_names(self, dataset, kind=None):
        if kind == "type":
            return [*("/".join(t) for t in QUESTION_TYPES), "other"]
        return list(dataset.class_names)

    def prediction_rows(self, outputs, batch, dataset):
        """Per question: its words and type, the answer and its probability, the true answer."""
        names = list(dataset.class_names)
        probs = torch.softmax(outputs["answer_logits"].float(), -1).cpu()
        vocab = getattr(dataset, "question_vocab", None)
        rows = []
        for i, sample in enumerate(sample_ids(batch, dataset)):
            answer, kind = int(probs[i].argmax()), int(batch["question_type"].view(-1)[i])
            true = int(batch["answer"].view(-1)[i])
            words = [vocab[w] for w in batch["question"][i].tolist() if w] if vocab else None
            rows.append(
                {
                    "id": sample,
                    "question_id": int(batch["question_id"].view(-1)[i]),
                    "question": " ".join(words) if words is not None else None,
                    "question_type": "/".join(QUESTION_TYPES[kind])
                    if 0 <= kind < len(QUESTION_TYPES)
                    else "other",
                    "answer": names[answer],
                    "probability": round(float(probs[i, answer]), 4),
                    "true_answer": names[true],
                    "true_answer_probability": round(float(probs[i, true]), 4),
                    "correct": answer == true,
                }
            )
        return rows

    # -- predictions on a user's clip: the whole clip is one sample, read as prepare reads a video
    frame_rule = "linspace_1fps"
    predict_whole_clip = True
    predict_options = ("question",)

    def default_data_info(self, num_classes):
        if num_classes not in (None, len(ANSWER_VOCAB)):
            return None
        return DataInfo("avqa", list(ANSWER_VOCAB), None, {"question_vocab": list(QUESTION_VOCAB)})

    def predict_inputs(self, ctx, window):
        from ..data.avqa import user_question_ids

        if "question_ids" not in ctx.arrays:
            question = ctx.options.get("question")
            if not question:
                raise ValueError('an AVQA model answers a question about the clip: give --question "..."')
            vocab = ctx.info.extra.get("question_vocab") or list(QUESTION_VOCAB)
            words, ids = user_question_ids(question, vocab)
            ctx.arrays["question_words"], ctx.arrays["question_ids"] = words, ids
        return {"question": torch.tensor(ctx.arrays["question_ids"], dtype=torch.long)}

    def summarize_prediction(self, ctx, outputs):
        """The answer to ``--question`` and the top five answers with their probabilities."""
        probs = torch.softmax(outputs[0]["answer_logits"].float(), -1)
        names = ctx.info.class_names
        top = torch.topk(probs, min(5, probs.numel()))
        answers = [[names[int(i)], round(float(v), 4)] for v, i in zip(top.values, top.indices)]
        return {
            "clip": str(ctx.path),
            "task": self.name,
            "duration": round(ctx.duration, 3),
            "question": ctx.options.get("question"),
            "question_words": ctx.arrays["question_words"],
            "answer": answers[0][0],
            "top_answers": answers,
            # The segments the model read: each one's frame time and the audio it heard (seconds).
            "segments": ctx.sources(ctx.windows[0].frames.shape[0]),
        }

    def prediction_table(self, summary):
        table = Table(title=f"{summary['clip']}: {summary['question']}", title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("answer")
        table.add_column("probability", justify="right")
        for rank, (answer, p) in enumerate(summary["top_answers"], 1):
            table.add_row(str(rank), answer, f"{p:.3f}")
        return table

    def draw_prediction(self, ctx, summary, path):
        from ..viz.timeline import draw_answers, frame_strip

        draw_answers(
            path,
            f"{Path(summary['clip']).name}: AVQA",
            frame_strip(ctx.windows),
            summary["question"],
            [tuple(a) for a in summary["top_answers"]],
            aspect=ctx.windows[0].aspect,
            notes=ctx.notes(),
        )

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        head = model_cfg.head
        batch["negative_frames"] = torch.randn(batch["frames"].shape, generator=generator)
        batch["question"] = torch.randint(1, head.vocab_size, (batch_size, 14), generator=generator)
        batch["answer"] = torch.randint(0, head.num_classes, (batch_size, 1), generator=generator)
        return batch


class AVQAGroundingTask(_AVQAData, Task):
    name = "avqa-grounding"
    description = "AVQA stage 1: audio-visual grounding pre-training on MUSIC-AVQA (plain encoders)"
    head_config = GroundingHeadConfig
    loss_config = GroundingLossConfig
    selection_metric = "accuracy"
    # Every key of the stage-1 file is also in stage 2's: a file with the question encoder is
    # stage 2's, whatever order the tasks are tried in.
    release = ReleaseLayout(
        marker="fc_gl.weight", matches=lambda state: "question_encoder.word2vec.weight" not in state
    )
    recipe = "avqa-grounding"

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        return GroundingHead(visual_dim, audio_dim, tuple(cfg.match_hidden))

    def model_inputs(self, batch):
        return {
            "frames": batch["frames"],
            "audio": batch["audio"],
            "negative_frames": batch["negative_frames"],
        }

    def open_dataset(self, cache, split, model_cfg, data_cfg):
        from ..data.avqa import GroundingDataset

        if model_cfg.num_segments != 1:
            raise ValueError(
                f"avqa-grounding reads one segment per item: model.num_segments must be 1, got {model_cfg.num_segments}"
            )
        rng = None if split == data_cfg.train_split else "eval"  # fixed negatives for validation
        return GroundingDataset(
            cache,
            split,
            real_only=model_cfg.head.real_only,
            rng=rng,
            **self._dataset_kwargs(model_cfg, data_cfg),
        )

    def loss(self, outputs, batch, cfg):
        return grounding_loss(outputs)

    def batch_accuracy(self, outputs, batch):
        pos = outputs["match_logits_positive"].detach().argmax(-1)
        neg = outputs["match_logits_negative"].detach().argmax(-1)
        return (pos == 1).sum() + (neg == 0).sum(), 2 * pos.numel()

    def make_evaluator(self, dataset):
        return GroundingEvaluator()

    def metrics_table(self, metrics):
        table = Table(title=f"AVQA grounding (stage 1): pair accuracy {metrics['accuracy']:.2f}%")
        table.add_column("pairs")
        table.add_column("accuracy %", justify="right")
        table.add_row("audio with its own frame (match)", _fmt(metrics["positive_accuracy"]))
        table.add_row("audio with another video's frame", _fmt(metrics["negative_accuracy"]))
        table.add_row("all", _fmt(metrics["accuracy"]))
        return table

    def segment_labels(self, batch, kind=None):
        return torch.ones(batch["frames"].shape[:2], dtype=torch.long)

    def prediction_rows(self, outputs, batch, dataset):
        """Per (video, second): p(match) of the audio with its own frame (true: match) and with
        another video's frame (true: no match)."""
        positive = torch.softmax(outputs["match_logits_positive"].float(), -1)[:, 1].cpu()
        negative = torch.softmax(outputs["match_logits_negative"].float(), -1)[:, 1].cpu()
        return [
            {
                "id": sample,
                "own_frame_match_probability": round(float(positive[i]), 4),
                "other_frame_match_probability": round(float(negative[i]), 4),
                "correct": [bool(positive[i] > 0.5), bool(negative[i] <= 0.5)],
            }
            for i, sample in enumerate(sample_ids(batch, dataset))
        ]

    def label_names(self, dataset, kind=None):
        return list(dataset.class_names)

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        batch["negative_frames"] = torch.randn(batch["frames"].shape, generator=generator)
        return batch


AVQA = register_task(AVQATask())
AVQA_GROUNDING = register_task(AVQAGroundingTask())
