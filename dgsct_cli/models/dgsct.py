"""The DG-SCT model: dual encoder with adapters (shared by every task) + a task head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapter import AdapterSettings
from .dual import DualEncoder
from .encoders.audio import AudioConfig, create_audio_encoder
from .encoders.visual import VisualConfig, create_visual_encoder


@dataclass
class ModelConfig:
    """Recipe section ``model``. ``head`` is validated by the task's own head config."""

    visual: VisualConfig = field(default_factory=VisualConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    head: dict[str, Any] = field(default_factory=dict)
    num_segments: int = 10
    # The release trains with the frozen encoders in train mode (SpecAugment, batch-stat bn0,
    # stochastic depth); false holds them in eval mode.
    encoders_train_mode: bool = True
    # Activation checkpointing of the frozen encoder blocks: "auto" = on when the visual encoder
    # is the full-size one, where stored activations dominate memory.
    recompute: str = "auto"

    def __post_init__(self) -> None:
        if self.recompute not in ("auto", "on", "off"):
            raise ValueError(f"recompute must be 'auto', 'on' or 'off', got {self.recompute!r}")


class DGSCTModel(nn.Module):
    """``model(frames=[B, T, 3, H, W], audio=[B, T, L], **head_inputs)`` -> dict of outputs.

    Every output dict carries ``visual_features [B, T, Cv]`` and ``audio_features [B, T, Ca]``
    (the pooled encoder outputs that enter the head) besides the head's own outputs.
    """

    def __init__(self, cfg: ModelConfig, encoder: DualEncoder, head: nn.Module, task: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.encoder = encoder
        self.head = head

    # -- parameters ----------------------------------------------------------------------------
    def freeze_encoders(self) -> None:
        self.encoder.visual.requires_grad_(False)
        self.encoder.audio.requires_grad_(False)

    def parameter_counts(self) -> dict[str, int]:
        adapters = sum(p.numel() for m in self.encoder.adapter_modules() for p in m.parameters())
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "adapters": adapters,
            "visual_encoder": sum(p.numel() for p in self.encoder.visual.parameters()),
            "audio_encoder": sum(p.numel() for p in self.encoder.audio.parameters()),
            "head": sum(p.numel() for p in self.head.parameters()),
        }

    def train(self, mode: bool = True) -> DGSCTModel:
        super().train(mode)
        if mode and not self.cfg.encoders_train_mode:
            self.encoder.visual.eval()
            self.encoder.audio.eval()
        return self

    # -- forward -------------------------------------------------------------------------------
    def expected_frames_shape(self) -> str:
        s = self.cfg.visual.img_size
        return f"[B, {self.cfg.num_segments}, 3, {s}, {s}]"

    def check_inputs(self, frames: torch.Tensor, audio: torch.Tensor) -> None:
        t, s = self.cfg.num_segments, self.cfg.visual.img_size
        if frames.dim() != 5 or tuple(frames.shape[1:]) != (t, 3, s, s):
            raise ValueError(f"frames: expected {self.expected_frames_shape()}, got {list(frames.shape)}")
        if audio.dim() != 3 or audio.shape[1] != t:
            raise ValueError(
                f"audio: expected [B, {t}, samples] ({t} segments, each tiled to 10 s), got {list(audio.shape)}"
            )
        if audio.shape[0] != frames.shape[0]:
            raise ValueError(f"audio batch {audio.shape[0]} != frames batch {frames.shape[0]}")
        self.encoder.audio.check_length(audio.shape[-1])

    def encode(
        self,
        frames: torch.Tensor,
        audio: torch.Tensor,
        mix_lambda: torch.Tensor | None = None,
        use_adapters: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Pooled per-segment features ``visual [B, T, Cv]`` and ``audio [B, T, Ca]``."""
        self.check_inputs(frames, audio)
        b, t = frames.shape[:2]
        feats = self.encoder(
            frames.flatten(0, 1), audio.flatten(0, 1), mix_lambda=mix_lambda, use_adapters=use_adapters
        )
        return {"visual": feats["visual"].view(b, t, -1), "audio": feats["audio"].view(b, t, -1)}

    def forward(
        self,
        frames: torch.Tensor,
        audio: torch.Tensor,
        mix_lambda: torch.Tensor | None = None,
        **head_inputs: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        feats = self.encode(frames, audio, mix_lambda)
        out = self.head(feats["visual"], feats["audio"], **head_inputs)
        out["visual_features"] = feats["visual"]
        out["audio_features"] = feats["audio"]
        return out


def build_dual_encoder(cfg: ModelConfig) -> DualEncoder:
    visual = create_visual_encoder(cfg.visual)
    audio = create_audio_encoder(cfg.audio)
    recompute = cfg.recompute == "on" or (
        cfg.recompute == "auto" and sum(len(s.blocks) for s in visual.layers) >= 24
    )
    return DualEncoder(visual, audio, cfg.adapter, recompute=recompute)
