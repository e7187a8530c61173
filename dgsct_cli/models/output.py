"""What the dual encoder gives a task head, and what a head asks it for."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EncoderNeeds", "EncoderOutput"]


@dataclass(frozen=True)
class EncoderNeeds:
    """What a head reads besides the pooled features; nothing else is kept (AVE pays nothing for
    AVS's maps). ``plain_visual_inputs`` names model inputs (frame tensors like ``frames``) that
    go through the adapter-free visual pass before they reach the head (AVQA's negatives)."""

    visual_stages: bool = False
    visual_tokens: bool = False
    plain_visual_inputs: tuple[str, ...] = ()


@dataclass
class EncoderOutput:
    """One forward of the dual encoder over ``B`` samples of ``T`` segments (``N = B * T``).

    - ``visual`` ``[B, T, Cv]``, ``audio`` ``[B, T, Ca]``: pooled per segment (always);
    - ``visual_map`` ``[N, 1, Lv]``, ``audio_map`` ``[N, 1, La]``: the last p2 adapters' spatial
      attention (None without adapters);
    - ``visual_stages``: the visual maps after each stage's blocks, before its patch merging (the
      last after the final norm), each ``[N, L_s, C_s]``; only when asked;
    - ``visual_tokens``: the final normalised visual token map ``[N, L, C]``; only when asked.
    """

    visual: torch.Tensor
    audio: torch.Tensor
    visual_map: torch.Tensor | None = None
    audio_map: torch.Tensor | None = None
    visual_stages: list[torch.Tensor] | None = None
    visual_tokens: torch.Tensor | None = None
