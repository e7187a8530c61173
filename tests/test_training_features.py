"""Training features every recipe can use: early stop, init_from, parameter groups, schedules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import synthetic_cache
from rich.console import Console
from safetensors.torch import load_file

from dgsct_cli.config import load_recipe
from dgsct_cli.train import Trainer, make_optimizer, make_scheduler

BASE = ["data.num_workers=0", "train.batch_size=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic_cache("ave", tmp_path_factory.mktemp("features") / "C", videos=6, image_size=64)


def run(data: Path, out: Path, *overrides: str, resume: bool = False) -> dict:
    recipe = load_recipe("ave-tiny", [*BASE, *overrides])
    return Trainer(recipe, data, out, console=Console(quiet=True), show_progress=False).run(resume=resume)


def test_early_stop_ends_the_run_and_a_resume_keeps_it_ended(data, tmp_path):
    # A learning rate too small to change anything: no later epoch beats the first.
    result = run(data, tmp_path / "r", "train.epochs=6", "train.early_stop=2", "train.lr=1e-12")
    assert result["stopped_early"] and result["epochs"] == 3 and result["best_epoch"] == 1
    again = run(data, tmp_path / "r", "train.epochs=6", "train.early_stop=2", "train.lr=1e-12", resume=True)
    assert again["stopped_early"] and again["epochs"] == 3


def test_init_from_copies_the_named_modules_strictly(data, tmp_path):
    run(data, tmp_path / "a", "train.epochs=1")
    source = load_file(str(tmp_path / "a" / "best.safetensors"))
    spec = f"train.init_from={{checkpoint: {tmp_path / 'a'}, modules: [head.CMBS]}}"
    run(data, tmp_path / "b", "train.epochs=1", "train.lr=1e-12", "train.seed=7", spec)
    copied = json.loads((tmp_path / "b" / "init_from.json").read_text())["copied"]
    assert copied and all(name.startswith("head.CMBS.") for name in copied)
    target = load_file(str(tmp_path / "b" / "last.safetensors"))
    for name in copied:
        torch.testing.assert_close(target[name], source[name], rtol=0, atol=1e-9)
    # Modules not named keep their own (seed 7) initialisation.
    assert not torch.equal(target["head.temporal_attn.a_fc.weight"], source["head.temporal_attn.a_fc.weight"])
    bad = f"train.init_from={{checkpoint: {tmp_path / 'a'}, modules: [head.nothing]}}"
    with pytest.raises(ValueError, match="'head.nothing' names no tensor"):
        run(data, tmp_path / "c", "train.epochs=1", bad)


def test_parameter_groups_set_learning_rates_by_name():
    from dgsct_cli.factory import build_model

    recipe = load_recipe(
        "ave-tiny",
        [
            'train.param_groups=[{match: "head.*", lr: 1.0e-4, weight_decay: 0.01}, {match: "*p1*", lr: 2.0e-4}]'
        ],
    )
    model = build_model(recipe)
    opt = make_optimizer(model, recipe.train)
    lrs = [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    assert lrs[0][:2] == (1e-4, 0.01) and lrs[1][:2] == (2e-4, 0.0) and lrs[2][:2] == (1e-3, 0.0)
    heads = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == heads
    recipe.train.param_groups[1].match = "nothing.*"
    with pytest.raises(ValueError, match="'nothing.\\*' matches no trainable parameter"):
        make_optimizer(model, recipe.train)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["train.scheduler.type=step", "train.scheduler.step_size=2", "train.scheduler.gamma=0.5"],
            [1, 1, 0.5, 0.5, 0.25],
        ),
        (
            [
                "train.scheduler.type=multistep",
                "train.scheduler.milestones=[1, 3]",
                "train.scheduler.gamma=0.1",
            ],
            [1, 0.1, 0.1, 0.01, 0.01],
        ),
        (["train.scheduler.type=cosine", "train.epochs=4"], [1, 0.853553, 0.5, 0.146447, 0.0]),
        (
            ["train.scheduler.type=cosine", "train.epochs=5", "train.scheduler.warmup_epochs=1"],
            [0.5, 1, 0.853553, 0.5, 0.146447],
        ),
        (["train.scheduler.type=none"], [1, 1, 1, 1, 1]),
    ],
)
def test_schedulers(overrides, expected):
    recipe = load_recipe("ave-tiny", ["train.lr=1.0", *overrides])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, recipe.train)
    got = []
    for _ in expected:
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx(expected, abs=1e-6)
