"""Adapter kinds: what sits at an encoder family's block pairs (``model.adapter.kind``).

A kind is a registry entry, like an encoder family: a builder
``build(channels, tokens, guide_channels, guide_tokens, settings) -> nn.Module`` whose module maps
``(x [N, L, C], y [N, L', C'])`` to ``(residual [N, L, C], spatial map [N, 1, L] or None)``, and a
check of the settings it is given. The walker (``dual.py``) builds four adapters per block pair
with it; a kind without a builder (``none``) leaves the towers alone (no pairs). Adding a kind
touches this registry (and recipes), not the tasks or the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .adapter_settings import GUIDANCE_PATHS

if TYPE_CHECKING:  # the registry imports no torch: recipes are checked without it
    from torch import nn

    from .adapter_settings import AdapterSettings

__all__ = ["ADAPTER_KINDS", "AdapterKind", "adapter_kind_names", "get_adapter_kind", "register_adapter_kind"]

AdapterBuilder = Callable[[int, int, int, int, "AdapterSettings"], "nn.Module"]


def _no_check(settings: AdapterSettings) -> None:
    return None


def _no_label(settings: AdapterSettings, family: str) -> str:
    return settings.kind


@dataclass(frozen=True)
class AdapterKind:
    """A registry entry. ``build`` is None for a kind without adapters; ``check`` raises
    ``ValueError`` (one line, naming the ``model.adapter`` key) for settings the kind cannot use;
    ``method(settings, family)`` names the method a model of this kind is, as papers name it
    (``dgsct compare`` matches it with a task's published rows)."""

    name: str
    description: str
    build: AdapterBuilder | None
    check: Callable[[AdapterSettings], None] = _no_check
    method: Callable[[AdapterSettings, str], str] = _no_label


ADAPTER_KINDS: dict[str, AdapterKind] = {}


def register_adapter_kind(kind: AdapterKind) -> AdapterKind:
    ADAPTER_KINDS[kind.name] = kind
    return kind


def adapter_kind_names() -> list[str]:
    return sorted(ADAPTER_KINDS)


def get_adapter_kind(name: str) -> AdapterKind:
    if name not in ADAPTER_KINDS:
        raise ValueError(f"kind: unknown adapter kind {name!r}; available: {', '.join(adapter_kind_names())}")
    return ADAPTER_KINDS[name]


# -- the built-in kinds ----------------------------------------------------------------------------


def _check_guidance_only_for_dgsct(settings: AdapterSettings) -> None:
    if set(settings.guidance) != set(GUIDANCE_PATHS):
        raise ValueError(
            f"guidance: {settings.guidance} selects DG-SCT's attention paths; the {settings.kind!r} "
            "adapter kind has none (leave guidance out, or use kind: dgsct)"
        )


def _check_dgsct(settings: AdapterSettings) -> None:
    if not settings.runs("temporal") and not settings.temporal_gate:
        raise ValueError(
            "guidance: leaving out 'temporal' needs adapters with a temporal path (temporal_gate: "
            "true, the few-shot variant); these adapters have none (the release's main-task adapters "
            "compute no temporal attention), so the model would not change"
        )


def _check_lavish(settings: AdapterSettings) -> None:
    _check_guidance_only_for_dgsct(settings)
    if settings.temporal_gate:
        raise ValueError("temporal_gate: DG-SCT's few-shot temporal gate is not part of a LAVisH adapter")


def _dgsct_method(settings: AdapterSettings, family: str) -> str:
    if set(settings.guidance) == set(GUIDANCE_PATHS):
        return "DG-SCT"
    kept = [p for p in GUIDANCE_PATHS if p in settings.guidance]
    return f"DG-SCT ({' + '.join(kept) or 'no guidance'})"


def _lavish_method(settings: AdapterSettings, family: str) -> str:
    # LAVisH as published shares one Swin-V2 between the modalities; LAVisH* (DG-SCT's name) is
    # LAVisH on DG-SCT's two encoders.
    return "LAVisH" if family == "swinv2-shared" else "LAVisH*"


def _build_dgsct(c: int, l: int, cg: int, lg: int, settings: AdapterSettings) -> nn.Module:  # noqa: E741
    from .adapter import DGSCTAdapter

    return DGSCTAdapter(c, l, cg, lg, settings)


def _build_lavish(c: int, l: int, cg: int, lg: int, settings: AdapterSettings) -> nn.Module:  # noqa: E741
    from .lavish import LAVisHAdapter

    return LAVisHAdapter(c, l, cg, lg, settings)


register_adapter_kind(
    AdapterKind(
        "dgsct",
        "DG-SCT (NeurIPS 2023): cross-modal prompts with spatial, channel (and temporal) guidance",
        _build_dgsct,
        _check_dgsct,
        _dgsct_method,
    )
)
register_adapter_kind(
    AdapterKind(
        "lavish",
        "LAVisH (CVPR 2023): latent tokens that gather the other modality + a bottleneck",
        _build_lavish,
        _check_lavish,
        _lavish_method,
    )
)
register_adapter_kind(
    AdapterKind(
        "none",
        "no adapters: the frozen encoders' pooled features feed the head (the paper's baseline)",
        None,
        _check_guidance_only_for_dgsct,
        lambda settings, family: "frozen baseline",
    )
)
