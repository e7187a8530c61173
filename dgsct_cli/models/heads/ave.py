"""AVE heads: DG-SCT's temporal attention + CMBS localisation/classification head (release
AVE/nets/net_trans.py:182-431), or LAVisH's per-segment classifier (``type: lavish``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..output import EncoderOutput
from ..temporal import TemporalAttention
from .configs import AVEHeadConfig


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


class LAVisHAVEHead(nn.Module):
    """LAVisH's AVE head (github GenjiB/LAVISH, AVE/nets/net_trans.py:277-278, 415-425): the
    segment's visual and audio features concatenated, ``mlp_class`` then ``mlp_class_2`` (no
    activation between them), one score per class and background (background last).

    Outputs: ``segment_class_logits [B, T, C + 1]`` (the release returns their softmax); and, so that
    every consumer of AVE outputs can read them, ``segment_logits [B, T]`` = the best class logit
    minus the background logit (positive exactly where the argmax is not background) and
    ``event_logits [B, C]`` = the log of the class probabilities averaged over the segments.
    """

    def __init__(self, visual_dim: int, audio_dim: int, cfg: AVEHeadConfig) -> None:
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError("LAVisHAVEHead: num_classes must be resolved (from the data or the recipe)")
        self.mlp_class = nn.Linear(visual_dim + audio_dim, cfg.hidden)
        self.mlp_class_2 = nn.Linear(cfg.hidden, cfg.num_classes + 1)

    def forward(self, features: EncoderOutput, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.mlp_class_2(self.mlp_class(torch.cat((features.visual, features.audio), dim=-1)))
        classes = logits[..., :-1]
        log_probs = torch.log_softmax(logits, dim=-1)[..., :-1]  # [B, T, C]
        return {
            "segment_class_logits": logits,
            "segment_logits": classes.max(dim=-1).values - logits[..., -1],
            "event_logits": torch.logsumexp(log_probs, dim=1) - math.log(logits.shape[1]),
        }


def build_ave_head(visual_dim: int, audio_dim: int, cfg: AVEHeadConfig) -> nn.Module:
    return (
        LAVisHAVEHead(visual_dim, audio_dim, cfg)
        if cfg.type == "lavish"
        else AVEHead(visual_dim, audio_dim, cfg)
    )


# Release keys of the AVE head with no counterpart here (built by the release, never run).
AVE_UNUSED_RELEASE_KEYS = {
    r"^CMBS\.(AVInter|VAInter)\.": "cross-attention blocks whose outputs the release discards",
    r"^CMBS\.(video_norm|audio_norm)\.": "LayerNorms the release builds but never calls",
    r"^temporal_attn\.\w+\.(encoder_layer|decoder_layer)\.": "template layers nn.Transformer* copies",
    r"^temporal_attn\.\w+_decoder\.decoder\.layers\.\d+\.self_attn\.": "decoder self-attention, never called",
}
