"""The ``swinv2-htsat`` family: Swin-V2 (visual) + HTS-AT (audio), DG-SCT's main-task encoders.

Pairing by stage-depth ratio: in a stage where one encoder has ``r`` times the blocks of the other,
block ``r*k + r - 1`` of the deeper one pairs with block ``k`` of the shallower one (the release
pairs audio block k with visual block 3k+2 in Swin-V2-L's 18-block stage). Swin-V2's blocks are
res-post-norm, so a paired visual block runs in two halves with an adapter residual after each.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch import nn

from .base import BlockPair, EncoderFamily, TowerSet, WeightFile, register_family
from .configs import HTSATConfig, SwinV2Config
from .htsat import HTSATView, create_audio_encoder
from .swinv2 import SwinV2View, create_visual_encoder

if TYPE_CHECKING:
    from ..dual import DualEncoder


def pair_by_depth_ratio(visual_depths: list[int], audio_depths: list[int]) -> list[BlockPair]:
    """Pairs of (visual, audio) blocks, stage by stage, derived from the depths."""
    if len(visual_depths) != len(audio_depths):
        raise ValueError(
            f"the encoders have {len(visual_depths)} and {len(audio_depths)} stages; they must match"
        )
    pairs = []
    for stage, (dv, da) in enumerate(zip(visual_depths, audio_depths)):
        deep, shallow = max(dv, da), min(dv, da)
        if shallow == 0 or deep % shallow:
            raise ValueError(
                f"stage {stage + 1}: depths {dv} (visual) and {da} (audio) cannot be paired; "
                "the deeper stage must be a multiple of the shallower one"
            )
        r = deep // shallow
        for k in range(shallow):
            j = r * k + r - 1
            pairs.append(BlockPair(stage, j if dv >= da else k, stage, k if dv >= da else j))
    return pairs


def _attn_half(block: SwinTransformerV2Block, x: torch.Tensor) -> torch.Tensor:
    """``drop_path(norm1(attn(x)))`` of a res-post-norm Swin-V2 block, NHWC in and out."""
    return block.drop_path1(block.norm1(block._attn(x)))


def _mlp_half(block: SwinTransformerV2Block, x: torch.Tensor) -> torch.Tensor:
    return block.drop_path2(block.norm2(block.mlp(x)))


def _halves(enc: DualEncoder) -> tuple:
    """The half-block functions this walker runs (compiled ones after regional compilation)."""
    return enc.__dict__.get("_swin_halves", (_attn_half, _mlp_half))


def compile_halves(enc: DualEncoder, options: dict) -> None:
    """Regional compilation of the paired visual blocks, which run as two halves."""
    enc.__dict__["_swin_halves"] = (torch.compile(_attn_half, **options), torch.compile(_mlp_half, **options))


def paired_step(
    enc: DualEncoder, i: int, v_block: nn.Module, a_block: nn.Module, v: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pair (release AVE/nets/net_trans.py forward): p1 adapters from the same (v, a), the
    visual attention half and the whole audio block, p2 adapters, the visual MLP half."""
    attn_half, mlp_half = _halves(enc)
    n, h, w, cv = v.shape
    _, ha, wa, ca = a.shape
    vt, at = v.reshape(n, h * w, cv), a.reshape(n, ha * wa, ca)
    ra, _ = enc.adapt("audio_p1", i, at, vt)
    rv, _ = enc.adapt("visual_p1", i, vt, at)
    v = v + enc.run(partial(attn_half, v_block), v) + rv.view(n, h, w, cv)
    a = enc.run(a_block, a) + ra.view(n, ha, wa, ca)
    vt, at = v.reshape(n, h * w, cv), a.reshape(n, ha * wa, ca)
    ra, map_a = enc.adapt("audio_p2", i, at, vt)
    rv, map_v = enc.adapt("visual_p2", i, vt, at)
    v = v + enc.run(partial(mlp_half, v_block), v) + rv.view(n, h, w, cv)
    a = a + ra.view(n, ha, wa, ca)
    return v, a, map_v, map_a


def pool_with_maps(
    enc: DualEncoder, v: torch.Tensor, a: torch.Tensor, map_v: torch.Tensor, map_a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last p2 adapters' spatial maps pool the (normalised) visual and the audio tokens."""
    n = v.shape[0]
    pooled_v = torch.bmm(map_v, v.reshape(n, -1, v.shape[-1])).squeeze(1)
    pooled_a = torch.bmm(map_a, a.reshape(n, -1, a.shape[-1])).squeeze(1)
    return pooled_v, pooled_a


def pool_mean(
    enc: DualEncoder, v: torch.Tensor, a: torch.Tensor, map_v=None, map_a=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoders' own features: tokens averaged (the t-SNE baseline)."""
    return v.flatten(1, 2).mean(1), a.flatten(1, 2).mean(1)


def build(visual: SwinV2Config, audio: HTSATConfig, text: None, load_weights: bool) -> TowerSet:
    if not load_weights:
        visual, audio = replace(visual, weights=None), replace(audio, weights=None)
    swin = create_visual_encoder(visual)
    htsat = create_audio_encoder(audio)
    return TowerSet(
        visual=swin,
        audio=htsat,
        visual_view=SwinV2View(swin),
        audio_view=HTSATView(htsat),
    )


def weight_files(visual: SwinV2Config, audio: HTSATConfig, text: None) -> list[WeightFile]:
    """Swin-V2's and HTS-AT's files; without one a tower is randomly initialised (a warning)."""
    return [
        WeightFile(
            "model.visual.weights",
            None if visual.weights == "hub" else visual.weights,  # "hub": timm downloads it
            f"{visual.name} weights",
            "timm / Hugging Face (.safetensors or .bin) or the original .pth",
        ),
        WeightFile(
            "model.audio.weights",
            audio.weights,
            "HTS-AT AudioSet weights",
            "HTSAT_AudioSet_Saved_1.ckpt from the HTS-AT release",
        ),
    ]


SWINV2_HTSAT = register_family(
    EncoderFamily(
        name="swinv2-htsat",
        description="Swin-V2-L (ImageNet-22k, 192 px) + HTS-AT (AudioSet, 32 kHz); the main tasks",
        visual_config=SwinV2Config,
        audio_config=HTSATConfig,
        build=build,
        pair_blocks=pair_by_depth_ratio,
        paired_step=paired_step,
        pool=pool_with_maps,
        pool_plain=pool_mean,
        normalization=lambda cfg: (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        recompute_auto_blocks=24,
        compile_paired_step=compile_halves,
        weight_files=weight_files,
        licenses={
            "visual": ("Swin-V2-L, ImageNet-22k (microsoft/Swin-Transformer, via timm)", "mit"),
            "audio": ("HTS-AT, AudioSet (RetroCirce/HTS-Audio-Transformer)", "mit"),
        },
    )
)
