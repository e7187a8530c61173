"""What a bug report needs to know about this machine (``dgsct env``), and the tested pins.

Nothing here imports torch at module level: ``dgsct env`` must answer on an install where torch
or torchaudio does not load, and say which one and why.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import platform
import re
import sys
from typing import Any

__all__ = ["DEPENDENCIES", "OPTIONAL_READERS", "collect_environment", "pinned_versions", "torch_pair_hint"]

# (distribution on PyPI, module it provides): every run-time dependency of pyproject.toml.
DEPENDENCIES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("torchaudio", "torchaudio"),
    ("timm", "timm"),
    ("typer", "typer"),
    ("rich", "rich"),
    ("decord2", "decord"),
    ("pyyaml", "yaml"),
    ("safetensors", "safetensors"),
    ("numpy", "numpy"),
    ("scikit-learn", "sklearn"),
    ("matplotlib", "matplotlib"),
    ("av", "av"),
    ("open_clip_torch", "open_clip"),
    ("transformers", "transformers"),
)

# Readers of the file formats users bring, and the optional extras: (what, module).
OPTIONAL_READERS: tuple[tuple[str, str], ...] = (
    ("video/audio decode (decord)", "decord"),
    ("mp4 write, audio probe (PyAV)", "av"),
    ("PNG/JPEG frames and masks (Pillow)", "PIL"),
    ("R(2+1)D-18 weights (torchvision)", "torchvision"),
    ("CLIP tokenizer (open_clip)", "open_clip"),
    ("RoBERTa tokenizer (transformers)", "transformers"),
    ("TensorBoard logger", "torch.utils.tensorboard"),
    ("Weights & Biases logger", "wandb"),
    ("Hugging Face Hub", "huggingface_hub"),
)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _try_import(module: str) -> str | None:
    """None when ``module`` imports, else the one-line reason."""
    try:
        importlib.import_module(module)
    except BaseException as exc:  # a broken shared library raises OSError; some raise SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return _one_line(exc)
    return None


def pinned_versions() -> dict[str, str]:
    """The exact pins (``name==version``) of the installed dgsct's requirements, by name."""
    pins: dict[str, str] = {}
    try:
        requires = metadata.requires("dgsct") or []
    except metadata.PackageNotFoundError:
        return pins
    for req in requires:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^;,\s]+)\s*(;.*)?$", req)
        if m and "extra ==" not in (m.group(3) or ""):
            pins[m.group(1).lower()] = m.group(2)
    return pins


def torch_pair_hint() -> str:
    """One sentence: the torch/torchaudio installed and the pair dgsct is tested with."""
    pins = pinned_versions()
    want_torch, want_audio = pins.get("torch", "2.11.0"), pins.get("torchaudio", "2.11.0")
    have_torch, have_audio = _version("torch") or "none", _version("torchaudio") or "none"
    return (
        f"installed torch {have_torch} with torchaudio {have_audio}; torchaudio loads only beside the "
        f"torch build it was made for, and dgsct is tested with torch=={want_torch} and "
        f"torchaudio=={want_audio} (pip install 'torch=={want_torch}' 'torchaudio=={want_audio}')"
    )


def _accelerators() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_devices": [],
        "mps_built": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_built()),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "torch_threads": torch.get_num_threads(),
    }
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["cuda_devices"].append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    if info["mps_available"]:
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        info["mps_memory_gib"] = round(recommended() / 2**30, 1) if recommended else None
    from .runtime import pick_device

    info["auto_device"] = pick_device("auto", info["cuda_available"], info["mps_available"])
    return info


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def collect_environment() -> dict[str, Any]:
    """Versions, accelerators, CPUs and which readers import: a bug report's facts, as JSON."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count()
    report: dict[str, Any] = {
        "dgsct": _version("dgsct"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_gib": _memory_gib(),
        "packages": {},
        "pins": pinned_versions(),
        "readers": {},
    }
    for distribution, module in DEPENDENCIES:
        error = _try_import(module)
        version = _version(distribution)
        if distribution == "decord2" and version is None:
            version = _version("decord")  # the original build serves the same import
        report["packages"][distribution] = {"module": module, "version": version, "imports": error is None}
        if error:
            report["packages"][distribution]["error"] = error
    if not report["packages"]["torchaudio"]["imports"] and report["packages"]["torch"]["imports"]:
        report["packages"]["torchaudio"]["hint"] = torch_pair_hint()
    for what, module in OPTIONAL_READERS:
        error = _try_import(module)
        report["readers"][what] = {
            "module": module,
            "imports": error is None,
            **({"error": error} if error else {}),
        }
    if report["packages"]["torch"]["imports"]:
        report["accelerators"] = _accelerators()
    else:
        report["accelerators"] = {"error": report["packages"]["torch"]["error"]}
    return report
