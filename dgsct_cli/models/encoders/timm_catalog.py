"""What the installed timm offers the Swin-V2 tower: its architecture names and the settings of
``SwinTransformerV2``. Checking ``model.visual`` needs them, and importing timm imports torch
(seconds); so they are read from timm once per installed timm version and kept as a small JSON
file in the user's cache (``$DGSCT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dgsct``, else
``~/.cache/dgsct``). A cache that cannot be read or written is recomputed, never an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

__all__ = ["TimmCatalog", "cache_dir", "timm_catalog"]

# Bump when what the file holds changes, so older files are recomputed.
_FORMAT = 1


@dataclass(frozen=True)
class TimmCatalog:
    """``architectures``: every timm architecture name (no pretrained tag); ``swin_v2``: those whose
    entry point is timm's ``swin_transformer_v2`` module, in timm's order; ``swin_v2_settings``: the
    keyword parameters of ``SwinTransformerV2.__init__``."""

    timm_version: str
    architectures: frozenset[str]
    swin_v2: tuple[str, ...]
    swin_v2_settings: tuple[str, ...]

    def architecture(self, name: str) -> str:
        """The architecture of a model name, without its pretrained tag (``a.tag`` -> ``a``), as
        timm's ``is_model`` reads it."""
        return name.split(".", 1)[0]


def cache_dir() -> Path:
    """Where dgsct keeps small files it can recompute."""
    if os.environ.get("DGSCT_CACHE_DIR"):
        return Path(os.environ["DGSCT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dgsct"


def _read_from_timm(version: str) -> TimmCatalog:
    import inspect

    import timm
    from timm.models import model_entrypoint
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    names = timm.list_models()
    swin_v2 = [n for n in names if model_entrypoint(n).__module__.endswith(".swin_transformer_v2")]
    settings = [p for p in inspect.signature(SwinTransformerV2.__init__).parameters if p != "self"]
    return TimmCatalog(version, frozenset(names), tuple(swin_v2), tuple(settings))


def _cache_file(version: str) -> Path:
    return cache_dir() / f"timm-{version}-catalog.json"


def _load(path: Path, version: str) -> TimmCatalog | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw["format"] != _FORMAT or raw["timm_version"] != version:
            return None
        return TimmCatalog(
            version,
            frozenset(map(str, raw["architectures"])),
            tuple(map(str, raw["swin_v2"])),
            tuple(map(str, raw["swin_v2_settings"])),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(path: Path, catalog: TimmCatalog) -> None:
    from ...atomic import atomic_write_json

    payload = {
        "format": _FORMAT,
        "timm_version": catalog.timm_version,
        "architectures": sorted(catalog.architectures),
        "swin_v2": list(catalog.swin_v2),
        "swin_v2_settings": list(catalog.swin_v2_settings),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, payload)
    except OSError:
        pass  # a read-only or full cache only costs the next run the timm import


@lru_cache(maxsize=1)
def timm_catalog() -> TimmCatalog:
    """The installed timm's catalogue, from the cache when it holds this timm version's."""
    version = metadata.version("timm")
    path = _cache_file(version)
    catalog = _load(path, version)
    if catalog is None:
        catalog = _read_from_timm(version)
        _store(path, catalog)
    return catalog
