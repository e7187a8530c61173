"""The dual-encoder walker: runs two hierarchical encoders side by side and inserts DG-SCT adapters.

Blocks are paired stage by stage from the stage depths (spec dgsct-core.md section 3): in a stage
where one encoder has ``r`` times the blocks of the other, block ``r*k + r - 1`` of the deeper one
pairs with block ``k`` of the shallower one; other blocks run plainly. Each pair gets four adapters
(p1 before the visual attention half, p2 before the visual MLP half, for each direction).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapter import AdapterSettings, DGSCTAdapter
from .encoders.audio import HTSAT


@dataclass(frozen=True)
class BlockPair:
    stage: int
    visual_block: int
    audio_block: int


def pair_blocks(visual_depths: list[int], audio_depths: list[int]) -> list[BlockPair]:
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
            pairs.append(BlockPair(stage, j if dv >= da else k, k if dv >= da else j))
    return pairs


def _v2_attn_half(block: SwinTransformerV2Block, x: torch.Tensor) -> torch.Tensor:
    """``drop_path(norm1(attn(x)))`` of a res-post-norm Swin-V2 block, NHWC in and out."""
    return block.drop_path1(block.norm1(block._attn(x)))


def _v2_mlp_half(block: SwinTransformerV2Block, x: torch.Tensor) -> torch.Tensor:
    return block.drop_path2(block.norm2(block.mlp(x)))


def _run(fn, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """``fn(x)``, with activation checkpointing when asked and something upstream needs gradients."""
    if recompute and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)


@contextmanager
def _frozen_batchnorm_stats(module: nn.Module):
    """Keep BatchNorm running statistics unchanged (batch statistics are still used in training).

    The recomputation of a checkpointed adapter must not update them a second time.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def _adapt(adapter: DGSCTAdapter, x: torch.Tensor, y: torch.Tensor, recompute: bool):
    """Run an adapter; with recompute its activations are rebuilt in backward instead of stored."""
    if not (recompute and torch.is_grad_enabled()):
        return adapter(x, y)
    calls = {"n": 0}

    def fn(x_: torch.Tensor, y_: torch.Tensor):
        calls["n"] += 1
        if calls["n"] == 1:
            return adapter(x_, y_)
        with _frozen_batchnorm_stats(adapter):
            return adapter(x_, y_)

    return checkpoint(fn, x, y, use_reentrant=False)


