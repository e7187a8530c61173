"""Pre-training on VGG-Sound(40K) for zero-shot AVE and LLP (release: pretrain/main_trans.py,
zero-shot/zero_shot.py).

The model is the few-shot one (CLIP + CLAP, 48 adapters, text heads); it learns 141 classes plus a
background text class per 1-s segment, with the self-weighted logit fusion of the release's
pre-training copy and its adapter weights (alpha 0.3, beta 0.01, gamma 0.05,
pretrain/nets/net_trans.py:535-536). Validation is video accuracy (the segment-averaged 142-way
scores against the first event's class, pretrain/main_trans.py:175-224). Its checkpoints are
re-targeted to AVE's or LLP's class names for zero-shot scoring (``zero_shot_target``).
"""

from __future__ import annotations

from .base import register_task
from .builtin_prepare import SYNTHETIC_VAL_EVERY, prepare_vggsound40k_command
from .fewshot import BackgroundHeadConfig, FewShotLossConfig, FewShotTask, fewshot_release_layout

# (target dataset, metric) -> (task that reads and scores it, the release's zero-shot batch size)
# (zero-shot/zero_shot.py:65-76: batch 16 for AVE, 32 for LLP).
ZERO_SHOT_TARGETS = {
    ("ave", "segment"): ("fewshot-ave", 16),
    ("ave", "video"): ("fewshot-ave-cls", 16),
    ("llp", "video"): ("fewshot-llp-cls", 32),
}
# The paper's printed zero-shot numbers (figs/few-zero.png).
ZERO_SHOT_PUBLISHED = {("ave", "segment"): 64.7, ("ave", "video"): 76.6, ("llp", "video"): 35.8}


class VGGSound40KTask(FewShotTask):
    name = "vggsound40k"
    description = "pre-training on VGG-Sound(40K) for zero-shot (141 classes + background, per segment)"
    head_config = BackgroundHeadConfig
    loss_config = FewShotLossConfig
    datasets = ("vggsound40k",)
    default_num_classes = 141
    metric = "video"
    targets = ("segment_labels",)
    recipe = "pretrain-vggsound40k"
    release = fewshot_release_layout(142)
    prepare_name = "vggsound40k"
    prepare_help = "Prepare VGG-Sound(40K) (141 classes + background, per-second labels) for pre-training."

    def protocol_overrides(self, protocol: str) -> list[str]:
        """ "release": train on every training row, select on test, the loss-adaptive weights,
        and the per-batch mean of video accuracies at the release's eval batch of 4."""
        if protocol == "release":
            return [
                "model.head.protocol=release",
                "data.train_split=train_full",
                "data.val_split=test",
                "loss.weighting=adaptive",
                "train.eval_batch_size=4",
            ]
        return super().protocol_overrides(protocol)

    def zero_shot_target(self, dataset: str, metric: str) -> dict:
        """How ``dataset`` is scored with ``metric``: the task that reads and scores it, the
        release's batch size and the paper's number."""
        key = (dataset.lower(), metric)
        if key not in ZERO_SHOT_TARGETS:
            choices = ", ".join(f"--dataset {d} --metric {m}" for d, m in ZERO_SHOT_TARGETS)
            raise ValueError(
                f"no zero-shot scoring for --dataset {dataset} --metric {metric}; use one of: {choices}"
            )
        task, batch = ZERO_SHOT_TARGETS[key]
        return {"task": task, "release_batch_size": batch, "published": ZERO_SHOT_PUBLISHED[key]}

    def write_synthetic(self, out, videos, image_size, progress, console):
        from ..data.vggsound import prepare_vggsound40k, write_synthetic_vggsound40k

        write_synthetic_vggsound40k(out / "raw", num_videos=videos, image_size=max(image_size, 32))
        prepare_vggsound40k(
            out / "raw",
            out,
            image_size=image_size,
            val_every=SYNTHETIC_VAL_EVERY,
            progress=progress,
            console=console,
        )

    def prepare_command(self):
        return prepare_vggsound40k_command


VGGSOUND40K = register_task(VGGSound40KTask())
