"""TensorBoard and W&B loggers (`train.loggers`): a tiny run's event files and offline W&B run hold
the numbers of its metrics.jsonl; Ctrl-C, a kill after the last commit and `--resume` leave each
step logged once, with the uninterrupted run's values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dgsct_cli.cli.app import app
from dgsct_cli.config import load_recipe
from dgsct_cli.factory import open_split
from dgsct_cli.loggers import (
    LOGGERS_FILE,
    RunLogger,
    epoch_scalars,
    log_figures,
    log_to_run,
    read_wandb_history,
    read_wandb_records,
)
from dgsct_cli.train import Trainer, TrainingInterrupted

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

LOGGERS = "train.loggers=[jsonl,tensorboard,wandb]"
BASE = ["data.num_workers=0", "train.batch_size=2", "train.epochs=2", "train.grad_accum=2", LOGGERS]
TIMING = ("step/samples_per_second", "train/samples_per_second", "train/seconds")


@pytest.fixture(scope="module", autouse=True)
def wandb_offline(tmp_path_factory):
    """W&B without a network, its config and caches under a temp folder."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(home / var.lower()))
        yield


def trainer(data: Path, out: Path, *overrides: str, **hooks) -> Trainer:
    recipe = load_recipe("ave-tiny", [*BASE, *overrides])
    return Trainer(recipe, data, out, console=Console(quiet=True), show_progress=False, **hooks)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(run: Path, plugin: bool = False) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: its loaders apply the SessionLog.START purges."""
    if plugin:  # the loader TensorBoard's Python server uses
        from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
        acc.Reload()
        from tensorboard.util import tensor_util

        return {
            tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]
            if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
        }
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_files(run: Path) -> list[Path]:
    run_id = json.loads((run / LOGGERS_FILE).read_text())["wandb"]["id"]
    return sorted(run.glob(f"wandb/*-{run_id}/run-{run_id}.wandb"))


def wandb_rows(run: Path) -> list[dict]:
    """Every history row of the run's W&B folders (one per process), in order."""
    return [row for path in wandb_files(run) for row in read_wandb_history(path)]


def final_step(run: Path) -> int:
    return metrics(run)[-1]["step"]


def assert_each_step_once(run: Path) -> None:
    steps = list(range(1, final_step(run) + 1))
    tb = tensorboard_scalars(run)
    for tag in ("step/loss", "step/lr", "step/samples_per_second"):
        assert [s for s, _ in tb[tag]] == steps, tag
    epoch_steps = [r["step"] for r in metrics(run)]
    for tag in ("val/accuracy", "train/loss", "epoch"):
        assert [s for s, _ in tb[tag]] == epoch_steps, tag
    assert [row["_step"] for row in wandb_rows(run)] == steps


def assert_logs_equal_metrics_jsonl(run: Path) -> None:
    tb = {tag: dict(points) for tag, points in tensorboard_scalars(run).items()}
    rows = {row["_step"]: row for row in wandb_rows(run)}
    for record in metrics(run):
        scalars = epoch_scalars(record)
        assert {"epoch", "train/loss", "train/accuracy", "train/lr", "val/accuracy"} <= set(scalars)
        for key, value in scalars.items():
            if key in TIMING:
                continue
            # TensorBoard keeps float32; W&B keeps the JSON number.
            assert tb[key][record["step"]] == pytest.approx(value, rel=1e-6), key
            assert rows[record["step"]][key] == value, key


def assert_same_step_losses(run: Path, reference: Path) -> None:
    """Bit-identical resume: the per-step losses and learning rates equal the uninterrupted run's."""
    for tag in ("step/loss", "step/lr"):
        assert tensorboard_scalars(run)[tag] == tensorboard_scalars(reference)[tag], tag
        got = [(r["_step"], r[tag]) for r in wandb_rows(run) if tag in r]
        want = [(r["_step"], r[tag]) for r in wandb_rows(reference) if tag in r]
        assert got == want, tag


@pytest.fixture(scope="module")
def data(ave_cache) -> Path:
    return ave_cache


