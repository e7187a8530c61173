"""What the run folders under a directory hold, for ``dgsct runs list`` and ``visualize curves``.

Read from the files a run leaves (``dgsct_cli/runs.py``): ``run.json`` (recipe, overrides),
``recipe.yaml`` (task, epochs, early stop), ``metrics.jsonl`` (one line per validated epoch),
``best.json`` and ``run.lock``. A run is *running* while a live process holds its lock,
*finished* when it trained every epoch (or stopped early by its rule), else *interrupted*
(``dgsct train --output RUN --resume`` continues it). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import yaml

from .runs import LOCK_FILE, RUN_FILE, STATE_FILE, _pid_alive, _read_lock

__all__ = ["find_runs", "list_runs", "read_metrics", "summarize_run"]

# Folders inside a run that are never runs themselves (checkpoint states, logger files).
_SKIP = {"state", "wandb", "tensorboard", "__pycache__", ".git"}


def is_run(path: Path) -> bool:
    return (path / RUN_FILE).is_file() or ((path / "recipe.yaml").is_file() and (path / STATE_FILE).is_file())


def find_runs(root: str | Path) -> list[Path]:
    """Run folders at or under ``root``, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    found = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("."))
        if is_run(Path(folder)):
            found.append(Path(folder))
    return found


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records of ``run/metrics.jsonl``; a damaged line is an error naming file and line."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run}: no metrics.jsonl (not a training run, or no epoch validated yet)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise ValueError(f"{path}:{number}: not an epoch record (no integer 'epoch')")
        records.append(record)
    return records


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _recipe(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def _selection_metric(task: str | None) -> str | None:
    if not task:
        return None
    try:
        from .tasks.base import get_task

        return get_task(task).selection_metric
    except Exception:  # a task this installation does not have
        return None


def _state(run: Path, epochs_done: int, epochs: int | None, best_epoch: int | None, early_stop) -> tuple:
    owner = _read_lock(run / LOCK_FILE) if (run / LOCK_FILE).exists() else None
    if owner is not None:
        pid, host = owner.get("pid"), owner.get("host")
        if host != socket.gethostname():
            return "running", f"pid {pid} on host {host}"  # cannot be checked from here
        if isinstance(pid, int) and _pid_alive(pid):
            return "running", f"pid {pid}"
    if epochs is not None and epochs_done >= epochs:
        return "finished", None
    if early_stop and best_epoch is not None and epochs_done - best_epoch >= early_stop:
        return "finished", "early stop"
    return "interrupted", None


def summarize_run(run: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """One row of ``dgsct runs list``."""
    run = Path(run)
    record = read_json_object(run / RUN_FILE)
    recipe = _recipe(run / "recipe.yaml")
    train = recipe.get("train") if isinstance(recipe.get("train"), dict) else {}
    try:
        records = read_metrics(run)
    except ValueError:
        records = []
    best = read_json_object(run / "best.json")
    task = recipe.get("task")
    source = record.get("recipe") or recipe.get("name") or ""
    name = Path(str(source)).name
    name = name.rsplit(".", 1)[0] if name.endswith((".yaml", ".yml")) else name
    metrics = {k: v for k, v in (best.get("val") or {}).items() if isinstance(v, int | float)}
    test = (
        read_json_object(run / "test_metrics.json")
        or read_json_object(run / "fewshot.json").get("test_metrics")
        or {}
    )
    epochs_done = max((r["epoch"] for r in records), default=0)
    state, detail = _state(
        run, epochs_done, train.get("epochs"), best.get("best_epoch"), train.get("early_stop")
    )
    metric = _selection_metric(task)
    return {
        "run": str(run.relative_to(root)) if root is not None and run != Path(root) else str(run),
        "task": task,
        "recipe": name,
        "overrides": [*record.get("overrides", []), *record.get("resume_overrides", [])],
        "epochs_done": epochs_done,
        "epochs": train.get("epochs"),
        "selection_metric": metric,
        "best_metric": best.get("best_metric"),
        "best_epoch": best.get("best_epoch"),
        "metrics": metrics,
        "test_metric": test.get(metric) if metric else None,
        "state": state,
        "state_detail": detail,
    }


def list_runs(root: str | Path, sort: str | None = None) -> list[dict[str, Any]]:
    """Every run under ``root``; ``sort`` orders by a metric of the best epoch (validation), or by
    ``best``, ``test``, ``epochs``, ``task``, ``state``; highest first, runs without it last."""
    rows = [summarize_run(run, root) for run in find_runs(root)]
    if sort is None or sort == "run":
        return rows
    special = {
        "best": lambda r: r["best_metric"],
        "test": lambda r: r["test_metric"],
        "epochs": lambda r: r["epochs_done"],
    }
    if sort in ("task", "state", "recipe"):
        return sorted(rows, key=lambda r: str(r[sort] or ""))
    known = set(special) | {k for r in rows for k in r["metrics"]}
    if sort not in known:
        raise ValueError(
            f"--sort {sort}: no run has this metric; choose one of {', '.join(sorted(known | {'run', 'task', 'state', 'recipe'}))}"
        )
    value = special.get(sort, lambda r: r["metrics"].get(sort))
    present = [r for r in rows if isinstance(value(r), int | float)]
    absent = [r for r in rows if not isinstance(value(r), int | float)]
    return sorted(present, key=value, reverse=True) + absent
