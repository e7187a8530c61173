"""Reading weight files in the formats the published models ship in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A weight file that cannot be used; the message names the file and what is wrong."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``.safetensors`` or a torch pickle (``.bin``/``.pth``/``.pt``/``.ckpt``) safely.

    Torch files are read with ``weights_only=True``; wrappers used by the published checkpoints
    (``{"model": ...}``, Lightning's ``{"state_dict": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a damaged header
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a checkpoint we can read safely: {unsafe_load_reason(exc)}"
        ) from None
    return unwrap_state_dict(obj, str(path))


def unsafe_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words. Never torch's
    advice to load it with ``weights_only=False``: that would run code from the file."""
    if "Unsupported global" in str(exc):
        return "it holds pickled objects or code, not only tensors"
    return f"not a readable torch checkpoint ({type(exc).__name__})"


def unwrap_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{name}: expected a state dict of tensors")
    return obj


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Strict load that raises :class:`CheckpointError` listing missing/unexpected/misshapen keys."""
    own = module.state_dict()
    misshapen = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if misshapen:
        raise CheckpointError(
            f"{name}: {len(misshapen)} key(s) with the wrong shape: " + ", ".join(misshapen[:8])
        )
    report_mismatch(name, module.load_state_dict(state, strict=False))


def report_mismatch(name: str, result: Any) -> None:
    """Raise with the key lists when ``load_state_dict(strict=False)`` left anything out."""
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{name}: {describe_keys(result.missing_keys, result.unexpected_keys)}")


def describe_keys(missing: list[str], unexpected: list[str], limit: int = 12) -> str:
    parts = []
    if missing:
        shown = ", ".join(missing[:limit]) + (" ..." if len(missing) > limit else "")
        parts.append(f"{len(missing)} missing key(s): {shown}")
    if unexpected:
        shown = ", ".join(unexpected[:limit]) + (" ..." if len(unexpected) > limit else "")
        parts.append(f"{len(unexpected)} unexpected key(s): {shown}")
    return "; ".join(parts)
