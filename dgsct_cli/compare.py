"""``dgsct compare``: several runs evaluated on one split, in one table beside the paper's rows.

Each run is read the way ``dgsct eval`` reads it (a run folder, our checkpoint or a release file)
and evaluated with its own recipe on the same prepared data and split. A row names the run, the
method its adapter kind makes of it (``DG-SCT``, ``LAVisH``, ``LAVisH*``, ``frozen baseline``), the
adapter kind, the encoder family, its trainable and total parameters and the task's comparison
metrics; the task's published numbers of each method present follow that method's first run.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .atomic import atomic_output, atomic_write_json

__all__ = [
    "OUTPUT_SUFFIXES",
    "Comparison",
    "ComparedRun",
    "compare_checkpoints",
    "comparison_table",
    "plot_comparison",
    "write_comparison",
]

OUTPUT_SUFFIXES = (".md", ".json", ".png")


@dataclass
class ComparedRun:
    name: str
    source: str
    checkpoint_kind: str  # "dgsct" or "release"
    method: str
    adapter_kind: str
    family: str
    trainable_parameters: int
    total_parameters: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    task: str
    split: str
    data: str
    columns: list[tuple[str, str]]  # (metrics key, column name)
    runs: list[ComparedRun]
    published: dict[str, dict[str, Any]]  # method -> the paper's numbers, for the methods present

    def rows(self) -> list[dict[str, Any]]:
        """The table's rows in order: each run, and after each method's first run the paper's row."""
        out, shown = [], set()
        for run in self.runs:
            out.append({"kind": "run", **asdict(run)})
            if run.method in self.published and run.method not in shown:
                shown.add(run.method)
                out.append(
                    {
                        "kind": "paper",
                        "name": "paper",
                        "method": run.method,
                        "metrics": self.published[run.method],
                    }
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": self.split,
            "data": self.data,
            "columns": [{"key": k, "name": n} for k, n in self.columns],
            "runs": [asdict(r) for r in self.runs],
            "published": self.published,
            "rows": self.rows(),
        }


def _display_name(source: Path, used: set[str]) -> str:
    path = Path(source)
    name = (
        path.parent.name if path.name in ("best.safetensors", "last.safetensors") else path.stem or path.name
    )
    stem, n = name, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def compare_checkpoints(
    checkpoints: list[str | Path],
    data: str | Path,
    split: str = "test",
    recipe_for_release: Any = None,
    device: str | None = None,
    batch_size: int | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> Comparison:
    """Evaluate each checkpoint on ``split`` of ``data`` (one model in memory at a time)."""
    from .evaluate import evaluate
    from .factory import open_checkpoint_split
    from .models.adapter_kinds import get_adapter_kind

    if not checkpoints:
        raise ValueError("compare: name at least one run folder or checkpoint")
    runs: list[ComparedRun] = []
    task = None
    used: set[str] = set()
    for source in checkpoints:
        model, recipe, kind, spec, dataset, dev = open_checkpoint_split(
            source, data, split, recipe_for_release, device
        )
        if task is not None and spec.name != task.name:
            raise ValueError(
                f"{source}: a checkpoint of task {spec.name.upper()}, but {checkpoints[0]} is "
                f"{task.name.upper()}; compare runs of one task"
            )
        task = spec
        metrics = evaluate(
            model,
            dataset,
            spec,
            dev,
            batch_size or recipe.train.eval_batch_size,
            recipe.data.num_workers,
            recipe.train.precision,
            console,
            show_progress,
            description=f"eval {_display_name(Path(source), set(used))}",
        )
        settings = recipe.model.adapter
        counts = model.parameter_counts()
        runs.append(
            ComparedRun(
                name=_display_name(Path(source), used),
                source=str(source),
                checkpoint_kind=kind,
                method=get_adapter_kind(settings.kind).method(settings, recipe.model.family),
                adapter_kind=settings.kind,
                family=recipe.model.family,
                trainable_parameters=int(counts["trainable"]),
                total_parameters=int(counts["total"]),
                metrics=metrics,
            )
        )
        del model, dataset
        gc.collect()
    columns = list(task.comparison_metrics) or [(task.selection_metric, task.selection_metric)]
    published = {r.method: dict(task.published[r.method]) for r in runs if r.method in task.published}
    return Comparison(task.name, split, str(data), columns, runs, published)


# -- presentation ----------------------------------------------------------------------------------


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e6:.3f}M"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(_cell(v) for v in value)
    if isinstance(value, float | int):
        return f"{value:.2f}" if isinstance(value, float) and value != round(value, 1) else f"{value:.1f}"
    return str(value)


