"""A task plugs in without editing shared code: a toy task defined here (head, loss, metric,
dataset, synthetic data, prepare command) is prepared, trained, evaluated and extracted through
the CLI, and the layers keep pointing one way."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from rich.table import Table
from torch import nn
from typer.testing import CliRunner

from dgsct_cli.schema import Annotated, Range
from dgsct_cli.tasks.base import Task, register_task

TINY_MODEL = """
model:
  visual:
    name: swinv2_tiny_window8_256
    img_size: 32
    args: {embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], window_size: 2}
  audio:
    hop_length: 640
    mel_bins: 16
    spec_size: 32
    embed_dim: 16
    depths: [1, 1, 1, 1]
    num_heads: [1, 2, 4, 8]
    window_size: 2
    time_mask: 4
    freq_mask: 2
  adapter: {num_tokens: 4}
  num_segments: 4
"""


@dataclass
class ToyHeadConfig:
    num_classes: Annotated[int, Range(1)] | None = None
    hidden: Annotated[int, Range(1)] = 16


@dataclass
class ToyLossConfig:
    label_smoothing: Annotated[float, Range(0, 1)] = 0.0


class ToyHead(nn.Module):
    def __init__(self, visual_dim: int, audio_dim: int, cfg: ToyHeadConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(visual_dim + audio_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.num_classes)
        )

    def forward(self, features, **_):
        pooled = torch.cat([features.visual, features.audio], dim=-1).mean(1)
        return {"logits": self.net(pooled)}


class ToyEvaluator:
    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, outputs, batch) -> None:
        pred = outputs["logits"].argmax(-1).cpu()
        self.correct += int((pred == batch["label"].view(-1).cpu()).sum())
        self.total += pred.numel()

    def compute(self):
        return {"accuracy": 100.0 * self.correct / max(self.total, 1)}


def write_toy_cache(out: Path, videos: int = 12, image_size: int = 32) -> None:
    """A prepared cache written directly: the class is the frames' brightness and the tone."""
    from dgsct_cli.data.manifest import (
        MANIFEST_NAME,
        array_path,
        atomic_save_npy,
        build_manifest,
        write_manifest,
    )

    rng = np.random.default_rng(0)
    samples = []
    for i in range(videos):
        k = i % 2
        vid = f"toy{i:03d}"
        frames = np.full((4, image_size, image_size, 3), 60 + 140 * k, np.uint8)
        frames = np.clip(frames + rng.integers(-20, 20, frames.shape), 0, 255).astype(np.uint8)
        t = np.arange(4 * 32000) / 32000
        audio = (0.3 * np.sin(2 * np.pi * (300 + 900 * k) * t)).astype(np.float32)
        atomic_save_npy(array_path(out, "frames", vid), frames)
        atomic_save_npy(array_path(out, "audio", vid), audio)
        split = ["train", "train", "val", "test"][i % 4] if i >= 4 else "train"
        samples.append({"id": vid, "video_id": vid, "split": split, "targets": {"label": [k]}})
    manifest = build_manifest(
        dataset="toy",
        num_segments=4,
        image_size=image_size,
        sample_rate=32000,
        class_names=["dark-low", "bright-high"],
        background_index=None,
        samples=samples,
        split_names=["train", "val", "test"],
        skipped=[],
        created_by="test_plugin_task",
    )
    write_manifest(out / MANIFEST_NAME, manifest)


def prepare_toy(
    out: Path = typer.Option(..., "--out"),
    synthetic: bool = typer.Option(False, "--synthetic"),
    *,
    progress: bool = True,
    console=None,
):
    """Prepare the toy dataset."""
    if not synthetic:
        raise ValueError("the toy dataset exists only as --synthetic")
    write_toy_cache(out)


