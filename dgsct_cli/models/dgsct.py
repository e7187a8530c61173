"""The DG-SCT model: a dual encoder with adapters (shared by every task) + a task head."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .dual import DualEncoder
from .encoders.base import get_family
from .model_config import ModelConfig, resolve_family_sections
from .output import EncoderNeeds, EncoderOutput

__all__ = [
    "DGSCTModel",
    "ModelConfig",
    "build_dual_encoder",
    "ensure_weight_files",
    "resolve_family_sections",
]


def ensure_weight_files(cfg: ModelConfig, where: str = "recipe") -> list[Path]:
    """Check every file the towers of ``cfg`` read before any data is written or model built;
    with ``random_weight_files``, write the missing ones first (random values). One error names
    every missing file and where it comes from. Returns the files written."""
    cfg = resolve_family_sections(copy.copy(cfg), where)
    family = get_family(cfg.family)
    if family.weight_files is None:
        return []
    files = family.weight_files(cfg.visual, cfg.audio, cfg.text)
    written: list[Path] = []
    absent = {f.key for f in files if f.path is not None and f.missing()}
    if absent and cfg.random_weight_files and family.write_random_files is not None:
        written = family.write_random_files(cfg.visual, cfg.audio, cfg.text, absent)
    problems = []
    for f in files:
        if f.path is None and f.required:
            problems.append(f"{f.key} is not set ({f.what}: {f.source})")
        elif f.path is not None and f.missing():
            problems.append(f"{f.key}: {', '.join(f.missing())} not found ({f.what}: {f.source})")
    if problems:
        # The user is probably missing the optional files too: name them in the same message.
        problems += [
            f"{f.key} is not set either ({f.what}: {f.source}; without it the tower is randomly initialised)"
            for f in files
            if f.path is None and not f.required
        ]
        hint = f"; {family.without_files_hint}" if family.without_files_hint else ""
        raise ValueError(
            f"{where}: {len(problems)} weight file(s) missing (nothing is downloaded): "
            + "; ".join(problems)
            + f". Give them as overrides (key=PATH){hint}"
        )
    return written


def build_dual_encoder(cfg: ModelConfig, load_weights: bool = True) -> DualEncoder:
    """The family's towers (weights read from the files the config names unless told not to)."""
    cfg = resolve_family_sections(cfg)
    family = get_family(cfg.family)
    towers = family.build(cfg.visual, cfg.audio, cfg.text, load_weights)
    depth = sum(g.depth for g in towers.visual_view.geometry)
    recompute = cfg.recompute == "on" or (cfg.recompute == "auto" and depth >= family.recompute_auto_blocks)
    return DualEncoder(family, towers, cfg.adapter, recompute=recompute, adapters=cfg.use_adapters)


class DGSCTModel(nn.Module):
    """``model(frames=[B, T, 3, H, W], audio=[B, T, L], **inputs)`` -> dict of outputs.

    The head reads an :class:`EncoderOutput` (and the other inputs); what it needs beyond the
    pooled features it declares in ``encoder_needs``. Every output dict also carries
    ``visual_features [B, T, Cv]`` and ``audio_features [B, T, Ca]``, the pooled features.
    """

    def __init__(self, cfg: ModelConfig, encoder: DualEncoder, head: nn.Module, task: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.encoder = encoder
        self.head = head
        # A head that reads encoder parts besides the features (e.g. text towers) binds them here.
        bind = getattr(head, "bind_encoder", None)
        if callable(bind):
            bind(encoder)

    @property
    def needs(self) -> EncoderNeeds:
        return getattr(self.head, "encoder_needs", EncoderNeeds())

    # -- parameters ----------------------------------------------------------------------------
    def set_trainable(self, is_trainable: Callable[[str], bool]) -> list[str]:
        """``requires_grad`` from a predicate on parameter names; returns the trainable names."""
        names = []
        for name, p in self.named_parameters():
            p.requires_grad_(is_trainable(name))
            if p.requires_grad:
                names.append(name)
        return names

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
            for module in (self.encoder.visual, self.encoder.audio, self.encoder.text):
                if module is not None:
                    module.eval()
        return self

    # -- forward -------------------------------------------------------------------------------
    @property
    def frame_size(self) -> int:
        """Side length of the frames the model is called with."""
        return self.cfg.input_size or self.cfg.visual.img_size

    def expected_frames_shape(self) -> str:
        s = self.frame_size
        return f"[B, {self.cfg.num_segments}, 3, {s}, {s}]"

    def check_frames(self, frames: torch.Tensor, name: str = "frames") -> None:
        t, s = self.cfg.num_segments, self.frame_size
        if frames.dim() != 5 or tuple(frames.shape[1:]) != (t, 3, s, s):
            raise ValueError(f"{name}: expected {self.expected_frames_shape()}, got {list(frames.shape)}")

    def _to_tower_size(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` frames at the visual tower's size (``input_size`` -> ``img_size``)."""
        size = self.cfg.visual.img_size
        if frames.shape[-1] == size and frames.shape[-2] == size:
            return frames
        return F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)

    def check_inputs(self, frames: torch.Tensor, audio: torch.Tensor) -> None:
        t = self.cfg.num_segments
        self.check_frames(frames)
        if audio.dim() != 3 or audio.shape[1] != t:
            raise ValueError(
                f"audio: expected [B, {t}, samples] ({t} segments, each tiled), got {list(audio.shape)}"
            )
        if audio.shape[0] != frames.shape[0]:
            raise ValueError(f"audio batch {audio.shape[0]} != frames batch {frames.shape[0]}")
        check_length = getattr(self.encoder.audio, "check_length", None)
        if check_length is not None:
            check_length(audio.shape[-1])

    def encode(
        self,
        frames: torch.Tensor,
        audio: torch.Tensor,
        mix_lambda: torch.Tensor | None = None,
        use_adapters: bool = True,
        needs: EncoderNeeds | None = None,
    ) -> EncoderOutput:
        """Encoder output with pooled ``visual [B, T, Cv]`` and ``audio [B, T, Ca]``."""
        self.check_inputs(frames, audio)
        b, t = frames.shape[:2]
        out = self.encoder(
            self._to_tower_size(frames.flatten(0, 1)),
            audio.flatten(0, 1),
            mix_lambda=mix_lambda,
            use_adapters=use_adapters,
            needs=needs,
        )
        out.visual, out.audio = out.visual.view(b, t, -1), out.audio.view(b, t, -1)
        return out

    def encode_plain(self, frames: torch.Tensor, name: str = "frames") -> torch.Tensor:
        """Adapter-free visual token maps ``[B * T, L, C]`` of ``frames [B, T, 3, H, W]``."""
        self.check_frames(frames, name)
        return self.encoder.encode_plain_visual(self._to_tower_size(frames.flatten(0, 1)))

    def forward(
        self,
        frames: torch.Tensor,
        audio: torch.Tensor,
        mix_lambda: torch.Tensor | None = None,
        **inputs: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        needs = self.needs
        feats = self.encode(frames, audio, mix_lambda, needs=needs)
        for name in needs.plain_visual_inputs:
            if inputs.get(name) is not None:  # an input the call leaves out reaches the head as absent
                inputs[name] = self.encode_plain(inputs[name], name)
        out = self.head(feats, **inputs)
        out["visual_features"] = feats.visual
        out["audio_features"] = feats.audio
        return out
