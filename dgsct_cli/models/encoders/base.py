"""What the dual-encoder walker needs to know about an encoder family.

A *tower* is one encoder (visual or audio) seen as embed -> stages of blocks -> finish. A *family*
names two towers (and text towers, if any), how to build them and read their weight files, how
their blocks pair up, how a paired block runs with its four DG-SCT adapters, and how the final
tokens are pooled. Families are registered by name (``model.family`` in a recipe), the way timm
registers architectures and open_clip picks its towers from a config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from .configs import FAMILY_CONFIGS, FamilyConfigs

if TYPE_CHECKING:
    from ..dual import DualEncoder

__all__ = [
    "BlockPair",
    "EncoderFamily",
    "FAMILIES",
    "StageGeometry",
    "StagedNHWCView",
    "Tower",
    "TowerSet",
    "WeightFile",
    "get_family",
    "register_family",
]


@dataclass(frozen=True)
class StageGeometry:
    """One stage of a tower: token width, tokens per sample (adapter L) and number of blocks."""

    channels: int
    tokens: int
    depth: int


@dataclass(frozen=True)
class BlockPair:
    """A visual block and the audio block it is paired with (stage and index inside the stage)."""

    visual_stage: int
    visual_block: int
    audio_stage: int
    audio_block: int


class Tower(Protocol):
    """The walker's view of one encoder. Tokens travel in the tower's own layout between calls;
    ``tokens`` flattens them to ``[N, L, C]`` (the maps the heads and pictures read)."""

    geometry: list[StageGeometry]

    def enter(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """Run the start of ``stage`` (patch merging for the later stages of a hierarchy)."""
        ...

    def blocks(self, stage: int) -> Sequence[nn.Module]: ...

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The tower's final normalisation (identity when it has none)."""
        ...

    def tokens(self, x: torch.Tensor) -> torch.Tensor: ...


class StagedNHWCView:
    """A tower view of a timm-style hierarchy: ``model.layers[s].downsample`` starts stage ``s``,
    ``model.layers[s].blocks`` are its blocks, tokens travel as NHWC grids."""

    model: nn.Module

    def enter(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        return self.model.layers[stage].downsample(x)

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        return self.model.layers[stage].blocks

    @staticmethod
    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, 2)

    @staticmethod
    def grid(values: torch.Tensor) -> torch.Tensor:
        """Per-token values ``[N, L]`` of a square stage as an image ``[N, h, w]`` (for pictures)."""
        side = math.isqrt(values.shape[-1])
        return values.reshape(values.shape[0], side, side)


# (walker, pair index, visual block, audio block, v, a) -> (v, a, visual map, audio map)
PairedStep = Callable[
    ["DualEncoder", int, nn.Module, nn.Module, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
]
# (walker, v finished, a, visual map, audio map) -> (pooled visual [N, Cv], pooled audio [N, Ca])
Pooling = Callable[
    ["DualEncoder", torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    tuple[torch.Tensor, torch.Tensor],
]


@dataclass
class TowerSet:
    """What a family's builder returns: the two encoders as modules, the walker's views of them,
    frozen extra modules the pooling uses (e.g. CLAP's audio projection) and text towers."""

    visual: nn.Module
    audio: nn.Module
    visual_view: Tower
    audio_view: Tower
    extras: dict[str, nn.Module] = field(default_factory=dict)
    text: dict[str, nn.Module] = field(default_factory=dict)
    # Widths of the pooled features when they are not the last stages' widths (projections).
    pooled_dims: tuple[int, int] | None = None


@dataclass(frozen=True)
class WeightFile:
    """A file (or folder) a family reads, as a recipe names it: the recipe ``key``, its value
    ``path`` (None: not set), what it is, where it comes from, whether the towers can do without
    it (``required=False``: randomly initialised, with a warning) and, for a folder, the files it
    must hold."""

    key: str
    path: str | None
    what: str
    source: str
    required: bool = False
    contents: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """What is not there: ``[]`` when the file (or the folder with its files) exists."""
        if self.path is None:
            return []
        path = Path(self.path)
        if not self.contents:
            return [] if path.is_file() else [str(path)]
        if not path.is_dir():
            return [str(path)]
        return [str(path / name) for name in self.contents if not (path / name).is_file()]


@dataclass(frozen=True)
class EncoderFamily:
    """A registry entry: config types, builder, pairing rule, paired step and pooling.

    ``build(visual_cfg, audio_cfg, text_cfg, load_weights)`` returns a :class:`TowerSet`;
    ``normalization(visual_cfg)`` the per-channel (mean, std) its frames are normalised with
    (pixel values in [0, 1]);
    ``pair_blocks(visual_depths, audio_depths)`` the block pairs in walking order;
    ``paired_step`` runs one pair with its adapters; ``pool`` and ``pool_plain`` turn the final
    tokens into one vector per sample, with and without the adapters' maps.
    """

    name: str
    description: str
    visual_config: type
    audio_config: type
    build: Callable[[Any, Any, Any, bool], TowerSet]
    pair_blocks: Callable[[list[int], list[int]], list[BlockPair]]
    paired_step: PairedStep
    pool: Pooling
    pool_plain: Pooling
    normalization: Callable[[Any], tuple[tuple[float, ...], tuple[float, ...]]]
    text_config: type | None = None
    # Recompute "auto" switches on when the visual tower has at least this many blocks.
    recompute_auto_blocks: int = 24
    # Regional compilation of what the paired step runs besides whole blocks and adapters (e.g.
    # Swin-V2's half blocks): called with the walker and ``torch.compile``'s keyword arguments.
    compile_paired_step: Callable[[DualEncoder, dict[str, Any]], None] | None = None
    # ``weight_files(visual_cfg, audio_cfg, text_cfg)``: every file the configs name (set or not),
    # checked together before any data or model is built.
    weight_files: Callable[[Any, Any, Any], list[WeightFile]] | None = None
    # ``write_random_files(visual_cfg, audio_cfg, text_cfg, keys)``: random files of the configs'
    # shapes in the published layouts at the paths of the recipe ``keys`` given (demo recipes with
    # ``model.random_weight_files``); returns the paths written.
    write_random_files: Callable[[Any, Any, Any, set[str]], list[Path]] | None = None
    # What to try without the files (appended to the message naming the missing ones).
    without_files_hint: str = ""
    # tower -> (model and the repository its weights come from, SPDX licence): model cards say it.
    licenses: dict[str, tuple[str, str]] = field(default_factory=dict)


FAMILIES: dict[str, EncoderFamily] = {}


def register_family(family: EncoderFamily) -> EncoderFamily:
    FAMILIES[family.name] = family
    # Recipes are resolved from the torch-free table (models/encoders/configs.py).
    FAMILY_CONFIGS[family.name] = FamilyConfigs(family.visual_config, family.audio_config, family.text_config)
    return family


def get_family(name: str) -> EncoderFamily:
    from . import clip_clap, swinv2_htsat, swinv2_shared  # noqa: F401  (importing a family registers it)

    if name not in FAMILIES:
        raise ValueError(f"unknown encoder family {name!r}; available: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