class DualEncoder(nn.Module):
    """Swin-V2 (visual) + HTS-AT (audio) with 4 adapters per block pair.

    ``forward(frames [N, 3, H, W], wave [N, samples])`` returns pooled features
    ``visual [N, C_v]`` and ``audio [N, C_a]`` (spatial-attention pooling with the last p2 maps).
    """

    def __init__(
        self,
        visual: SwinTransformerV2,
        audio: HTSAT,
        settings: AdapterSettings | None = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        self.visual = visual
        self.audio = audio
        self.settings = settings or AdapterSettings()
        self.recompute = recompute
        v_geom = [(s.blocks[0].dim, s.output_resolution, len(s.blocks)) for s in visual.layers]
        a_geom = [(s.blocks[0].dim, s.output_resolution, len(s.blocks)) for s in audio.layers]
        self.pairs = pair_blocks([g[2] for g in v_geom], [g[2] for g in a_geom])
        # Per stage: paired visual block -> (adapter index, audio block), looked up by every forward.
        self.pairs_by_stage: dict[int, dict[int, tuple[int, int]]] = {}
        for i, p in enumerate(self.pairs):
            self.pairs_by_stage.setdefault(p.stage, {})[p.visual_block] = (i, p.audio_block)

        def tokens(res: tuple[int, int]) -> int:
            return res[0] * res[1]

        s = self.settings
        audio_settings = s if s.audio_gate is None else replace(s, use_gate=s.audio_gate, audio_gate=None)

        def adapters(direction: str) -> nn.ModuleList:
            mods = []
            for p in self.pairs:
                (cv, rv, _), (ca, ra, _) = v_geom[p.stage], a_geom[p.stage]
                if direction == "visual":
                    mods.append(DGSCTAdapter(cv, tokens(rv), ca, tokens(ra), s))
                else:
                    mods.append(DGSCTAdapter(ca, tokens(ra), cv, tokens(rv), audio_settings))
            return nn.ModuleList(mods)

        # Names follow the release so its checkpoints map one to one.
        self.audio_adapter_blocks_p1 = adapters("audio")
        self.vis_adapter_blocks_p1 = adapters("visual")
        self.audio_adapter_blocks_p2 = adapters("audio")
        self.vis_adapter_blocks_p2 = adapters("visual")
        self.visual_dim = v_geom[-1][0]
        self.audio_dim = a_geom[-1][0]

    def adapter_modules(self) -> list[nn.ModuleList]:
        return [
            self.audio_adapter_blocks_p1,
            self.vis_adapter_blocks_p1,
            self.audio_adapter_blocks_p2,
            self.vis_adapter_blocks_p2,
        ]

    def _paired_step(
        self, i: int, v_block: SwinTransformerV2Block, a_block: nn.Module, v: torch.Tensor, a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, h, w, cv = v.shape
        _, ha, wa, ca = a.shape
        vt, at = v.reshape(n, h * w, cv), a.reshape(n, ha * wa, ca)
        rc = self.recompute
        ra, _ = _adapt(self.audio_adapter_blocks_p1[i], at, vt, rc)
        rv, _ = _adapt(self.vis_adapter_blocks_p1[i], vt, at, rc)
        v = v + _run(partial(_v2_attn_half, v_block), v, self.recompute) + rv.view(n, h, w, cv)
        a = _run(a_block, a, self.recompute) + ra.view(n, ha, wa, ca)
        vt, at = v.reshape(n, h * w, cv), a.reshape(n, ha * wa, ca)
        ra, map_a = _adapt(self.audio_adapter_blocks_p2[i], at, vt, rc)
        rv, map_v = _adapt(self.vis_adapter_blocks_p2[i], vt, at, rc)
        v = v + _run(partial(_v2_mlp_half, v_block), v, self.recompute) + rv.view(n, h, w, cv)
        a = a + ra.view(n, ha, wa, ca)
        return v, a, map_v, map_a

    def forward(
        self,
        frames: torch.Tensor,
        wave: torch.Tensor,
        mix_lambda: torch.Tensor | None = None,
        use_adapters: bool = True,
    ) -> dict[str, torch.Tensor]:
        v = self.visual.patch_embed(frames)
        a = self.audio.embed(wave, mix_lambda)
        if not use_adapters:
            return self._plain(v, a)
        map_v = map_a = None
        for stage, (v_stage, a_stage) in enumerate(zip(self.visual.layers, self.audio.layers)):
            v = v_stage.downsample(v)
            a = a_stage.downsample(a)
            paired = self.pairs_by_stage.get(stage, {})
            a_next = 0
            for j, v_block in enumerate(v_stage.blocks):
                if j not in paired:
                    v = _run(v_block, v, self.recompute)
                    continue
                i, a_j = paired[j]
                # Audio blocks the pairing skips (a deeper audio stage) run plainly before their pair;
                # pairs increase in both encoders, so none of them is paired.
                for k in range(a_next, a_j):
                    a = _run(a_stage.blocks[k], a, self.recompute)
                v, a, map_v, map_a = self._paired_step(i, v_block, a_stage.blocks[a_j], v, a)
                a_next = a_j + 1
            for k in range(a_next, len(a_stage.blocks)):
                a = _run(a_stage.blocks[k], a, self.recompute)
        v = self.visual.norm(v)
        n = v.shape[0]
        pooled_v = torch.bmm(map_v, v.reshape(n, -1, v.shape[-1])).squeeze(1)
        pooled_a = torch.bmm(map_a, a.reshape(n, -1, a.shape[-1])).squeeze(1)
        return {"visual": pooled_v, "audio": pooled_a}

    def _plain(self, v: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen encoders' own features (mean-pooled), for comparisons such as t-SNE."""
        for v_stage, a_stage in zip(self.visual.layers, self.audio.layers):
            v = v_stage(v)
            a = a_stage(a)
        v = self.visual.norm(v)
        return {"visual": v.flatten(1, 2).mean(1), "audio": a.flatten(1, 2).mean(1)}
