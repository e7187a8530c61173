"""AVE head: temporal attention + the CMBS localisation/classification head (release AVE/nets/net_trans.py:182-431)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...schema import Annotated, Range
from ..output import EncoderOutput
from ..temporal import TemporalAttention, TemporalConfig


@dataclass
class AVEHeadConfig:
    """Recipe section ``model.head`` for AVE."""

    # None: the prepared data's class count (28 for AVE); a number pins it (a mismatch is an error).
    num_classes: Annotated[int, Range(1)] | None = None
    top_k: Annotated[int, Range(1)] = 4  # time steps averaged for the class-activation scores
    av_score_weight: float = 0.3
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


class LocalizeModule(nn.Module):
    def __init__(self, d_model: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(d_model, 1)
        self.event_classifier = nn.Linear(d_model, num_classes)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fused [T, B, d]`` -> segment logits ``[B, T]``, event logits ``[B, classes]``."""
        fused = fused.transpose(0, 1)
        return self.classifier(fused).squeeze(-1), self.event_classifier(fused.max(dim=1).values)


class CMBSHead(nn.Module):
    """Class-activation scores + localisation (the release's ``CMBS`` module, minus unused parts)."""

    def __init__(self, d_model: int, cfg: AVEHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.localize_module = LocalizeModule(d_model, cfg.num_classes)
        self.audio_cas = nn.Linear(d_model, cfg.num_classes)
        self.video_cas = nn.Linear(d_model, cfg.num_classes)

    def _topk_mean(self, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.cfg.top_k, scores.shape[0])
        return scores.topk(k, dim=0).values.mean(0)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        av_score = (self._topk_mean(self.video_cas(video)) + self._topk_mean(self.audio_cas(audio))) / 2
        segment_logits, event_logits = self.localize_module((video + audio) / 2)
        return {
            "segment_logits": segment_logits,
            "event_logits": event_logits + self.cfg.av_score_weight * av_score,
            "av_score": av_score,
        }


class AVEHead(nn.Module):
    """Pooled features ``visual [B, T, Cv]``, ``audio [B, T, Ca]`` -> AVE predictions."""

    def __init__(self, visual_dim: int, audio_dim: int, cfg: AVEHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AVEHeadConfig(num_classes=28)
        if cfg.num_classes is None:
            raise ValueError("AVEHead: num_classes must be resolved (from the data or the recipe)")
        self.temporal_attn = TemporalAttention(visual_dim, audio_dim, cfg.temporal)
        self.CMBS = CMBSHead(cfg.temporal.d_model, cfg)

    def forward(self, features: EncoderOutput, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        streams = self.temporal_attn(features.visual, features.audio)
        out = self.CMBS(streams["video"], streams["audio"])
        out["av_gate"] = streams["av_gate"].squeeze(-1).transpose(0, 1)  # [B, T]
        return out


# Release keys of the AVE head with no counterpart here (built by the release, never run).
AVE_UNUSED_RELEASE_KEYS = {
    r"^CMBS\.(AVInter|VAInter)\.": "cross-attention blocks whose outputs the release discards",
    r"^CMBS\.(video_norm|audio_norm)\.": "LayerNorms the release builds but never calls",
    r"^temporal_attn\.\w+\.(encoder_layer|decoder_layer)\.": "template layers nn.Transformer* copies",
    r"^temporal_attn\.\w+_decoder\.decoder\.layers\.\d+\.self_attn\.": "decoder self-attention, never called",
}