def _table_cells(c: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["run", "method", "adapters", "trainable", *[name for _, name in c.columns]]
    body = []
    for row in c.rows():
        if row["kind"] == "run":
            cells = [row["name"], row["method"], row["adapter_kind"], _millions(row["trainable_parameters"])]
        else:
            cells = ["paper", row["method"], "", ""]
        body.append(cells + [_cell(row["metrics"].get(key)) for key, _ in c.columns])
    return header, body


def comparison_table(c: Comparison) -> Table:
    header, body = _table_cells(c)
    table = Table(title=f"{c.task.upper()} {c.split}: {len(c.runs)} run(s), paper rows from DG-SCT's tables")
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i >= 3 else "left")
    for cells, row in zip(body, c.rows(), strict=True):
        table.add_row(*cells, style="dim" if row["kind"] == "paper" else None)
    return table


def comparison_markdown(c: Comparison) -> str:
    header, body = _table_cells(c)
    lines = [
        f"{c.task.upper()}, {c.split} split of `{c.data}`; `paper` rows: the published test numbers.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _first(value: Any) -> float | None:
    if isinstance(value, list):
        return float(value[0]) if value else None
    return None if value is None else float(value)


def plot_comparison(c: Comparison, path: str | Path) -> Path:
    """Grouped bars, one group per metric: each run, and the paper's number (hatched) of each
    method present, in the colour of that method's first run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = c.rows()
    colours = plt.get_cmap("tab10").colors
    method_colour: dict[str, Any] = {}
    for row in rows:
        if row["kind"] == "run":
            method_colour.setdefault(row["method"], colours[len(method_colour) % len(colours)])
    bars = rows
    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(c.columns) * len(bars) * 0.55), 4.2))
    for i, row in enumerate(bars):
        colour = method_colour.get(row["method"], "#888888")
        paper = row["kind"] == "paper"
        label = f"paper: {row['method']}" if paper else f"{row['name']} ({row['method']})"
        xs, ys = [], []
        for j, (key, _) in enumerate(c.columns):
            value = _first(row["metrics"].get(key))
            if value is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(value)
        drawn = ax.bar(
            xs,
            ys,
            width * 0.92,
            color=colour,
            alpha=0.35 if paper else 0.9,
            hatch="//" if paper else None,
            edgecolor=colour,
            label=label,
        )
        ax.bar_label(drawn, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(c.columns)), [name for _, name in c.columns])
    ax.set_ylabel("%")
    ax.set_title(f"{c.task.upper()} ({c.split} split): runs and published numbers", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_ylim(0, max(100.0, ax.get_ylim()[1]))
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def write_comparison(c: Comparison, path: str | Path) -> Path:
    """``.md`` (Markdown table), ``.json`` (every metric, the published rows) or ``.png`` (bars)."""
    path = Path(path)
    if path.suffix == ".json":
        atomic_write_json(path, c.to_json())
    elif path.suffix == ".md":
        with atomic_output(path) as tmp:
            Path(tmp).write_text(comparison_markdown(c), encoding="utf-8")
    elif path.suffix == ".png":
        plot_comparison(c, path)
    else:
        raise ValueError(f"{path}: --out takes a .md, .json or .png file")
    return path
