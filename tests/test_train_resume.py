"""Exact resume: a run stopped after an epoch or by Ctrl-C part-way through one (also between the
micro-batches of a gradient-accumulation step) ends with bit-identical weights; same seed, same run.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from dgsct_cli.config import load_recipe
from dgsct_cli.factory import open_split
from dgsct_cli.train import STATE_FILE, Trainer

EPOCHS = 2
BATCH = 2
BASE = ["data.num_workers=0", f"train.batch_size={BATCH}", f"train.epochs={EPOCHS}"]
TIMING_KEYS = ("seconds", "samples_per_second")


def recipe(*overrides: str):
    return load_recipe("ave-tiny", [*BASE, *overrides])


def trainer(data: Path, out: Path, *overrides: str, interrupt: int | None = None) -> Trainer:
    return Trainer(
        recipe(*overrides),
        data,
        out,
        console=Console(quiet=True),
        show_progress=False,
        interrupt_after_batches=interrupt,
    )


def weights(run: Path, name: str = "last.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / name))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} of {len(a)} tensors differ, e.g. {differing[:4]}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def data_dir(ave_cache) -> Path:
    return ave_cache


@pytest.fixture(scope="module")
def batches_per_epoch(data_dir) -> int:
    n = math.ceil(len(open_split(recipe(), data_dir, "train")) / BATCH)
    assert n >= 4, "the cases below need at least 4 micro-batches per epoch"
    return n


@pytest.fixture(scope="module")
def references(data_dir, tmp_path_factory) -> dict[int, Path]:
    """Uninterrupted 2-epoch runs, without and with gradient accumulation."""
    runs = {}
    for accum in (1, 2):
        out = tmp_path_factory.mktemp(f"reference-accum{accum}") / "run"
        result = trainer(data_dir, out, f"train.grad_accum={accum}").run()
        assert result["epochs"] == EPOCHS
        runs[accum] = out
    return runs


@pytest.fixture(scope="module")
def one_epoch_run(data_dir, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    trainer(data_dir, out, "train.epochs=1").run()
    return SimpleNamespace(run=out, weights=weights(out), metrics=metrics(out))


# Ctrl-C cases: (grad_accum, interrupts) where each interrupt counts micro-batches from the
# (re)start of a Trainer; B is the number of micro-batches per epoch.
CASES = {
    "end-of-epoch-1-before-validation": (1, lambda b: [b]),
    "mid-epoch-2": (1, lambda b: [b + 2]),
    # Both stops fall between the two micro-batches of an accumulation step (the second in epoch 2).
    "accum-between-micro-batches-twice": (2, lambda b: [1, b]),
}


def _expected_progress(done: int, b: int) -> tuple[int, int]:
    """(epochs trained, micro-batches done in the current epoch) after ``done`` micro-batches (a
    stop after an epoch's last batch saves the epoch as trained, its validation pending)."""
    return done // b, done % b


@pytest.fixture(scope="module")
def interrupted_runs(data_dir, batches_per_epoch, tmp_path_factory) -> dict[str, SimpleNamespace]:
    b = batches_per_epoch
    runs = {}
    for name, (accum, interrupts) in CASES.items():
        out = tmp_path_factory.mktemp(name) / "run"
        overrides = (f"train.grad_accum={accum}",)
        done, stops = 0, []
        for i, k in enumerate(interrupts(b)):
            with pytest.raises(KeyboardInterrupt):
                trainer(data_dir, out, *overrides, interrupt=k).run(resume=i > 0)
            done += k
            state = torch.load(out / STATE_FILE, weights_only=True)
            stops.append(
                SimpleNamespace(
                    done=done,
                    progress=(state["progress"]["epoch"], state["progress"]["batch_in_epoch"]),
                    grads=len(state["grads"]),
                    pending_validation=state["progress"]["pending_validation"],
                    metric_lines=len(metrics(out)) if (out / "metrics.jsonl").exists() else 0,
                    files=sorted(p.name for p in out.iterdir()),
                )
            )
        result = trainer(data_dir, out, *overrides).run(resume=True)
        runs[name] = SimpleNamespace(run=out, accum=accum, stops=stops, result=result)
    return runs


# -- (a) resume after a finished epoch --------------------------------------------------------------


def test_resume_after_a_finished_epoch_is_bit_identical(one_epoch_run, references, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run.run, run)
    assert len(metrics(run)) == 1
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["batch_in_epoch"] == 0
    assert state["grads"] == {}

    result = trainer(data_dir, run).run(resume=True)  # now with train.epochs=2
    assert result["epochs"] == EPOCHS
    assert_same_weights(weights(run), weights(references[1]))
    assert_same_weights(weights(run, "best.safetensors"), weights(references[1], "best.safetensors"))
    assert without_timing(metrics(run)) == without_timing(metrics(references[1]))
    assert load_recipe(str(run / "recipe.yaml")).train.epochs == EPOCHS


def test_resume_of_a_finished_run_changes_nothing(one_epoch_run, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run.run, run)
    result = trainer(data_dir, run, "train.epochs=1").run(resume=True)
    assert result["epochs"] == 1 and result["best_epoch"] == 1
    assert_same_weights(weights(run), one_epoch_run.weights)
    assert metrics(run) == one_epoch_run.metrics


def test_resume_without_a_previous_run_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path / 'empty'}: nothing to resume"):
        trainer(data_dir, tmp_path / "empty").run(resume=True)


