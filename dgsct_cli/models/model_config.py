"""Recipe section ``model``: the settings of the model core every task shares, in a module without
torch, so that a recipe is resolved and checked without importing it (``dgsct recipes show``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..schema import Annotated, OneOf, Range, build_dataclass
from .adapter_settings import AdapterSettings
from .encoders.configs import family_configs

__all__ = ["ModelConfig", "resolve_family_sections"]


@dataclass
class ModelConfig:
    """Recipe section ``model``. ``visual``, ``audio`` and ``text`` are typed by the encoder family
    (``family``), ``head`` by the task; :func:`resolve_family_sections` fills and checks them."""

    family: str = "swinv2-htsat"
    visual: Any = None
    audio: Any = None
    text: Any = None
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    head: Any = None
    num_segments: Annotated[int, Range(1)] = 10
    # Side length of the frames the model is called with, when it is not the visual tower's: the
    # model resizes them (bicubic, no antialias) to ``visual.img_size`` first. AVS: 224-pixel
    # frames, 192-pixel Swin-V2 (release AVS/avs_scripts/avs_s4/model/PVT_AVSModel.py:790).
    input_size: Annotated[int, Range(1)] | None = None
    # The release trains with the frozen encoders in train mode (SpecAugment, batch-stat bn0,
    # stochastic depth); false holds them in eval mode.
    encoders_train_mode: bool = True
    # Activation checkpointing of the frozen encoder blocks and the adapters: "auto" = on when the
    # visual tower is as deep as the full-size one, where stored activations dominate memory.
    recompute: Annotated[str, OneOf("auto", "on", "off")] = "auto"
    # false: the frozen towers alone, no adapters (pooling by token means), for heads trained on
    # the plain encoders (e.g. a grounding pre-training stage). The same as ``adapter.kind: none``,
    # which it is kept in step with (older recipes say ``use_adapters: false``).
    use_adapters: bool = True
    # Demo recipes: write random files of the towers' shapes, in the published layouts, at the
    # paths model.visual/audio/text name when they are missing (nothing is downloaded).
    random_weight_files: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, AdapterSettings):
            return
        if not self.use_adapters and self.adapter.kind != "none":
            if self.adapter.kind != "dgsct":
                raise ValueError(
                    f"use_adapters: false contradicts adapter.kind: {self.adapter.kind} "
                    "(use adapter.kind: none for a model without adapters)"
                )
            self.adapter = replace(self.adapter, kind="none")
        elif self.adapter.kind == "none":
            self.use_adapters = False


def resolve_family_sections(cfg: ModelConfig, where: str = "recipe") -> ModelConfig:
    """Build ``visual``/``audio``/``text`` into the family's config types (defaults when absent)."""
    try:
        configs = family_configs(cfg.family)
    except ValueError as exc:
        raise ValueError(f"{where}: model.family: {exc}") from None
    for section, cls in (("visual", configs.visual), ("audio", configs.audio), ("text", configs.text)):
        value = getattr(cfg, section)
        if cls is None:
            if value not in (None, {}):
                raise ValueError(f"{where}: model.{section}: the {cfg.family} family has no {section} tower")
            continue
        if not isinstance(value, cls):
            setattr(cfg, section, build_dataclass(cls, value, f"model.{section}", where))
    return cfg
