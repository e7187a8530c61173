"""Where and how the loops run: device, precision (autocast), batches on the device, progress
bars, and the process-level settings that matter for big CPU models."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

_MPS_FALLBACK_MESSAGE = r".*not currently supported on the MPS backend.*"


def pick_device(requested: str, cuda_available: bool, mps_available: bool) -> str:
    """The device type for ``requested`` (``auto``, ``cpu``, ``cuda``, ``mps``): ``auto`` takes
    CUDA, then Apple's MPS, then the CPU. An explicit choice must be available."""
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {requested!r}")
    if requested == "auto":
        return "cuda" if cuda_available else "mps" if mps_available else "cpu"
    if requested == "cuda" and not cuda_available:
        raise ValueError("train.device: cuda was asked for but no CUDA device is available")
    if requested == "mps" and not mps_available:
        raise ValueError("train.device: mps was asked for but this machine has no usable MPS device")
    return requested


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """The one place a device is chosen (see :func:`pick_device`)."""
    kind = pick_device(name, torch.cuda.is_available(), mps_available())
    if kind == "mps":
        _prepare_mps()
    return torch.device(kind)


def _prepare_mps() -> None:
    """Ops the MPS backend lacks run on the CPU (PYTORCH_ENABLE_MPS_FALLBACK, set by the CLI before
    torch is imported); torch warns once per op, which we fold into one line."""
    if getattr(_prepare_mps, "done", False):
        return
    _prepare_mps.done = True
    if os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") == "1":
        logging.getLogger(__name__).warning(
            "mps: operations the MPS backend lacks run on the CPU (slower); the model runs in fp32"
        )
        warnings.filterwarnings("ignore", message=_MPS_FALLBACK_MESSAGE)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere (CPU and MPS); an explicit choice is kept."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on GPU (the default there), plain fp32 elsewhere unless asked."""
    if resolve_precision(device, precision) != "bf16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compile_regions_wanted(setting: str, device: torch.device, whole_model: bool = False) -> bool:
    """``train.compile_regions``: ``auto`` compiles the blocks on CUDA (where launches and
    elementwise passes dominate the step) and not elsewhere; never on top of a whole-model
    compile (``train.compile: true``)."""
    if whole_model or setting == "off":
        return False
    return setting == "on" or device.type == "cuda"


def apply_compile_regions(
    model: torch.nn.Module, setting: str, device: torch.device, whole_model: bool = False
) -> int:
    """Compile ``model``'s encoder blocks and adapters one by one when :func:`compile_regions_wanted`
    says so; returns how many modules were compiled. With ``auto``, an op the compiler cannot
    handle falls back to eager execution instead of stopping the run."""
    encoder = getattr(model, "encoder", None)
    if encoder is None or not compile_regions_wanted(setting, device, whole_model):
        return 0
    if setting == "auto":
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
    return encoder.compile_regions()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def progress_bar(console: Console | None, disable: bool = False) -> Progress:
    """The bar of the training, evaluation and extraction loops (cleared when done; none when the
    output is not a terminal, where a bar would only add lines to a log)."""
    if console is not None and not console.is_terminal:
        disable = True
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
        transient=True,
    )


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap/trim thresholds so freed activation memory goes back to the OS.

    glibc raises its mmap threshold each time a large block is freed, after which tensors of up to
    32 MB come from the heap and stay in the process's RSS once freed; training a 420M-parameter
    model then peaks several GB higher than it needs to. Set ``DGSCT_MALLOC_TUNING=0`` to opt out.
    """
    if os.environ.get("DGSCT_MALLOC_TUNING") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    )


# Below this many parameters a model runs fastest on one intra-op thread: its matmuls are too small
# to split, and on a shared machine a second thread mostly waits for a busy core (avvp-tiny: a
# training step of 0.29 s on 1 thread, 0.85-3.1 s on 2 with other work running). The tiny recipes
# have 0.1-1.6M parameters, the full-size ones 230-480M.
SMALL_MODEL_PARAMS = 20_000_000


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    intra_op: int  # torch.set_num_threads
    loader_workers: int  # DataLoader worker processes


def plan_threads(
    cores: int, num_params: int = 0, threads: int | None = None, num_workers: int = 0
) -> ThreadPlan:
    """How many threads and loader workers a run uses on ``cores`` usable CPUs.

    Intra-op threads: ``threads`` when given (``runtime.threads``, else ``OMP_NUM_THREADS``);
    otherwise 1 for a model under :data:`SMALL_MODEL_PARAMS` parameters and every usable core for
    a larger one. Loader workers: ``num_workers`` (``data.num_workers``), never more than
    ``cores`` (torch warns beyond that, and the extra processes only compete)."""
    if threads is None:
        threads = 1 if num_params < SMALL_MODEL_PARAMS else cores
    return ThreadPlan(intra_op=max(1, threads), loader_workers=max(0, min(num_workers, cores)))


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_threads(model: torch.nn.Module, threads: int | None = None) -> int:
    """Set torch's intra-op thread count for ``model`` by :func:`plan_threads`; returns it."""
    requested = threads if threads is not None else _env_threads()
    num_params = sum(p.numel() for p in model.parameters())
    plan = plan_threads(usable_cores(), num_params, requested)
    if torch.get_num_threads() != plan.intra_op:
        torch.set_num_threads(plan.intra_op)
    logging.getLogger(__name__).debug(
        "%d intra-op thread(s) for a model of %.1fM parameters", plan.intra_op, num_params / 1e6
    )
    return plan.intra_op


def loader_workers(num_workers: int) -> int:
    """``data.num_workers`` capped at the usable cores (:func:`plan_threads`)."""
    return plan_threads(usable_cores(), num_workers=num_workers).loader_workers


def configure_runtime(model, device) -> bool:
    """Settings that depend on how the model runs; returns whether malloc tuning is on.

    Recompute on the CPU is the memory-lean configuration: there the malloc tuning above halves
    the peak RSS, at the price of page faults (about 1.6x the step time), so it is applied only
    then. ``DGSCT_MALLOC_TUNING=1`` forces it, ``=0`` never applies it.
    """
    forced = os.environ.get("DGSCT_MALLOC_TUNING")
    wanted = forced == "1" or (forced is None and device.type == "cpu" and bool(model.encoder.recompute))
    return tune_malloc() if wanted else False
