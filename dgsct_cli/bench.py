"""``dgsct bench``: time a recipe's model at its real size on random inputs of the recipe's shapes.

Reports the median step time, samples/s, FLOPs per step counted with ``FlopCounterMode`` (never
estimated from parameter counts), the achieved FLOP/s beside the machine's own matmul rate measured
in the same run, peak memory, and optionally the data loader's samples/s from a prepared cache.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from .config import Recipe
from .data.datasets import make_loader
from .factory import create_model, ensure_data, ensure_files, open_split
from .models.dgsct import DGSCTModel
from .runtime import (
    apply_compile_regions,
    apply_threads,
    autocast_for,
    configure_runtime,
    resolve_device,
    resolve_precision,
    to_device,
)
from .tasks.base import Task, get_task
from .train import make_optimizer, mixup_distribution, training_loss

MODES = ("train", "eval")
DTYPES = ("auto", "fp32", "bf16")


# -- random batches ------------------------------------------------------------------------------


def input_shapes(recipe: Recipe, batch_size: int, cfg: Any = None) -> dict[str, list[int]]:
    """``frames`` and ``audio`` shapes of one batch of ``recipe`` (audio = each segment tiled)."""
    cfg = cfg or recipe.model
    t, s = cfg.num_segments, getattr(cfg, "input_size", None) or cfg.visual.img_size
    samples = cfg.audio.sample_rate * recipe.data.segment_tiling
    return {"frames": [batch_size, t, 3, s, s], "audio": [batch_size, t, samples]}


def random_batch(
    task: Task, recipe: Recipe, batch_size: int, generator: torch.Generator | None = None, cfg: Any = None
) -> dict[str, torch.Tensor]:
    """Random inputs of the recipe's shapes plus every key the task's model call and loss read
    (the task makes them: ``Task.bench_batch``)."""
    cfg = cfg or recipe.model
    if getattr(cfg.head, "num_classes", 0) is None:  # no data here: the task's default class count
        cfg = replace(cfg, head=task.resolve_head(cfg.head, None))
    g = generator or torch.Generator().manual_seed(0)
    return task.bench_batch(cfg, recipe.data, batch_size, g)


# -- measurements --------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    # CUDA launches are asynchronous: without this the clock stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # q @ k^T and scores @ v: 2 multiply-adds per product element.
    n = math.prod(query_shape[:-2])
    s_q, d_q, s_k, d_v = query_shape[-2], query_shape[-1], key_shape[-2], value_shape[-1]
    return 2 * n * s_q * s_k * (d_q + d_v)


def _sdpa_cpu_backward_flops(
    grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    # Same accounting as torch's GPU attention backward: scores recomputed, then grad V, grad
    # scores, grad Q and grad K.
    n = math.prod(query_shape[:-2])
    s_q, d_q, s_k, d_v = query_shape[-2], query_shape[-1], key_shape[-2], value_shape[-1]
    return 2 * n * s_q * s_k * (3 * d_q + 2 * d_v)


# torch's counter knows the GPU attention kernels but not the CPU one, which F.sdpa picks on CPU:
# without these the encoders' attention would count as zero FLOPs there.
_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that ``fn()`` executes (matmuls, convolutions, attention), counted op by op."""
    with FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FLOP_FORMULAS)) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_matmul_rate(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None, repeats: int = 3
) -> dict[str, Any]:
    """The machine's square-matmul FLOP/s (best of ``repeats``): the yardstick for the step."""
    size = size or (4096 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool / cuBLAS handle start-up
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return {
        "matmul_flops_per_second": 2 * size**3 / best,
        "matmul_size": size,
        "matmul_dtype": str(dtype).removeprefix("torch."),
    }


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA peak allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "peak_rss"


def measure_loader(
    recipe: Recipe, data_dir: Path, batch_size: int, device: torch.device, batches: int = 4, console=None
) -> dict[str, Any]:
    """samples/s of the recipe's DataLoader over the prepared cache (first batch = start-up, apart)."""
    data_dir = ensure_data(recipe, data_dir, console)
    dataset = open_split(recipe, data_dir, recipe.data.train_split)
    if len(dataset) == 0:
        raise ValueError(f"{data_dir}: split '{recipe.data.train_split}' is empty")
    loader = make_loader(dataset, batch_size, recipe.data.num_workers, device)
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    startup = time.perf_counter() - start
    seen, t0 = 0, time.perf_counter()
    for _, batch in zip(range(batches), it):
        seen += batch["frames"].shape[0]
    elapsed = time.perf_counter() - t0
    if seen == 0:  # a single batch in the split: rate including the start-up
        seen, elapsed = first["frames"].shape[0], startup
    return {
        "loader_samples_per_second": seen / max(elapsed, 1e-9),
        "loader_startup_seconds": startup,
        "loader_samples": seen,
        "loader_workers": recipe.data.num_workers,
        "data": str(data_dir),
    }


# -- the bench -----------------------------------------------------------------------------------


def run_bench(
    recipe: Recipe,
    batch_size: int | None = None,
    steps: int = 3,
    warmup: int = 1,
    random_init: bool = True,
    device: str = "cpu",
    dtype: str = "fp32",
    recompute: bool | None = None,
    mode: str = "train",
    data: Path | None = None,
    console: Console | None = None,
    profile_dir: Path | None = None,
    compile_regions: str | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training (forward, loss, backward, Adam step) or inference steps; see module doc.

    ``recompute`` None keeps the recipe's ``model.recompute``; True/False force it on/off.
    ``profile_dir``: also profile one step there (:func:`dgsct_cli.profile.profile_step`).
    ``compile_regions`` (``auto``/``on``/``off``; None: the recipe's ``train.compile_regions``)
    compiles the encoder blocks and adapters as training does; warm-up steps absorb the compiling.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dev = resolve_device(device)
    precision = resolve_precision(dev, dtype)
    train = mode == "train"
    batch_size = batch_size or (recipe.train.batch_size if train else recipe.train.eval_batch_size)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")

    task = get_task(recipe.task)
    loss_cfg = recipe.loss
    cfg = recipe.model if recompute is None else replace(recipe.model, recompute="on" if recompute else "off")
    if not random_init:
        ensure_files(recipe, console)
    torch.manual_seed(recipe.train.seed)
    if console is not None:
        console.print(
            f"building {recipe.name or recipe.task} ({'random' if random_init else 'recipe'} weights)"
        )
    model: DGSCTModel = create_model(recipe.task, cfg, load_encoder_weights=not random_init).to(dev)
    apply_threads(model, recipe.runtime.threads)
    cfg = model.cfg  # the head's class count resolved
    model.train(train)
    regions = compile_regions or recipe.train.compile_regions
    compiled = apply_compile_regions(model, regions, dev)
    batch = to_device(random_batch(task, recipe, batch_size, cfg=cfg), dev)
    optimizer = make_optimizer(model, recipe.train) if train else None
    if train:  # the memory-lean settings concern training (recompute has no effect without gradients)
        configure_runtime(model, dev)
    mixup = mixup_distribution(task, recipe.train) if train else None

    def forward_loss(b: dict[str, torch.Tensor]) -> torch.Tensor:
        # The trainer's own step: log-mel mixup when the task trains with it, autocast, fp32 loss.
        return training_loss(model, task, loss_cfg, b, dev, precision, mixup)[0]

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_loss(batch).backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step() -> None:
        with autocast_for(dev, precision):
            task.forward(model, batch)

    step = train_step if train else eval_step
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(warmup):
        if console is not None:
            console.print(f"warm-up step {i + 1}/{warmup}")
        step()
    _sync(dev)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - start)
        if console is not None:
            console.print(f"step {i + 1}/{steps}: {times[-1]:.3f} s")
    # Read before the counting passes below, which must not set the peak.
    memory, memory_kind = peak_memory(dev)
    profiled = None
    if profile_dir is not None:
        from .profile import profile_step

        profiled = profile_step(step, dev, profile_dir)

    # FLOPs: one separate, untimed step (forward + backward; Adam's element-wise update is not
    # matmul work). "flops_per_step" is what the timed step executes, recomputed forwards included.
    recompute_active = bool(model.encoder.recompute) and train
    if train:

        def counted(b: dict[str, torch.Tensor]) -> Callable[[], None]:
            return lambda: forward_loss(b).backward()

        flops = count_flops(counted(batch))
        useful = flops
        if recompute_active:
            # Useful work excludes the replayed forwards. Counting the full batch with recompute
            # off could run out of memory, so count 1 and 2 samples and extrapolate: the count is
            # affine in the batch size (per-sample work plus batch-independent work such as
            # Swin-V2's position-bias MLP).
            model.encoder.recompute = False
            try:
                sizes = (1, 2) if batch_size > 1 else (1,)
                c = [count_flops(counted({k: v[:n] for k, v in batch.items()})) for n in sizes]
                useful = c[0] + (c[-1] - c[0]) * (batch_size - 1)
            finally:
                model.encoder.recompute = True
        optimizer.zero_grad(set_to_none=True)
    else:
        flops = useful = count_flops(eval_step)

    median = statistics.median(times)
    rate = measure_matmul_rate(dev, torch.bfloat16 if precision == "bf16" else torch.float32)
    other_rates = {}
    if dev.type == "cuda":
        # Both yardsticks of a GPU in the same run: bf16 tensor cores and tf32 (fp32 matmuls).
        other_dtype = torch.float32 if precision == "bf16" else torch.bfloat16
        other = measure_matmul_rate(dev, other_dtype)
        other_rates = {f"matmul_flops_per_second_{other['matmul_dtype']}": other["matmul_flops_per_second"]}
        other_rates[f"matmul_flops_per_second_{rate['matmul_dtype']}"] = rate["matmul_flops_per_second"]
    achieved = useful / median
    result: dict[str, Any] = {
        "recipe": recipe.name,
        "task": recipe.task,
        "mode": mode,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": precision,
        "recompute": recompute_active,
        "recompute_setting": cfg.recompute,
        "random_init": random_init,
        "encoders_train_mode": cfg.encoders_train_mode,
        "mixup": mixup is not None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "input_shapes": input_shapes(recipe, batch_size, cfg),
        "parameters": model.parameter_counts(),
        "step_seconds": times,
        "step_seconds_median": median,
        "samples_per_second": batch_size / median,
        "flops_per_step": flops,
        "useful_flops_per_step": useful,
        "achieved_flops_per_second": achieved,
        "executed_flops_per_second": flops / median,
        **rate,
        **other_rates,
        "fraction_of_matmul_peak": achieved / rate["matmul_flops_per_second"],
        "compile_regions": compiled > 0,
        "compiled_modules": compiled,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
    }
    if profiled is not None:
        result["profile"] = {
            "dir": str(profile_dir),
            "shares": profiled["shares"],
            "matmul_and_attention_share": profiled["matmul_and_attention_share"],
            "time_kind": profiled["time_kind"],
        }
    if data is not None:
        result.update(measure_loader(recipe, Path(data), batch_size, dev, console=console))
        result["loader_keeps_up"] = result["loader_samples_per_second"] >= result["samples_per_second"]
    if console is not None:
        console.print(bench_table(result))
    return result


# -- report --------------------------------------------------------------------------------------


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def bench_table(result: dict[str, Any]) -> Table:
    """The bench result as a two-column rich table."""
    r = result
    table = Table(title=f"dgsct bench: {r['recipe']} ({r['mode']}, {r['device']}, {r['dtype']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("batch size", str(r["batch_size"])),
        ("step (median)", f"{r['step_seconds_median']:.4f} s over {r['steps']} steps"),
        ("samples/s", f"{r['samples_per_second']:.2f}"),
        ("FLOPs per step (executed)", _si(r["flops_per_step"], "FLOP")),
        ("FLOPs per step (useful)", _si(r["useful_flops_per_step"], "FLOP")),
        ("achieved", _si(r["achieved_flops_per_second"], "FLOP/s")),
        (f"matmul {r['matmul_size']}² {r['matmul_dtype']}", _si(r["matmul_flops_per_second"], "FLOP/s")),
        ("fraction of matmul rate", f"{100 * r['fraction_of_matmul_peak']:.1f}%"),
        (f"peak memory ({r['peak_memory_kind']})", f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"),
        ("recompute", "on" if r["recompute"] else "off"),
        (
            "parameters (trainable / total)",
            f"{r['parameters']['trainable']:,} / {r['parameters']['total']:,}",
        ),
        ("threads", str(r["threads"])),
        ("compiled regions", str(r.get("compiled_modules", 0))),
    ]
    for key, value in r.items():
        if key.startswith("matmul_flops_per_second_"):
            rows.append((f"matmul rate {key.removeprefix('matmul_flops_per_second_')}", _si(value, "FLOP/s")))
    if "profile" in r:
        p = r["profile"]
        rows.append(
            (
                f"profile: matmul + attention ({p['time_kind']})",
                f"{100 * p['matmul_and_attention_share']:.1f}% (see {p['dir']}/top_kernels.txt)",
            )
        )
    if "loader_samples_per_second" in r:
        keeps = "keeps up" if r["loader_keeps_up"] else "[red]slower than the step[/]"
        rows.append(
            (
                f"loader samples/s ({r['loader_workers']} workers)",
                f"{r['loader_samples_per_second']:.2f} ({keeps})",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    return table
