"""The ``clip-clap`` family: CLIP ViT-B/32 (visual) + CLAP HTS-AT-tiny (audio) + both text towers,
the few-shot and zero-shot backbones of DG-SCT.

Pairing one to one in order: ViT block i with the i-th HTS-AT block over its 2+2+6+2 blocks. A
pair runs as the release's few-shot forward does (few-shot nets/net_trans.py:861-917): the whole
HTS-AT block, the ViT attention half, p1 adapters on both, the ViT MLP half, then p2 adapters where
the visual guide and the adapted visual tokens are the state *before* the MLP half.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import BlockPair, EncoderFamily, TowerSet, register_family
from .clap import clap_towers
from .clip import CLIPVisionView, clip_towers
from .clip_clap_files import clip_clap_weight_files, write_random_files
from .configs import CLAPAudioConfig, ClipClapTextConfig, CLIPConfig
from .htsat import HTSATView

if TYPE_CHECKING:
    from ..dual import DualEncoder


def pair_in_order(visual_depths: list[int], audio_depths: list[int]) -> list[BlockPair]:
    """Visual block i (over all visual stages) with audio block i (over all audio stages)."""
    visual = [(s, j) for s, d in enumerate(visual_depths) for j in range(d)]
    audio = [(s, j) for s, d in enumerate(audio_depths) for j in range(d)]
    if len(visual) != len(audio):
        raise ValueError(
            f"one-to-one pairing needs as many visual blocks as audio blocks, got {len(visual)} "
            f"({'+'.join(map(str, visual_depths))}) and {len(audio)} ({'+'.join(map(str, audio_depths))})"
        )
    return [BlockPair(vs, vj, as_, aj) for (vs, vj), (as_, aj) in zip(visual, audio)]


def _attn_half(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ls_1(attn(ln_1(x)))`` of a pre-norm CLIP block (open_clip ``ResidualAttentionBlock``)."""
    return block.ls_1(block.attention(q_x=block.ln_1(x)))


def _mlp_half(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block.ls_2(block.mlp(block.ln_2(x)))


def compile_halves(enc: DualEncoder, options: dict) -> None:
    """Regional compilation of the paired CLIP blocks, which run as two halves."""
    enc.__dict__["_clip_halves"] = (torch.compile(_attn_half, **options), torch.compile(_mlp_half, **options))


def paired_step(
    enc: DualEncoder, i: int, v_block: nn.Module, a_block: nn.Module, v: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    attn_half, mlp_half = enc.__dict__.get("_clip_halves", (_attn_half, _mlp_half))
    n, ha, wa, ca = a.shape
    a = enc.run(a_block, a)
    v = v + enc.run(lambda x: attn_half(v_block, x), v)
    at = a.reshape(n, ha * wa, ca)
    ra, _ = enc.adapt("audio_p1", i, at, v)
    rv, _ = enc.adapt("visual_p1", i, v, at)
    v, a = v + rv, a + ra.view(n, ha, wa, ca)
    v_mid = v
    v = v + enc.run(lambda x: mlp_half(v_block, x), v)
    at = a.reshape(n, ha * wa, ca)
    ra, map_a = enc.adapt("audio_p2", i, at, v_mid)
    rv, map_v = enc.adapt("visual_p2", i, v_mid, at)
    return v + rv, a + ra.view(n, ha, wa, ca), map_v, map_a


def pool_embeddings(
    enc: DualEncoder, v: torch.Tensor, a: torch.Tensor, map_v=None, map_a=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's image embedding (``ln_post`` of CLS, ``proj``) and CLAP's audio embedding (the final
    norm's tokens averaged, then ``audio_projection``), as the release pools (net_trans.py:923-964)."""
    visual = enc.views[0].embedding(v)
    audio = enc.audio_projection(a.flatten(1, 2).mean(1))
    return visual, audio


def build(
    visual: CLIPConfig, audio: CLAPAudioConfig, text: ClipClapTextConfig, load_weights: bool
) -> TowerSet:
    clip_visual, clip_text = clip_towers(visual, load_weights)
    htsat, projection, clap_text = clap_towers(audio, text, load_weights)
    return TowerSet(
        visual=clip_visual,
        audio=htsat,
        visual_view=CLIPVisionView(clip_visual),
        audio_view=HTSATView(htsat),
        extras={"audio_projection": projection},
        text={"clip": clip_text, "clap": clap_text},
        pooled_dims=(visual.embed_dim, audio.projection_dim),
    )


CLIP_CLAP = register_family(
    EncoderFamily(
        name="clip-clap",
        description="CLIP ViT-B/32 (224 px) + CLAP HTS-AT-tiny (32-kHz input) + CLIP/RoBERTa text; few/zero-shot",
        visual_config=CLIPConfig,
        audio_config=CLAPAudioConfig,
        text_config=ClipClapTextConfig,
        build=build,
        pair_blocks=pair_in_order,
        paired_step=paired_step,
        pool=pool_embeddings,
        pool_plain=pool_embeddings,
        normalization=lambda cfg: (tuple(cfg.mean), tuple(cfg.std)),
        recompute_auto_blocks=10**9,  # a 12-block ViT-B at 224 px fits without it
        compile_paired_step=compile_halves,
        weight_files=clip_clap_weight_files,
        write_random_files=write_random_files,
        without_files_hint=(
            "to try the commands without them, the tiny recipes write small random files in these "
            "layouts: 'dgsct fewshot train --recipe fewshot-ave-tiny' (README, 'Try it without weights')"
        ),
        licenses={
            "visual": ("CLIP ViT-B/32 (openai/CLIP)", "mit"),
            "audio": ("CLAP HTS-AT-tiny (LAION-AI/CLAP)", "cc0-1.0"),
            "text": ("CLIP text tower (openai/CLIP); CLAP's RoBERTa (LAION-AI/CLAP, fairseq: MIT)", "mit"),
        },
    )
)
