"""Model core: encoders, the DG-SCT adapter, the dual-encoder walker and task heads.

The names below are loaded on first use, so that importing a torch-free module of this package
(the configs: ``model_config``, ``adapter_settings``, ``encoders.configs``, ``heads.configs``)
does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AdapterSettings", "DGSCTAdapter", "DGSCTModel", "ModelConfig"]

_WHERE = {
    "AdapterSettings": ".adapter_settings",
    "DGSCTAdapter": ".adapter",
    "DGSCTModel": ".dgsct",
    "ModelConfig": ".model_config",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
