"""Training curves of one or several runs from their ``metrics.jsonl``: the training loss and each
metric against the epoch, one panel per quantity with every run on it, each run's best epoch
marked (``dgsct visualize curves``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..run_index import read_metrics

__all__ = ["curve_panels", "plot_curves", "run_labels"]


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    out = {}
    if isinstance(record.get("train_loss"), int | float):
        out["train loss"] = float(record["train_loss"])
    for key, value in (record.get("val") or {}).items():
        # Counts (num_samples, num_segments, ...) are not metrics.
        if isinstance(value, int | float) and not isinstance(value, bool) and not key.startswith("num_"):
            out[f"val {key}"] = float(value)
    if isinstance(record.get("train_accuracy"), int | float):
        out["train accuracy"] = float(record["train_accuracy"])
    return out


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's folder name, with as much of its path as tells equal names apart."""
    parts = [Path(r).resolve().parts for r in runs]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(p) for p in parts):
            return labels
        depth += 1


def curve_panels(runs: list[Path], metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{panel: {label: {"epochs": [...], "values": [...], "best": (epoch, value) | None}}}``."""
    labels = run_labels(runs)
    panels: dict[str, dict[str, Any]] = {}
    for run, label in zip(runs, labels, strict=True):
        records = read_metrics(run)
        try:
            best_epoch = json.loads((Path(run) / "best.json").read_text(encoding="utf-8")).get("best_epoch")
        except (OSError, ValueError, AttributeError):
            best_epoch = None
        for record in records:
            for name, value in _numbers(record).items():
                series = panels.setdefault(name, {}).setdefault(
                    label, {"epochs": [], "values": [], "best": None}
                )
                series["epochs"].append(record["epoch"])
                series["values"].append(value)
                if record["epoch"] == best_epoch:
                    series["best"] = (record["epoch"], value)
    if metrics:
        wanted = []
        for m in metrics:
            matches = [p for p in panels if p == m or p.split(" ", 1)[-1] == m]
            if not matches:
                raise ValueError(f"--metrics {m}: no run logs it; the runs log {', '.join(panels)}")
            wanted += [p for p in matches if p not in wanted]
        panels = {p: panels[p] for p in wanted}
    return panels


def plot_curves(
    runs: list[Path], out: str | Path, metrics: list[str] | None = None, title: str | None = None
) -> Path:
    """Write the figure to ``out`` (PNG, atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_output

    panels = curve_panels(runs, metrics)
    if not panels:
        raise ValueError("the runs have no epoch records to plot")
    labels = run_labels(runs)
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=110, squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels.items()):
        for label, s in series.items():
            ax.plot(s["epochs"], s["values"], "-o", markersize=3, color=colours[label], label=label)
            if s["best"] is not None:
                ax.plot(*s["best"], "*", markersize=13, color=colours[label], markeredgecolor="black")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    # One legend for the figure: a line per run, and what the star means.
    handles = [plt.Line2D([], [], color=colours[label], marker="o", markersize=3) for label in labels]
    handles.append(
        plt.Line2D([], [], linestyle="", marker="*", markersize=11, color="grey", markeredgecolor="black")
    )
    fig.legend(
        handles,
        [*labels, "best epoch (selection metric)"],
        loc="lower center",
        ncol=min(len(labels) + 1, 4),
        fontsize=9,
        frameon=False,
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * ((len(labels) + 1) // 4), 1, 1))
    out = Path(out)
    with atomic_output(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
