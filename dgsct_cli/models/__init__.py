"""Model core: encoders, the DG-SCT adapter, the dual-encoder walker and task heads."""

from .adapter import AdapterSettings, DGSCTAdapter
from .dgsct import DGSCTModel, ModelConfig

__all__ = ["AdapterSettings", "DGSCTAdapter", "DGSCTModel", "ModelConfig"]
