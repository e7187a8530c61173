"""CLAP (LAION layout): the HTS-AT-tiny audio branch, its projection, and the RoBERTa text branch.

The published files (``630k-audioset-fusion-best.pt``, ``630k-fusion-best.pt``) hold
``{'state_dict': {'module.<key>': tensor}}``. The audio branch is the core's own HTS-AT at the
HTS-AT-tiny sizes whose STFT kernels and mel matrix come from the file (CLAP's 48-kHz design, run
on 32-kHz audio as the release does); the fusion layers are dropped by name, as the release does
(few-shot nets/net_trans.py:656-695). The text branch is ``transformers``' RoBERTa built from a
fixed roberta-base configuration, never fetched from a hub.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..weights import CheckpointError, load_into
from .configs import ROBERTA_BASE, CLAPAudioConfig, ClipClapTextConfig
from .htsat import HTSAT, convert_htsat_state_dict, htsat_unused_keys

log = logging.getLogger(__name__)


# LAION keys the release does not run (few-shot nets/net_trans.py:656-695, prompt_learner.py:78-108).
CLAP_UNUSED_KEYS = {
    r"^audio_branch\.patch_embed\.(mel_conv2d|fusion_model)\.": "fusion layers (the release runs CLAP without fusion)",
    r"^(audio|text)_transform\.": "CLAP's transform MLPs, loaded but never used",
    r"^text_branch\.embeddings\.position_ids$": "a buffer transformers recomputes",
}


def read_clap_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a LAION CLAP file, ``module.`` stripped.

    Read with ``weights_only=True``; the numpy scalar types such files may pickle are allowed by
    name (they hold no code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: CLAP weights file not found (model.audio.weights)")
    allowed = [np.dtype, type(np.dtype("float64")), type(np.dtype("int64"))]
    scalar = getattr(getattr(np, "_core", getattr(np, "core", None)), "multiarray", None)
    if scalar is not None and hasattr(scalar, "scalar"):
        allowed.append(scalar.scalar)
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a CLAP checkpoint we can read safely ({type(exc).__name__})"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected {{'state_dict': {{...}}}} (a LAION CLAP file)")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    if not any(k.startswith("audio_branch.") for k in state):
        raise CheckpointError(f"{path}: no 'audio_branch.*' keys: not a LAION CLAP file")
    return state


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """CLAP's projection: Linear, ReLU, Linear (keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))


class CLAPText(nn.Module):
    """RoBERTa + ``text_projection`` (pooler output -> projection), and CLAP's two logit scales."""

    def __init__(self, cfg: ClipClapTextConfig) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        self.roberta = RobertaModel(RobertaConfig(**{**ROBERTA_BASE, **cfg.roberta}), add_pooling_layer=True)
        self.text_projection = _projection(self.roberta.config.hidden_size, cfg.projection_dim)
        # Raw (log-scale) values as stored; the release uses logit_scale_a un-exponentiated.
        self.logit_scale_a = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        self.logit_scale_t = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.roberta(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)


def split_clap_state(
    state: dict[str, torch.Tensor], audio: HTSAT, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(audio branch state in :class:`HTSAT` keys, ``audio_projection`` state, text state in
    :class:`CLAPText` keys); keys the release does not run are dropped by name."""
    kept = {k: v for k, v in state.items() if not any(re.search(p, k) for p in CLAP_UNUSED_KEYS)}
    branch = {k[len("audio_branch.") :]: v for k, v in kept.items() if k.startswith("audio_branch.")}
    audio_state = convert_htsat_state_dict(branch, htsat_unused_keys(audio.cfg))
    projection = {
        k[len("audio_projection.") :]: v for k, v in kept.items() if k.startswith("audio_projection.")
    }
    text = {f"roberta.{k[len('text_branch.') :]}": v for k, v in kept.items() if k.startswith("text_branch.")}
    text.update({k: v for k, v in kept.items() if k.startswith("text_projection.")})
    for key in ("logit_scale_a", "logit_scale_t"):
        if key in kept:
            text[key] = kept[key].reshape(())
    rest = sorted(
        k
        for k in kept
        if not k.startswith(
            ("audio_branch.", "audio_projection.", "text_branch.", "text_projection.", "logit_scale")
        )
    )
    if rest:
        raise CheckpointError(f"{name}: keys of no known CLAP part: {', '.join(rest[:8])}")
    return audio_state, projection, text


def clap_towers(
    audio_cfg: CLAPAudioConfig, text_cfg: ClipClapTextConfig, load_weights: bool
) -> tuple[HTSAT, nn.Sequential, CLAPText]:
    """(audio branch, audio projection, text branch) of one CLAP model, from ``audio_cfg.weights``."""
    audio = HTSAT(audio_cfg)
    projection = _projection(audio.layers[-1].blocks[-1].dim, audio_cfg.projection_dim)
    text = CLAPText(text_cfg)
    if load_weights and audio_cfg.weights is not None:
        name = str(audio_cfg.weights)
        audio_state, proj_state, text_state = split_clap_state(read_clap_file(audio_cfg.weights), audio, name)
        load_into(audio, audio_state, f"{name} (audio_branch)")
        load_into(projection, proj_state, f"{name} (audio_projection)")
        load_into(text, text_state, f"{name} (text_branch)")
    elif load_weights:
        log.warning(
            "model.audio.weights is not set: CLAP (its audio branch, projection and RoBERTa text branch) "
            "is randomly initialised"
        )
    return audio, projection, text
