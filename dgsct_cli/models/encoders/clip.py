"""CLIP (OpenAI layout) through open_clip: the ViT visual tower and the text tower, from a local file.

The published ``ViT-B-32.pt`` is a TorchScript archive; a plain OpenAI-layout state dict works too.
The architecture comes from the recipe (ViT-B/32 by default) and the file must fit it exactly.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from ..weights import CheckpointError, load_into, unsafe_load_reason
from .base import StageGeometry
from .configs import CLIPConfig

log = logging.getLogger(__name__)

# Keys of OpenAI archives that are not tensors of the model.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def build_clip(cfg: CLIPConfig) -> nn.Module:
    """An open_clip ``CLIP`` (QuickGELU, as OpenAI trained it) of ``cfg``'s shape, fp32."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(
        cfg.embed_dim,
        vision_cfg=CLIPVisionCfg(
            layers=cfg.layers, width=cfg.width, patch_size=cfg.patch_size, image_size=cfg.img_size
        ),
        text_cfg=CLIPTextCfg(
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            width=cfg.text_width,
            heads=cfg.text_width // 64,
            layers=cfg.text_layers,
        ),
        quick_gelu=True,
    )


def read_openai_clip(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP file: a TorchScript archive (the published files) or a
    plain state dict (read with ``weights_only=True``); fp16 tensors come back as fp32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: CLIP weights file not found (model.visual.weights)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.11 but reads the archive
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except (RuntimeError, ValueError):
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: not a CLIP TorchScript archive nor a state dict we can read safely "
                f"({unsafe_load_reason(exc)})"
            ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "visual.conv1.weight" not in state:
        raise CheckpointError(f"{path}: no 'visual.conv1.weight': not an OpenAI-layout CLIP ViT file")
    return {k: v.float() for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS and torch.is_tensor(v)}


def load_clip_weights(model: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Strictly load an OpenAI-layout state dict (or file) into an open_clip CLIP."""
    name = str(source) if not isinstance(source, dict) else "CLIP state dict"
    state = read_openai_clip(source) if not isinstance(source, dict) else dict(source)
    state = {k: v for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS}
    load_into(model, state, name)


class CLIPVisionView:
    """The walker's view of open_clip's ViT: one stage, batch-first ``[N, 1 + grid², C]`` tokens
    (the CLS token first), ``ln_pre`` in the embedding; ``ln_post`` and ``proj`` pool."""

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual
        grid = visual.grid_size[0] * visual.grid_size[1]
        width = visual.conv1.out_channels
        self.geometry = [StageGeometry(width, grid + 1, len(visual.transformer.resblocks))]

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(frames)

    def enter(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def blocks(self, stage: int):
        return self.visual.transformer.resblocks

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def grid(values: torch.Tensor) -> torch.Tensor:
        """Per-token values ``[N, 1 + g*g]`` as an image ``[N, g, g]`` (the CLS token left out)."""
        side = math.isqrt(values.shape[-1] - 1)
        return values[:, 1:].reshape(values.shape[0], side, side)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding of the final tokens: ``ln_post`` of the CLS token, then ``proj``."""
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj


def clip_towers(cfg: CLIPConfig, load_weights: bool) -> tuple[nn.Module, nn.Module]:
    """(visual tower, text tower) of one CLIP model; the text tower is the CLIP without ``visual``."""
    clip = build_clip(cfg)
    if load_weights and cfg.weights is not None:
        load_clip_weights(clip, cfg.weights)
    elif load_weights:
        log.warning("model.visual.weights is not set: CLIP is randomly initialised")
    visual = clip.visual
    clip.visual = nn.Identity()  # the text tower keeps token embedding, transformer, projections
    return visual, clip
