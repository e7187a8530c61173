"""The built-in tasks' recipe sections (``model.head`` and ``loss``) and which task uses which,
in a module without torch, so that a recipe is resolved and checked without importing it
(``dgsct recipes show``). A plug-in task keeps its configs in its own module: ``register_task``
records them here too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..models.heads.configs import NUM_STAGES, AVEHeadConfig, AVSHeadConfig, FewShotHeadConfig
from ..schema import Annotated, OneOf, Range

# data/avqa.py's NEGATIVE_RULES (that module imports torch); a test keeps the two equal.
AVQA_NEGATIVE_RULES = ("release", "other_video")


# -- AVE ---------------------------------------------------------------------------------------


@dataclass
class AVELossConfig:
    """Recipe section ``loss`` for AVE."""

    # "release": BCE-with-logits applied to av_gate, which is already a probability (the release's
    # quirk, the default so published runs reproduce); "bce": plain BCE on the probability.
    gate_loss: Annotated[str, OneOf("release", "bce")] = "release"


# -- AVVP --------------------------------------------------------------------------------------


@dataclass
class AVVPHeadConfig:
    """Recipe section ``model.head`` for AVVP (the MGN head, release values by default)."""

    # None: the prepared data's class count (LLP's 25); a number pins it.
    num_classes: Annotated[int, Range(1)] | None = None
    st_dim: Annotated[int, Range(1)] = 512  # R(2+1)D-18 3-D visual features
    dim: Annotated[int, Range(1)] = 128
    temporal_dim: Annotated[int, Range(1)] = 64
    temporal_heads: Annotated[int, Range(1)] = 4
    temporal_ff_dim: Annotated[int, Range(1)] = 1024
    temporal_scale: float = 0.05
    num_heads: Annotated[int, Range(1)] = 8
    mlp_ratio: Annotated[float, Range(0, open_low=True)] = 4.0
    drop_path: Annotated[float, Range(0, 1, open_high=True)] = 0.1
    unimodal_depth: Annotated[int, Range(0)] = 3
    crossmodal_depth: Annotated[int, Range(0)] = 6
    unimodal_assign: Annotated[str, OneOf("soft", "hard")] = "soft"
    crossmodal_assign: Annotated[str, OneOf("soft", "hard")] = "soft"
    # The release discards the gated audio stream (quirk); true feeds it to the audio grouping.
    gated_audio: bool = False


@dataclass
class AVVPLossConfig:
    """Recipe section ``loss`` for AVVP."""

    # visual target = (1 - s) y + s / 2 (release: 0.9 y + 0.05)
    visual_smoothing: Annotated[float, Range(0, 1)] = 0.1


# -- AVQA --------------------------------------------------------------------------------------


def _three_widths(values: list[int]) -> None:
    if len(values) != 3:
        raise ValueError(f"match_hidden must list 3 widths (fc1, fc2, fc3), got {values}")


@dataclass
class AVQAHeadConfig:
    """Recipe section ``model.head`` for AVQA (stage 2); release values by default."""

    # "dgsct": DG-SCT's head at the Swin's width; "lavish": LAVisH's, at `width` after its
    # projections of the visual and audio tokens (yb_fc_v / yb_fc_a), without fc_a1.
    type: Annotated[str, OneOf("dgsct", "lavish")] = "dgsct"
    width: Annotated[int, Range(1)] = 512  # LAVisH's head width
    # None: the prepared data's answer count / question vocabulary (42 / 93 for MUSIC-AVQA).
    num_classes: Annotated[int, Range(1)] | None = None
    vocab_size: Annotated[int, Range(2)] | None = None
    match_hidden: Annotated[list[int], Range(1)] = field(default_factory=lambda: [512, 256, 128])
    question_embed: Annotated[int, Range(1)] | None = None  # None: the visual token width (1536)
    question_hidden: Annotated[int, Range(1)] | None = None  # None: likewise
    attention_heads: Annotated[int, Range(1)] = 4
    dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.1
    # Added to the question LSTM's forget-gate biases at initialisation (release: 0). The LSTM
    # reads the trailing <pad>s too; a small model trained briefly forgets the question there.
    lstm_forget_bias: float = 0.0
    # How training draws the negative frames: "release" keeps its r // 60 test (a negative can
    # come from the same video, dataloader_avst.py:196-199); "other_video" always another video.
    negatives: Annotated[str, OneOf(*AVQA_NEGATIVE_RULES)] = "release"

    def __post_init__(self) -> None:
        _three_widths(self.match_hidden)


@dataclass
class AVQALossConfig:
    """Recipe section ``loss`` for AVQA: CE(answer) + match_weight * CE(match pairs)."""

    match_weight: Annotated[float, Range(0)] = 0.5


@dataclass
class GroundingHeadConfig:
    """Recipe section ``model.head`` for the stage-1 grounding pre-training."""

    match_hidden: Annotated[list[int], Range(1)] = field(default_factory=lambda: [512, 256, 128])
    # The release reads MUSIC-AVQA's real videos only (avqa-train_real.json); false: every video.
    real_only: bool = True

    def __post_init__(self) -> None:
        _three_widths(self.match_hidden)


@dataclass
class GroundingLossConfig:
    """Recipe section ``loss`` for stage 1: cross-entropy over the positive/negative pairs."""


# -- AVS ---------------------------------------------------------------------------------------


@dataclass
class AVSS4HeadConfig(AVSHeadConfig):
    """``model.head`` for S4: gamma 0.05 (hard-coded, PVT_AVSModel.py:450); HTS-AT trains."""

    gamma: Annotated[float, Range(0)] = 0.05
    train_audio_encoder: bool = True


@dataclass
class AVSMS3HeadConfig(AVSHeadConfig):
    """``model.head`` for MS3: gamma 0.1 (``--gamma`` default, used by train.sh; test.sh passes
    0.05); HTS-AT frozen."""

    gamma: Annotated[float, Range(0)] = 0.1
    train_audio_encoder: bool = False


@dataclass
class AVSLossConfig:
    """Recipe section ``loss`` for AVS (S4's defaults; MS3's in :class:`AVSMS3LossConfig`)."""

    # BCE(sigmoid(logits), mask) on the first frame of each clip (S4, loss.py:7-26) or all five (MS3).
    bce_frames: Annotated[str, OneOf("first", "all")] = "first"
    # The audio - masked-visual matching term (AVM): "kl" (MS3 train.sh: KL of softmaxed features,
    # sum-reduced), "cosine" (S4's variant, off in its train.sh), or "none".
    avm: Annotated[str, OneOf("none", "kl", "cosine")] = "none"
    avm_weight: Annotated[float, Range(0)] = 0.0  # lambda_1
    avm_stages: Annotated[list[int], Range(0, NUM_STAGES - 1)] = dataclasses.field(
        default_factory=lambda: list(range(NUM_STAGES))
    )


@dataclass
class AVSMS3LossConfig(AVSLossConfig):
    """``loss`` for MS3: all five masks, 0.5 x KL AVM on the four stages (avs_ms3/train.sh:16-19)."""

    bce_frames: Annotated[str, OneOf("first", "all")] = "all"
    avm: Annotated[str, OneOf("none", "kl", "cosine")] = "kl"
    avm_weight: Annotated[float, Range(0)] = 0.5


# -- few-shot, pre-training, zero-shot ---------------------------------------------------------


@dataclass
class FewShotLossConfig:
    """Recipe section ``loss`` of the few-shot and pre-training tasks.

    The total is ``w_e L_event + w_ai L_audio_image + w_ia L_image_audio``, where the weights are
    ``weights`` ("fixed"); ``weights`` up to ``switch_epoch`` and ``late_weights`` after ("step",
    main_AVE.py:124-132); or loss-adaptive ``w_k = L_k / S + 1 / e`` with ``S = e + sum L`` and
    ``e`` the epoch, not detached ("adaptive", main_LLP_class.py:128-134 and the pre-training);
    "adaptive-ave-cls" is main_AVE_class.py:130, where a misplaced bracket makes
    ``w_ia = L_ia / e + sum L + 1 / e``.
    """

    # "segment": cross-entropy per segment; "video": on the logits averaged over the segments.
    event: Annotated[str, OneOf("segment", "video")] = "segment"
    weighting: Annotated[str, OneOf("fixed", "step", "adaptive", "adaptive-ave-cls")] = "fixed"
    weights: Annotated[list[float], Range(0)] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    late_weights: Annotated[list[float], Range(0)] | None = None
    switch_epoch: Annotated[int, Range(1)] = 10
    # The release's LLP labels are float64 (a numpy multi-hot), so its soft cross-entropy and the
    # weighted total are float64 (few-shot dataloader.py:45-63).
    float64_targets: bool = False

    def __post_init__(self) -> None:
        if len(self.weights) != 3 or (self.late_weights is not None and len(self.late_weights) != 3):
            raise ValueError(
                "weights and late_weights need three numbers (event, audio->image, image->audio)"
            )
        if self.weighting == "step" and self.late_weights is None:
            raise ValueError("weighting 'step' needs late_weights")


@dataclass
class BackgroundHeadConfig(FewShotHeadConfig):
    """``model.head`` of the settings with a background text class (AVE localisation, pre-training)."""

    background: bool = True


@dataclass
class VideoLossConfig(FewShotLossConfig):
    event: Annotated[str, OneOf("segment", "video")] = "video"


# -- which task uses which ---------------------------------------------------------------------


@dataclass(frozen=True)
class TaskConfigs:
    """The config types of one task's ``model.head`` and ``loss`` sections."""

    head: type
    loss: type


