"""The dual-encoder walker: runs two encoders side by side and inserts adapters at block pairs.

The walker knows no encoder and no adapter: an encoder family (``models/encoders``) gives it two
towers (embed, stages of blocks, finish), the block pairs in walking order, the step that runs one
pair with its four adapters (p1 and p2, each direction), and the pooling; an adapter kind
(``models/adapter_kinds.py``: DG-SCT, LAVisH, none) builds the adapters. Between pairs each tower
runs its unpaired blocks and its stage transitions on its own. Adapter names follow the release
(``audio_adapter_blocks_p1`` ...), so release checkpoints map one to one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapter import AdapterSettings
from .adapter_kinds import get_adapter_kind
from .encoders.base import BlockPair, EncoderFamily, Tower, TowerSet
from .output import EncoderNeeds, EncoderOutput

__all__ = ["DualEncoder"]

_ADAPTER_LISTS = {
    "audio_p1": "audio_adapter_blocks_p1",
    "visual_p1": "vis_adapter_blocks_p1",
    "audio_p2": "audio_adapter_blocks_p2",
    "visual_p2": "vis_adapter_blocks_p2",
}


def _run(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, recompute: bool) -> torch.Tensor:
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


def _adapt(adapter: nn.Module, x: torch.Tensor, y: torch.Tensor, recompute: bool):
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


class _Cursor:
    """Where one tower is in its walk: the next block to run, the tokens, and the stage taps."""

    def __init__(self, view: Tower, x: torch.Tensor, run, tap: list[torch.Tensor] | None) -> None:
        self.view, self.x, self.run, self.tap = view, x, run, tap
        self.stage, self.block, self.entered = 0, 0, -1
        self.depths = [g.depth for g in view.geometry]

    def _enter(self) -> None:
        while self.entered < self.stage < len(self.depths):
            self.entered += 1
            self.x = self.view.enter(self.entered, self.x)

    def _after_block(self) -> None:
        self.block += 1
        if self.block == self.depths[self.stage]:
            if self.tap is not None:  # after the stage's blocks, before the next stage's merging
                self.tap.append(self.view.tokens(self.x))
            self.stage, self.block = self.stage + 1, 0

    def run_until(self, stage: int, block: int) -> None:
        """Run every block before ``(stage, block)`` and enter that stage."""
        while (self.stage, self.block) < (stage, block):
            self._enter()
            self.x = self.run(self.view.blocks(self.stage)[self.block], self.x)
            self._after_block()
        self._enter()

    def current_block(self) -> nn.Module:
        return self.view.blocks(self.stage)[self.block]

    def finish(self) -> torch.Tensor:
        self.run_until(len(self.depths), 0)
        return self.x


class DualEncoder(nn.Module):
    """Two towers of an encoder family with 4 adapters (of ``settings.kind``) per block pair.

    ``forward(frames [N, 3, H, W], wave [N, samples])`` returns an :class:`EncoderOutput` with
    pooled ``visual [N, Cv]`` and ``audio [N, Ca]`` (and what ``needs`` asks for).
    """

    def __init__(
        self,
        family: EncoderFamily,
        towers: TowerSet,
        settings: AdapterSettings | None = None,
        recompute: bool = False,
        adapters: bool = True,
    ) -> None:
        super().__init__()
        self.family = family
        self.visual = towers.visual
        self.audio = towers.audio
        for name, module in towers.extras.items():
            self.add_module(name, module)
        self.text = nn.ModuleDict(towers.text) if towers.text else None
        self.views = (towers.visual_view, towers.audio_view)
        self.settings = settings or AdapterSettings()
        self.recompute = recompute
        v_geom, a_geom = towers.visual_view.geometry, towers.audio_view.geometry
        kind = get_adapter_kind(self.settings.kind)
        # Without adapters (``adapters=False`` or a kind that builds none) there are no pairs: the
        # towers run alone.
        self.pairs: list[BlockPair] = (
            family.pair_blocks([g.depth for g in v_geom], [g.depth for g in a_geom])
            if adapters and kind.build is not None
            else []
        )

        s = self.settings
        audio_settings = s if s.audio_gate is None else replace(s, use_gate=s.audio_gate, audio_gate=None)

        def adapters(direction: str) -> nn.ModuleList:
            mods = []
            for p in self.pairs:
                v, a = v_geom[p.visual_stage], a_geom[p.audio_stage]
                if direction == "visual":
                    mods.append(kind.build(v.channels, v.tokens, a.channels, a.tokens, s))
                else:
                    mods.append(kind.build(a.channels, a.tokens, v.channels, v.tokens, audio_settings))
            return nn.ModuleList(mods)

        # Names follow the release so its checkpoints map one to one.
        self.audio_adapter_blocks_p1 = adapters("audio")
        self.vis_adapter_blocks_p1 = adapters("visual")
        self.audio_adapter_blocks_p2 = adapters("audio")
        self.vis_adapter_blocks_p2 = adapters("visual")
        self.visual_dim, self.audio_dim = towers.pooled_dims or (v_geom[-1].channels, a_geom[-1].channels)

    def compile_regions(self, **options) -> int:
        """``torch.compile`` every tower block and every adapter on its own (regional
        compilation: identical blocks share one compiled graph, so compiling takes seconds, not
        the minutes a whole-model compile takes), plus what the family's paired step runs besides
        them. The walker, the stage transitions and the heads stay eager. Returns the number of
        modules compiled."""
        import torch._dynamo

        # Static shapes: the blocks of one class differ in shape from stage to stage, and dynamo's
        # "automatic dynamic" would turn the second shape it sees into a symbolic-shape recompile
        # (slower to compile, less specialised kernels). A new batch size (the last, smaller batch;
        # eval's) is one more static compile per region.
        options = {"dynamic": False, **options}
        # Each distinct block or adapter shape is one more compile of the same code: a model with
        # four stages per tower and adapters in both directions needs more than dynamo's default
        # of 8 per function, past which it would silently run the rest eagerly.
        limit = 16 * (len(self.pairs) + sum(len(v.geometry) for v in self.views)) + 8
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, limit)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * limit)
        compiled = 0
        for view in self.views:
            for stage in range(len(view.geometry)):
                for block in view.blocks(stage):
                    block.compile(**options)
                    compiled += 1
        for adapters in self.adapter_modules():
            for adapter in adapters:
                adapter.compile(**options)
                compiled += 1
        if self.family.compile_paired_step is not None:
            self.family.compile_paired_step(self, options)
        return compiled

    def adapter_modules(self) -> list[nn.ModuleList]:
        return [getattr(self, name) for name in _ADAPTER_LISTS.values()]

    # -- what a family's paired step calls -------------------------------------------------------
    def adapt(self, kind: str, i: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter ``kind`` (audio_p1, visual_p1, audio_p2, visual_p2) of pair ``i`` on tokens
        ``x [N, L, C]`` guided by ``y [N, L', C']``: ``(residual [N, L, C], spatial map [N, 1, L])``."""
        return _adapt(getattr(self, _ADAPTER_LISTS[kind])[i], x, y, self.recompute)

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """A frozen block (or half block), recomputed in backward when recompute is on."""
        return _run(fn, x, self.recompute)

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        frames: torch.Tensor,
        wave: torch.Tensor,
        mix_lambda: torch.Tensor | None = None,
        use_adapters: bool = True,
        needs: EncoderNeeds | None = None,
    ) -> EncoderOutput:
        needs = needs or EncoderNeeds()
        use_adapters = use_adapters and bool(self.pairs)
        v_view, a_view = self.views
        taps: list[torch.Tensor] | None = [] if needs.visual_stages else None
        v = _Cursor(v_view, v_view.embed(frames), self.run, taps)
        a = _Cursor(a_view, a_view.embed(wave, mix_lambda), self.run, None)
        map_v = map_a = None
        if use_adapters:
            for i, p in enumerate(self.pairs):
                v.run_until(p.visual_stage, p.visual_block)
                a.run_until(p.audio_stage, p.audio_block)
                v.x, a.x, map_v, map_a = self.family.paired_step(
                    self, i, v.current_block(), a.current_block(), v.x, a.x
                )
                v._after_block()
                a._after_block()
        v_out = v_view.finish(v.finish())
        a_out = a_view.finish(a.finish())
        if taps is not None:
            taps[-1] = v_view.tokens(v_out)  # the last stage's map is taken after the final norm
        # An adapter kind without attention maps (LAVisH) pools as the plain towers do (token means).
        pool = self.family.pool if use_adapters and map_v is not None else self.family.pool_plain
        pooled_v, pooled_a = pool(self, v_out, a_out, map_v, map_a)
        return EncoderOutput(
            visual=pooled_v,
            audio=pooled_a,
            visual_map=map_v,
            audio_map=map_a,
            visual_stages=taps,
            visual_tokens=v_view.tokens(v_out) if needs.visual_tokens else None,
        )

    def encode_plain_visual(self, frames: torch.Tensor) -> torch.Tensor:
        """The visual tower alone, no adapters, no audio: final normalised tokens ``[N, L, C]``."""
        v_view = self.views[0]
        cursor = _Cursor(v_view, v_view.embed(frames), self.run, None)
        return v_view.tokens(v_view.finish(cursor.finish()))