# -- (b) Ctrl-C part-way through an epoch -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_then_resume_gives_bit_identical_weights(case, interrupted_runs, references):
    r = interrupted_runs[case]
    assert r.result["epochs"] == EPOCHS
    assert_same_weights(weights(r.run), weights(references[r.accum]))
    assert_same_weights(weights(r.run, "best.safetensors"), weights(references[r.accum], "best.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_saves_the_position_and_pending_gradients(case, interrupted_runs, batches_per_epoch):
    b = batches_per_epoch
    r = interrupted_runs[case]
    for stop in r.stops:
        epoch, batch = _expected_progress(stop.done, b)
        assert stop.progress == (epoch, batch)
        pending = batch == 0  # stopped after the epoch's last batch: its validation is pending
        assert stop.metric_lines == epoch - pending  # only validated epochs are logged
        assert stop.pending_validation == pending
        assert {"last.safetensors", STATE_FILE, "recipe.yaml"} <= set(stop.files)
        assert not [f for f in stop.files if "tmp" in f.lower()]
        mid_step = batch % r.accum != 0
        # Gradients of a half-done accumulation step are saved; none after an optimiser step.
        assert (stop.grads > 0) == mid_step, (stop.progress, stop.grads)
    if case.startswith("accum"):
        assert any(stop.grads > 0 for stop in r.stops), "no interrupt fell between micro-batches"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_then_resume_logs_the_same_metrics(case, interrupted_runs, references):
    """The epoch that was interrupted is logged once, with the whole epoch's numbers."""
    r = interrupted_runs[case]
    got, want = without_timing(metrics(r.run)), without_timing(metrics(references[r.accum]))
    assert [m["epoch"] for m in got] == list(range(1, EPOCHS + 1))
    assert [m["val"] for m in got] == [m["val"] for m in want]
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for g, w in zip(got, want, strict=True):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-6), g["epoch"]
        assert g["train_accuracy"] == pytest.approx(w["train_accuracy"]), g["epoch"]


# -- (c) determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights(one_epoch_run, data_dir, tmp_path):
    trainer(data_dir, tmp_path / "again", "train.epochs=1").run()
    assert_same_weights(weights(tmp_path / "again"), one_epoch_run.weights)
    assert without_timing(metrics(tmp_path / "again")) == without_timing(one_epoch_run.metrics)


# -- (d) the run's records ---------------------------------------------------------------------------


def test_metrics_jsonl_and_best_json(references):
    from dgsct_cli.checkpoint import read_metadata

    for run in references.values():
        records = metrics(run)
        assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
        for r in records:
            assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
            assert 0.0 <= r["train_accuracy"] <= 100.0
            assert 0.0 <= r["val"]["accuracy"] <= 100.0 and r["val"]["num_samples"] > 0
            assert r["lr"] > 0
        accs = [r["val"]["accuracy"] for r in records]
        best_epoch = accs.index(max(accs)) + 1  # the first epoch reaching the best accuracy
        best = json.loads((run / "best.json").read_text())
        assert best["best_epoch"] == best_epoch and best["epoch"] == best_epoch
        assert best["best_metric"] == pytest.approx(max(accs))
        assert best["val"]["accuracy"] == pytest.approx(max(accs))
        last = json.loads((run / "last.json").read_text())
        assert last["epoch"] == EPOCHS and last["best_epoch"] == best_epoch
        saved = json.loads(read_metadata(run / "best.safetensors")["metrics"])
        assert saved["epoch"] == best_epoch
        assert not [p for p in run.iterdir() if "tmp" in p.name.lower()]
    # Optimiser steps per epoch follow the accumulation.
    steps = {accum: metrics(run)[0]["step"] for accum, run in references.items()}
    assert steps[2] == math.ceil(steps[1] / 2)
