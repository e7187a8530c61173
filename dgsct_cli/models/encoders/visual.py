"""Visual encoder: any timm Swin Transformer V2, loaded from a local checkpoint file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2, checkpoint_filter_fn
from torch import nn

from ..weights import load_into, load_state_dict_file

log = logging.getLogger(__name__)


@dataclass
class VisualConfig:
    """Recipe section ``model.visual``."""

    name: str = "swinv2_large_window12_192.ms_in22k"
    weights: str | None = None  # local .safetensors/.bin/.pth, or "hub" to let timm download
    img_size: int = 192
    drop_path_rate: float = 0.1
    args: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (tiny configs)


def create_visual_encoder(cfg: VisualConfig) -> SwinTransformerV2:
    """Build the Swin-V2 trunk without its classifier and load weights from a local file.

    Without a file the weights are random and a warning says so; the hub is only used when the
    recipe asks for it with ``weights: hub``.
    """
    from_hub = cfg.weights == "hub"
    model = timm.create_model(
        cfg.name,
        pretrained=from_hub,
        num_classes=0,
        img_size=cfg.img_size,
        drop_path_rate=cfg.drop_path_rate,
        **cfg.args,
    )
    if not isinstance(model, SwinTransformerV2):
        raise ValueError(f"model.visual.name: {cfg.name!r} is not a Swin Transformer V2 model")
    if from_hub:
        return model
    if cfg.weights is None:
        log.warning("model.visual.weights is not set: the Swin-V2 encoder is randomly initialised")
        return model
    load_swin_weights(model, cfg.weights)
    return model


def load_swin_weights(model: SwinTransformerV2, path: str | Path | dict[str, torch.Tensor]) -> None:
    """Load a timm/HF or original-layout Swin-V2 checkpoint (timm's filter maps the old layout)."""
    state = load_state_dict_file(path) if not isinstance(path, dict) else path
    state = checkpoint_filter_fn(state, model)
    # The classifier is not part of the trunk DG-SCT uses.
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_into(model, state, str(path) if not isinstance(path, dict) else "Swin-V2 state dict")


def swin_stage_geometry(model: SwinTransformerV2) -> list[tuple[int, int, int]]:
    """(channels, tokens, depth) per stage, read off the built model."""
    out = []
    for stage in model.layers:
        h, w = stage.output_resolution
        out.append((stage.blocks[0].dim if len(stage.blocks) else stage.dim, h * w, len(stage.blocks)))
    return out


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
