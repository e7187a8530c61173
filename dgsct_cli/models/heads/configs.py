"""The built-in heads' recipe sections (``model.head``), in a module without torch so that a
recipe is resolved and checked without importing it (``dgsct recipes show``). Each head module
builds from its config here; a plug-in head may keep its config in its own module."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...schema import Annotated, OneOf, Range

__all__ = [
    "NUM_STAGES",
    "AVEHeadConfig",
    "AVSHeadConfig",
    "AVSTemporalConfig",
    "FewShotHeadConfig",
    "TemporalConfig",
]


@dataclass
class TemporalConfig:
    """Widths of the temporal attention (the release's values by default)."""

    visual_proj: int = 512
    audio_proj: int = 128
    d_model: int = 256
    heads: int = 4
    feedforward: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.2
    gate_scale: float = 0.1


@dataclass
class AVEHeadConfig:
    """Recipe section ``model.head`` for AVE."""

    # "cmbs": DG-SCT's head (temporal attention + CMBS); "lavish": LAVisH's two linear layers on the
    # concatenated features, one class out of num_classes + background per segment.
    type: Annotated[str, OneOf("cmbs", "lavish")] = "cmbs"
    # None: the prepared data's class count (28 for AVE); a number pins it (a mismatch is an error).
    num_classes: Annotated[int, Range(1)] | None = None
    hidden: Annotated[int, Range(1)] = 512  # LAVisH's mlp_class width
    top_k: Annotated[int, Range(1)] = 4  # time steps averaged for the class-activation scores
    av_score_weight: float = 0.3
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


NUM_STAGES = 4


@dataclass
class AVSTemporalConfig:
    """Widths of the AVS temporal attention (release values by default, PVT_AVSModel.py:447-476)."""

    d_model: Annotated[int, Range(2)] = 256
    heads: Annotated[int, Range(1)] = 4
    feedforward: Annotated[int, Range(1)] = 1024
    dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.1
    input_dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.2


@dataclass
class AVSHeadConfig:
    """Recipe section ``model.head`` for AVS (the release's values by default)."""

    channels: Annotated[int, Range(2)] = 256  # decoder width: stage projections, TPAVI, FPN
    audio_dim: Annotated[int, Range(1)] = 128  # audio_linear output (the VGGish width it replaces)
    # Side of the last stage's decoder map; the stages are 8g, 4g, 2g, g and the mask is 32g
    # (PVT-v2's 56/28/14/7 grids and 224-pixel masks at g = 7).
    grid: Annotated[int, Range(1)] = 7
    # Widths of the four visual stage maps; None: the pooled width halved per stage back from the
    # last (Swin's doubling: 192, 384, 768, 1536 for Swin-V2-L).
    stage_dims: Annotated[list[int], Range(1)] | None = None
    output_hidden: Annotated[list[int], Range(1)] = field(default_factory=lambda: [128, 32])
    # Strength of the temporal attention's gates: x + gamma * gate * x. S4 hard-codes 0.05
    # (PVT_AVSModel.py:450); MS3 reads --gamma: 0.1 in train.sh, 0.05 in test.sh.
    gamma: Annotated[float, Range(0)] = 0.05
    temporal: AVSTemporalConfig = field(default_factory=AVSTemporalConfig)
    # HTS-AT (with its STFT kernels and mel matrix when model.audio.front_end is "weights") trains
    # too: S4 freezes only Swin (avs_s4/train.py:145-164), MS3 also HTS-AT (avs_ms3/train.py:118-139).
    train_audio_encoder: bool = False
    # "dgsct": DG-SCT's decoder; "lavish": LAVisH's (each stage map through a Linear to PVT-v2's
    # width, resized, then an ASPP sum of dilated 3x3 convolutions to `channels`; no temporal
    # attention: the audio goes from audio_linear straight to TPAVI).
    decoder: Annotated[str, OneOf("dgsct", "lavish")] = "dgsct"
    pvt_dims: Annotated[list[int], Range(1)] = field(default_factory=lambda: [64, 128, 320, 512])
    aspp_dilations: Annotated[list[int], Range(1)] = field(default_factory=lambda: [3, 6, 12, 18])

    def __post_init__(self) -> None:
        if len(self.output_hidden) != 2:
            raise ValueError(f"output_hidden must list 2 widths, got {self.output_hidden}")
        if self.stage_dims is not None and len(self.stage_dims) != NUM_STAGES:
            raise ValueError(f"stage_dims must list {NUM_STAGES} widths, got {self.stage_dims}")
        if len(self.pvt_dims) != NUM_STAGES:
            raise ValueError(f"pvt_dims must list {NUM_STAGES} widths, got {self.pvt_dims}")
        if self.temporal.d_model % 2:
            raise ValueError(
                f"temporal.d_model must be even (bidirectional LSTM), got {self.temporal.d_model}"
            )

    @property
    def mask_size(self) -> int:
        return 32 * self.grid


@dataclass
class FewShotHeadConfig:
    """Recipe section ``model.head`` of the few-shot, pre-training and zero-shot tasks."""

    num_classes: Annotated[int, Range(1)] | None = None  # from the data unless pinned
    class_names: list[str] = field(default_factory=list)  # from the data (text prompts are built from them)
    # A "background" text class after the class names (AVE localisation and pre-training score it
    # like any other class; the classification settings and zero-shot have none).
    background: bool = False
    n_ctx: Annotated[int, Range(1)] = 4  # learned context vectors ("X X X X <name>.")
    ctx_std: Annotated[float, Range(0)] = 0.02  # their N(0, std^2) initialisation
    adapter_ratio: Annotated[float, Range(0, 1)] = 0.2  # CLIP-Adapter residual mix
    adapter_reduction: Annotated[int, Range(1)] = 4  # CLIP-Adapter bottleneck 512 -> 128
    # "sum": w_v Lv + w_a La (few-shot, weights 2 and 2); "self_weighted": (Lv^2 + La^2)/(Lv + La),
    # the release's pre-training and zero-shot rule.
    fusion: Annotated[str, OneOf("sum", "self_weighted")] = "sum"
    fusion_weights: Annotated[list[float], Range(0)] = field(default_factory=lambda: [2.0, 2.0])
    # "raw": CLAP's logit_scale_a as stored (a log scale, ~4.6), as the release uses it; "exp": exp of it.
    clap_scale: Annotated[str, OneOf("raw", "exp")] = "raw"
    clap_template: str = "The sounds of {}"
    clap_max_length: Annotated[int, Range(2)] = 77
    # How the task scores and selects: "default" (selection on the validation split, multi-label
    # aware LLP top-1, global accuracies) or "release" (the release's rules; see the task).
    protocol: Annotated[str, OneOf("default", "release")] = "default"

    def __post_init__(self) -> None:
        if len(self.fusion_weights) != 2:
            raise ValueError("fusion_weights needs two numbers (visual, audio)")
        if "{}" not in self.clap_template:
            raise ValueError("clap_template needs a '{}' where the class name goes")
