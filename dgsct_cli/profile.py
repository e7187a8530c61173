"""Where a step's time goes: a ``torch.profiler`` trace of one step, the most expensive kernels,
and the share of time in matrix multiplies and attention against everything else.

On CUDA the times are the kernels' device times; on the CPU they are the operators' own (self)
CPU times. ``dgsct bench --profile DIR`` writes ``DIR/trace.json`` (open it in chrome://tracing
or https://ui.perfetto.dev), ``DIR/top_kernels.txt`` and ``DIR/profile.json``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .atomic import atomic_output, atomic_write_json

__all__ = ["CATEGORIES", "classify_kernel", "profile_step", "summarize_events"]

# Kernel / operator names by what they compute. cuBLAS/CUTLASS GEMM kernels carry "gemm" or
# "xmma"; attention kernels "flash", "fmha" or "attention"; the CPU's aten ops are named plainly.
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "attention",
        re.compile(r"flash|fmha|scaled_dot_product|efficient_attention|_attention|attn_fwd|attn_bwd", re.I),
    ),
    (
        "matmul",
        re.compile(
            r"gemm|xmma|cutlass|cublas|\b(aten::)?(mm|addmm|bmm|baddbmm|matmul|linear)\b|_mm_|mkldnn_matmul",
            re.I,
        ),
    ),
    ("convolution", re.compile(r"conv|cudnn|winograd|implicit_gemm", re.I)),
)


def classify_kernel(name: str) -> str:
    """``attention``, ``matmul``, ``convolution`` or ``other`` for a kernel or operator name."""
    for category, pattern in CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def summarize_events(events: list[dict[str, Any]], top: int = 25) -> dict[str, Any]:
    """``events``: ``{"name", "calls", "time_us"}`` rows (self time of each kernel/operator).
    Returns the ``top`` rows by time with their share, and each category's share of the total."""
    total = sum(e["time_us"] for e in events) or 1.0
    rows = sorted(events, key=lambda e: e["time_us"], reverse=True)
    shares: dict[str, float] = {c: 0.0 for c, _ in CATEGORIES}
    shares["other"] = 0.0
    for e in events:
        shares[classify_kernel(e["name"])] += e["time_us"] / total
    return {
        "total_us": total,
        "top": [
            {**e, "share": e["time_us"] / total, "category": classify_kernel(e["name"])} for e in rows[:top]
        ],
        "shares": shares,
        "matmul_and_attention_share": shares["matmul"] + shares["attention"],
    }


def _events(prof: profile, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for avg in prof.key_averages():
        if device.type == "cuda":
            # Kernels carry device time; the aten ops that launched them carry none of their own.
            time_us = float(
                getattr(avg, "self_device_time_total", 0.0) or getattr(avg, "self_cuda_time_total", 0.0)
            )
        else:
            time_us = float(avg.self_cpu_time_total)
        if time_us > 0:
            rows.append({"name": avg.key, "calls": int(avg.count), "time_us": time_us})
    return rows


def profile_step(
    step: Callable[[], None], device: torch.device, out_dir: str | Path, top: int = 25
) -> dict[str, Any]:
    """Run ``step`` once under the profiler; write the trace, the top-``top`` table and a JSON
    summary under ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with warnings.catch_warnings():
        # One step is one profiler cycle; torch's note about events of later cycles does not apply.
        warnings.filterwarnings("ignore", message=".*clears events at the end of each cycle.*")
        with profile(activities=activities, record_shapes=False) as prof:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    with atomic_output(out / "trace.json", suffix=".json") as tmp:
        prof.export_chrome_trace(str(tmp))
    summary = summarize_events(_events(prof, device), top=top)
    summary["device"] = str(device)
    summary["time_kind"] = "CUDA kernel time" if device.type == "cuda" else "CPU self time of operators"
    lines = [f"{'share':>7}  {'time (ms)':>10}  {'calls':>6}  {'category':<11}  name"]
    for row in summary["top"]:
        lines.append(
            f"{100 * row['share']:6.1f}%  {row['time_us'] / 1e3:10.3f}  {row['calls']:6d}  {row['category']:<11}  {row['name']}"
        )
    lines.append("")
    for category, share in summary["shares"].items():
        lines.append(f"{category:<12} {100 * share:6.1f}% of {summary['time_kind']}")
    with atomic_output(out / "top_kernels.txt", suffix=".txt") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    atomic_write_json(out / "profile.json", summary)
    return summary
