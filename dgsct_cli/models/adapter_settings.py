"""``model.adapter``: the settings of every adapter kind, in a module without torch so that a
recipe is resolved and checked without importing it (``dgsct recipes show``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..schema import Annotated, OneOf, Range

__all__ = ["GUIDANCE_PATHS", "AdapterSettings"]

GUIDANCE_PATHS = ("spatial", "channel", "temporal")


@dataclass
class AdapterSettings:
    """Per-task adapter options (the release's per-task variants are settings, not classes).
    Defaults are AVE's DG-SCT adapters."""

    # Which adapters sit at the block pairs: "dgsct", "lavish" (LAVisH, CVPR 2023) or "none" (the
    # frozen encoders alone: the paper's baseline without DG-SCT). See models/adapter_kinds.py.
    kind: str = "dgsct"
    # DG-SCT's guided attention paths that run (the paper's component ablation); a path left out
    # is not built and its attention is zero: no channel term (x is not re-weighted by it), no
    # spatial term (the pooling map is uniform: a token mean), no temporal gate.
    guidance: Annotated[list[str], OneOf(*GUIDANCE_PATHS)] = field(
        default_factory=lambda: list(GUIDANCE_PATHS)
    )
    num_tokens: Annotated[int, Range(1)] = 32
    token_init: Annotated[str, OneOf("uniform", "zeros")] = "uniform"  # U[0,1) or zeros
    reduction: Annotated[int, Range(1)] = 8  # bottleneck reduction r
    groups: Annotated[int, Range(1)] = 2  # groups of down_sampler / up_sampler
    use_bn: bool = True
    use_gate: bool = True  # output gate of the visual adapters (false: output added un-gated)
    audio_gate: bool | None = None  # output gate of the audio adapters; None = same as use_gate
    # How the guide tokens reach x's token count: "token_conv" (1x1 conv over tokens, then fc;
    # AVE/AVVP/AVQA/MS3) or "resize" (fc, then bicubic resize of the token grid; AVS-S4); "linear":
    # fc only (Linear C' -> C; none when the widths are equal), the guide keeps its own tokens
    # (LAVisH's latent tokens attend over any number of them).
    guide_projection: Annotated[str, OneOf("token_conv", "resize", "linear")] = "token_conv"
    gate_tk: bool = True  # the release's unused `gate_tk` parameter (kept so checkpoints match)
    ln_before: bool = True
    ln_post: bool = True  # LayerNorm after the bottleneck (LAVisH's is_post_layernorm)
    gate_before_ln_post: bool = False  # AVS order: gate * out, then ln_post
    alpha: float = 0.3
    beta: float = 0.05
    # The few-shot variant's per-segment temporal gate: sigmoid(Linear(C -> 1)) of the guide's
    # mean token adds gamma * gate to the modulation (few-shot nets/net_trans.py:534-549).
    temporal_gate: bool = False
    gamma: float = 0.0

    def __post_init__(self) -> None:
        from .adapter_kinds import get_adapter_kind  # the registry imports this module

        unknown = [g for g in self.guidance if g not in GUIDANCE_PATHS]
        if unknown:
            allowed = ", ".join(GUIDANCE_PATHS)
            raise ValueError(
                f"guidance: unknown path(s) {', '.join(map(repr, unknown))} (allowed: {allowed})"
            )
        if len(set(self.guidance)) != len(self.guidance):
            raise ValueError(f"guidance: {self.guidance} names a path twice")
        get_adapter_kind(self.kind).check(self)

    def runs(self, path: str) -> bool:
        """Whether DG-SCT's guided attention path ``path`` (spatial, channel, temporal) runs."""
        return path in self.guidance