@pytest.fixture(scope="module")
def batches(data) -> int:
    n = math.ceil(len(open_split(load_recipe("ave-tiny", BASE), data, "train")) / 2)
    assert n >= 3, "the cases below want a few micro-batches per epoch"
    return n


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer(data, out).run()
    return out


def test_a_run_logs_metrics_jsonl_to_tensorboard_and_wandb(reference, batches):
    assert (reference / "tensorboard").is_dir() and len(wandb_files(reference)) == 1
    assert_each_step_once(reference)
    assert_logs_equal_metrics_jsonl(reference)
    # Accumulation over 2 micro-batches: ceil(batches / 2) optimiser steps per epoch.
    assert final_step(reference) == 2 * math.ceil(batches / 2)
    # The resolved recipe, the device and the world size are the run's config.
    config = {}
    for record in read_wandb_records(wandb_files(reference)[0]):
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["device"] == "cpu" and config["world_size"] == 1 and config["task"] == "ave"
    assert config["train"]["loggers"] == ["jsonl", "tensorboard", "wandb"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference / "tensorboard"))
    acc.Reload()
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "task: ave" in text and "device: cpu" in text
    # TensorBoard's own server path (the plugin loader) shows the same steps.
    plugin = tensorboard_scalars(reference, plugin=True)
    assert [s for s, _ in plugin["step/loss"]] == list(range(1, final_step(reference) + 1))


# Ctrl-C cases: micro-batches before the stop (B = micro-batches per epoch, odd).
CTRL_C = {
    # Half-way through an accumulation step of epoch 2: the step's first micro-batch loss is
    # part of the saved state.
    "mid-step-in-epoch-2": lambda b: b + 1,
    # After epoch 1's last batch, before its validation: the last step's row waits in the state.
    "end-of-epoch-1-before-validation": lambda b: b,
}


@pytest.fixture(scope="module")
def interrupted(data, batches, tmp_path_factory) -> dict[str, SimpleNamespace]:
    runs = {}
    for name, stop in CTRL_C.items():
        out = tmp_path_factory.mktemp(name) / "run"
        with pytest.raises(TrainingInterrupted):
            trainer(data, out, interrupt_after_batches=stop(batches)).run()
        first_id = json.loads((out / LOGGERS_FILE).read_text())["wandb"]["id"]
        trainer(data, out).run(resume=True)
        runs[name] = SimpleNamespace(run=out, first_id=first_id)
    return runs


@pytest.mark.parametrize("case", list(CTRL_C))
def test_ctrl_c_then_resume_logs_each_step_once(case, interrupted, reference):
    r = interrupted[case]
    # --resume continued the same W&B run: one offline folder per process, one id.
    assert json.loads((r.run / LOGGERS_FILE).read_text())["wandb"]["id"] == r.first_id
    assert len(wandb_files(r.run)) == 2
    assert_each_step_once(r.run)
    assert_logs_equal_metrics_jsonl(r.run)
    assert_same_step_losses(r.run, reference)


def test_a_kill_after_the_last_commit_leaves_no_step_twice(data, reference, tmp_path):
    run = tmp_path / "run"
    # Commit 3 (epoch 2 trained) is killed between its weights and its state: the process has
    # logged epoch 2's steps, which the committed state (epoch 1 validated) does not cover.
    with pytest.raises(SystemExit):
        trainer(data, run, test_kill_before_commit=3).run()
    before = [row["_step"] for row in wandb_rows(run)]
    assert before and max(before) > metrics(run)[-1]["step"]  # steps beyond the commit were sent
    trainer(data, run).run(resume=True)
    assert_each_step_once(run)  # TensorBoard: purged and re-logged; W&B: not sent twice
    assert_logs_equal_metrics_jsonl(run)
    assert_same_step_losses(run, reference)


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(2, 2))
    plt.plot([0, 1])
    plt.savefig(path)
    plt.close("all")
    return path


def _summary(path: Path) -> dict:
    summary = {}
    for record in read_wandb_records(path):
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    return summary