class ToyTask(Task):
    name = "toy"
    description = "two-class toy task defined in a test file"
    head_config = ToyHeadConfig
    loss_config = ToyLossConfig
    datasets = ("toy",)
    default_num_classes = 2
    prepare_name = "toy"
    prepare_help = "Prepare the toy dataset."

    def build_head(self, visual_dim, audio_dim, cfg, model_cfg):
        return ToyHead(visual_dim, audio_dim, cfg)

    def loss(self, outputs, batch, cfg):
        return nn.functional.cross_entropy(
            outputs["logits"], batch["label"].view(-1), label_smoothing=cfg.label_smoothing
        )

    def make_evaluator(self, dataset):
        return ToyEvaluator()

    def metrics_table(self, metrics):
        table = Table("metric", "value")
        table.add_row("accuracy", f"{metrics['accuracy']:.1f}")
        return table

    def segment_labels(self, batch):
        return batch["label"].view(-1, 1).expand(-1, batch["frames"].shape[1])

    def write_synthetic(self, out, videos, image_size, progress, console):
        write_toy_cache(out, image_size=image_size)

    def prepare_command(self):
        return prepare_toy

    def bench_batch(self, model_cfg, data_cfg, batch_size, generator):
        batch = super().bench_batch(model_cfg, data_cfg, batch_size, generator)
        batch["label"] = torch.randint(0, model_cfg.head.num_classes, (batch_size, 1), generator=generator)
        return batch


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    register_task(ToyTask())
    folder = tmp_path_factory.mktemp("toy")
    recipe = folder / "toy.yaml"
    recipe.write_text(
        "task: toy\n" + TINY_MODEL + "data: {path: data/toy, segment_tiling: 1, num_workers: 0}\n"
        "train: {epochs: 2, batch_size: 4, grad_accum: 1, lr: 0.003, eval_batch_size: 4}\n"
    )
    yield folder, recipe
    from dgsct_cli.tasks.base import TASKS

    TASKS.pop("toy", None)


def _run(*args: str):
    from dgsct_cli.cli.app import app

    result = CliRunner().invoke(app, ["--quiet", *args])
    assert result.exit_code == 0, result.output
    return result


def test_a_task_from_a_test_file_prepares_trains_evaluates_and_extracts(toy):
    folder, recipe = toy
    data, run = folder / "cache", folder / "run"
    assert "toy" in _run("prepare", "--help").output
    _run("prepare", "toy", "--out", str(data), "--synthetic")
    _run("train", "--recipe", str(recipe), "--data", str(data), "--output", str(run))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    out = _run(
        "eval",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--split",
        "test",
        "--json",
        str(folder / "m.json"),
    )
    metrics = json.loads((folder / "m.json").read_text())
    assert metrics["task"] == "toy" and metrics["split"] == "test" and "accuracy" in metrics
    assert "TOY test" in out.stdout
    _run(
        "extract",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--split",
        "val",
        "--out",
        str(folder / "f.npz"),
    )
    feats = np.load(folder / "f.npz")
    assert feats["visual"].shape[:2] == feats["segment_labels"].shape and str(feats["task"]) == "toy"
    _run("bench", "--recipe", str(recipe), "--steps", "1", "--warmup", "0", "--batch-size", "2")


SHARED = ("train.py", "evaluate.py", "bench.py", "extract.py", "factory.py", "checkpoint.py", "convert.py")


def test_shared_code_never_names_a_task():
    root = Path(__file__).resolve().parents[1] / "dgsct_cli"
    for path in [*(root / name for name in SHARED), *sorted((root / "cli").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        literals = {
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        assert not literals & {"ave", "avvp", "avqa", "avs", "llp"}, path


def _imports(path: Path, root: Path) -> set[str]:
    """Absolute names of the dgsct_cli modules ``path`` imports (relative imports resolved)."""
    package = list(path.relative_to(root.parent).parts[:-1])  # e.g. ['dgsct_cli', 'models']
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            out.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.startswith("dgsct_cli")}


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("models", ("config", "tasks", "data", "train", "cli", "factory", "checkpoint", "evaluate")),
        ("data", ("tasks", "models", "train", "cli", "factory", "config")),
        ("tasks", ("cli", "train", "evaluate", "bench", "factory", "config", "checkpoint")),
    ],
)
def test_layers_point_one_way(layer, forbidden):
    root = Path(__file__).resolve().parents[1] / "dgsct_cli"
    for path in sorted((root / layer).rglob("*.py")):
        for name in _imports(path, root):
            part = name.split(".")[1] if "." in name else ""
            assert part not in forbidden, f"{path.relative_to(root)} imports {name}"