# The built-in tasks (each task module sets the same types as head_config / loss_config);
# register_task adds a plug-in task's.
TASK_CONFIGS: dict[str, TaskConfigs] = {
    "ave": TaskConfigs(AVEHeadConfig, AVELossConfig),
    "avvp": TaskConfigs(AVVPHeadConfig, AVVPLossConfig),
    "avqa": TaskConfigs(AVQAHeadConfig, AVQALossConfig),
    "avqa-grounding": TaskConfigs(GroundingHeadConfig, GroundingLossConfig),
    "avs-s4": TaskConfigs(AVSS4HeadConfig, AVSLossConfig),
    "avs-ms3": TaskConfigs(AVSMS3HeadConfig, AVSMS3LossConfig),
    "fewshot-ave": TaskConfigs(BackgroundHeadConfig, FewShotLossConfig),
    "fewshot-ave-cls": TaskConfigs(FewShotHeadConfig, VideoLossConfig),
    "fewshot-llp-cls": TaskConfigs(FewShotHeadConfig, VideoLossConfig),
    "vggsound40k": TaskConfigs(BackgroundHeadConfig, FewShotLossConfig),
}


def task_configs(name: str) -> TaskConfigs:
    """The config types of task ``name``; a name not built in loads the task registry (which
    imports torch) and raises ``ValueError`` naming the tasks there are."""
    if name not in TASK_CONFIGS:
        from .base import get_task

        get_task(name)  # registers a plug-in task; raises for an unknown name
    return TASK_CONFIGS[name]
