"""``create_model``: recipe model config + task name -> DGSCTModel, and named size presets."""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .adapter import AdapterSettings
from .dgsct import DGSCTModel, ModelConfig, build_dual_encoder
from .encoders.audio import AudioConfig
from .encoders.visual import VisualConfig


def tiny_model_config() -> ModelConfig:
    """Same code as the full model with small widths/depths/inputs (tests, demos, CI)."""
    return ModelConfig(
        visual=VisualConfig(
            name="swinv2_tiny_window8_256",
            img_size=64,
            args={"embed_dim": 32, "depths": (1, 1, 3, 1), "num_heads": (2, 4, 8, 16), "window_size": 4},
        ),
        audio=AudioConfig(
            n_fft=1024,
            hop_length=640,
            mel_bins=16,
            fmin=50.0,
            fmax=14000.0,
            spec_size=64,
            embed_dim=32,
            depths=[1, 1, 1, 1],
            num_heads=[2, 4, 8, 16],
            window_size=4,
            time_mask=16,
            freq_mask=2,
        ),
        adapter=AdapterSettings(num_tokens=8),
        head={"temporal": {"visual_proj": 64, "audio_proj": 32, "d_model": 32, "feedforward": 64}},
    )


@contextmanager
def _quiet_random_init():
    """Silence the 'randomly initialised' warnings when weights are about to be overwritten."""
    loggers = [logging.getLogger(f"dgsct_cli.models.encoders.{m}") for m in ("visual", "audio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def create_model(
    task: str,
    cfg: ModelConfig | None = None,
    head_cfg: Any = None,
    load_encoder_weights: bool = True,
) -> DGSCTModel:
    """Build the DG-SCT model for ``task`` with frozen encoders and trainable adapters + head.

    ``head_cfg`` defaults to the task's head config built from ``cfg.head``. With
    ``load_encoder_weights=False`` the encoder weight files are not read (the caller loads a
    checkpoint that contains them).
    """
    from ..config import build_dataclass
    from ..tasks.base import get_task

    spec = get_task(task)
    cfg = copy.deepcopy(cfg) if cfg is not None else ModelConfig()
    if head_cfg is None:
        head_cfg = build_dataclass(spec.head_config, cfg.head, "model.head")
    if not load_encoder_weights:
        # Build from a copy without weight files; the model keeps the recipe's paths.
        bare = replace(cfg, visual=replace(cfg.visual, weights=None), audio=replace(cfg.audio, weights=None))
        with _quiet_random_init():
            encoder = build_dual_encoder(bare)
    else:
        encoder = build_dual_encoder(cfg)
    head = spec.build_head(encoder.visual_dim, encoder.audio_dim, head_cfg)
    model = DGSCTModel(cfg, encoder, head, task)
    model.freeze_encoders()
    return model