def test_test_metrics_and_figures_go_to_the_run(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    png = _png(tmp_path / "fig.png")
    # `train --test` / `fewshot train`: the test metrics; `visualize tsne --checkpoint RUN/best...`: a figure.
    assert log_to_run(run, {"test/accuracy": 42.5, "test/split": "test"}) == ["tensorboard", "wandb"]
    log_figures(run / "best.safetensors", {"figures/tsne": png})
    step = final_step(run)
    assert tensorboard_scalars(run)["test/accuracy"] == [(step, 42.5)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Images("figures/tsne")] == [step]
    # W&B: a short session each, into the run's summary; no history step is taken.
    files = wandb_files(run)
    assert len(files) == 3
    assert _summary(files[1])["test/accuracy"] == 42.5
    assert _summary(files[2])["figures/tsne"]["_type"] == "image-file"
    assert read_wandb_history(files[1]) == read_wandb_history(files[2]) == []
    assert_each_step_once(run)
    # A checkpoint outside any logged run: nothing to log to, nothing written.
    log_figures(png, {"figures/tsne": png})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "run"]


def test_a_sweep_is_logged_as_a_run_of_its_own(tmp_path):
    from dgsct_cli.fewshot_runs import _log_sweep

    recipe = load_recipe("ave-tiny", [LOGGERS])
    table = {
        "recipe": "ave-tiny",
        "published": {"16": 72.4},
        "runs": [
            {"shots": k, "accuracy": 10.0 * k, "selection_accuracy": 5.0 * k, "train_samples": 4 * k}
            for k in (1, 2, 4)
        ],
    }
    png = _png(tmp_path / "sweep.png")
    _log_sweep(recipe, table, tmp_path / "sweep", png, progress=False)
    tb = tensorboard_scalars(tmp_path / "sweep")
    assert tb["sweep/accuracy"] == [(1, 10.0), (2, 20.0), (4, 40.0)]
    rows = wandb_rows(tmp_path / "sweep")
    assert [(r["_step"], r["sweep/accuracy"]) for r in rows] == [(1, 10.0), (2, 20.0), (4, 40.0)]
    assert rows[-1]["figures/sweep/_type"] == "image-file"  # media rows hold nested keys


def test_a_logger_that_is_not_installed_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    result = CliRunner().invoke(
        app,
        ["train", "--recipe", "ave-tiny", "--output", str(tmp_path / "run"), "train.loggers=[jsonl,wandb]"],
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'dgsct[wandb]'" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_wandb_that_cannot_start_is_one_line(data, tmp_path, monkeypatch):
    import wandb

    def init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", init)
    with pytest.raises(
        ValueError, match=r"^wandb: could not start the run \(api_key not configured.*WANDB_MODE=offline"
    ):
        trainer(data, tmp_path / "run").run()


def test_an_unknown_logger_is_refused_at_load():
    from dgsct_cli.config import RecipeError

    with pytest.raises(RecipeError, match=r"train.loggers: 'mlflow' is out of range"):
        load_recipe("ave-tiny", ["train.loggers=[jsonl,mlflow]"])


def test_a_disabled_logger_writes_nothing(tmp_path):
    """Ranks other than 0 under torchrun get a disabled logger."""
    logger = RunLogger(["jsonl", "tensorboard", "wandb"], tmp_path, enabled=False)
    logger.start({"task": "ave"})
    logger.train_batch(1.0, 2, 1, [0.1])
    logger.epoch_end(1, {"epoch": 1, "step": 1, "train_loss": 1.0, "val": {"accuracy": 50.0}})
    logger.close(True)
    assert not logger.active and list(tmp_path.iterdir()) == []


def test_epoch_scalars_names():
    record = {
        "epoch": 3,
        "step": 12,
        "lr": 0.001,
        "train_loss": 1.5,
        "train_accuracy": 40.0,
        "samples_per_second": 9.0,
        "seconds": 2.0,
        "val": {"accuracy": 55.0, "num_samples": 4},
    }
    assert epoch_scalars(record) == {
        "epoch": 3.0,
        "train/lr": 0.001,
        "train/loss": 1.5,
        "train/accuracy": 40.0,
        "train/samples_per_second": 9.0,
        "train/seconds": 2.0,
        "val/accuracy": 55.0,
        "val/num_samples": 4.0,
    }
