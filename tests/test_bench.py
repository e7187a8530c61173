"""``dgsct bench``: run_bench on the tiny recipe (train, eval, recompute, loader) and the Typer command."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from dgsct_cli.bench import count_flops, random_batch, run_bench
from dgsct_cli.cli.bench_cmd import bench
from dgsct_cli.config import load_recipe
from dgsct_cli.tasks.base import get_task

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "ave-tiny.yaml")

REQUIRED_POSITIVE = (
    "step_seconds_median",
    "samples_per_second",
    "flops_per_step",
    "useful_flops_per_step",
    "achieved_flops_per_second",
    "matmul_flops_per_second",
    "fraction_of_matmul_peak",
    "peak_memory_bytes",
)
SETTINGS = ("recipe", "task", "batch_size", "steps", "device", "dtype", "recompute", "mode", "threads")


@pytest.fixture(scope="module")
def tiny():
    return load_recipe(TINY)


@pytest.fixture(scope="module")
def train_result(tiny):
    return run_bench(tiny, batch_size=2, steps=2, recompute=False)


def _check_result(result: dict, mode: str, batch_size: int) -> None:
    for key in REQUIRED_POSITIVE:
        assert isinstance(result[key], int | float) and math.isfinite(result[key]), key
        assert result[key] > 0, key
    for key in SETTINGS:
        assert key in result, key
    assert result["mode"] == mode and result["batch_size"] == batch_size and result["task"] == "ave"
    assert len(result["step_seconds"]) == result["steps"]
    assert result["torch_version"] == torch.__version__
    assert result["parameters"]["trainable"] > 0
    assert result["input_shapes"]["frames"] == [batch_size, 10, 3, 64, 64]
    assert result["input_shapes"]["audio"] == [batch_size, 10, 32000 * 2]
    json.dumps(result)  # everything is JSON-serialisable


def test_train_bench_reports_every_key(train_result):
    r = train_result
    _check_result(r, "train", 2)
    assert r["samples_per_second"] == pytest.approx(2 / r["step_seconds_median"])
    assert r["achieved_flops_per_second"] == pytest.approx(
        r["useful_flops_per_step"] / r["step_seconds_median"]
    )
    assert r["fraction_of_matmul_peak"] == pytest.approx(
        r["achieved_flops_per_second"] / r["matmul_flops_per_second"]
    )
    assert r["recompute"] is False and r["useful_flops_per_step"] == r["flops_per_step"]


def test_flops_are_counted_and_repeatable(tiny, train_result):
    again = run_bench(tiny, batch_size=2, steps=1, warmup=0, recompute=False)
    assert again["flops_per_step"] == train_result["flops_per_step"] > 0


def test_recompute_replays_forward_but_not_useful_work(tiny, train_result):
    on = run_bench(tiny, batch_size=2, steps=1, warmup=0, recompute=True)
    off = train_result
    assert on["recompute"] is True and on["recompute_setting"] == "on"
    # Recompute replays (part of) the encoder forwards in backward: more executed work, same order.
    assert off["flops_per_step"] < on["flops_per_step"] < 2 * off["flops_per_step"]
    # Useful work (counted on 1 and 2 samples with recompute off, extrapolated) matches exactly.
    assert on["useful_flops_per_step"] == off["flops_per_step"]


def test_eval_mode(tiny, train_result):
    console = Console(file=io.StringIO(), width=120)
    r = run_bench(tiny, batch_size=2, steps=2, mode="eval", console=console)
    _check_result(r, "eval", 2)
    # Forward only: fewer FLOPs than forward + backward on the same batch.
    assert r["flops_per_step"] < train_result["flops_per_step"]
    assert "dgsct bench" in console.file.getvalue()


def test_eval_default_batch_size_is_the_recipes(tiny):
    r = run_bench(tiny, steps=1, warmup=0, mode="eval")
    assert r["batch_size"] == tiny.train.eval_batch_size


def test_cpu_attention_is_counted():
    # torch's counter has no formula for the CPU attention kernel; ours must count it.
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    fwd = 2 * (2 * 4) * 16 * 16 * (8 + 8)
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == fwd
    both = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both > fwd


def test_random_batch_matches_what_the_loss_reads(tiny):
    task = get_task("ave")
    batch = random_batch(task, tiny, 3)
    assert batch["segment_labels"].shape == (3, 10) and batch["segment_labels"].dtype == torch.long
    # Without data the class count is the task's default: 28 AVE classes + background index 28.
    assert int(batch["segment_labels"].max()) <= 28
    assert batch["event_label"].shape == (3, 1) and int(batch["event_label"].max()) < 28


def test_loader_rate_from_a_prepared_cache(tmp_path):
    # The tiny recipe writes synthetic data at its own data.path when absent.
    recipe = load_recipe(TINY, ["data.synthetic_videos=4", f"data.path={tmp_path / 'cache'}"])
    r = run_bench(recipe, batch_size=1, steps=1, warmup=0, mode="eval", data=tmp_path / "cache")
    assert r["loader_samples_per_second"] > 0 and r["loader_samples"] >= 1
    assert isinstance(r["loader_keeps_up"], bool)


def test_bad_arguments_are_value_errors(tiny):
    with pytest.raises(ValueError, match="mode"):
        run_bench(tiny, mode="infer")
    with pytest.raises(ValueError, match="dtype"):
        run_bench(tiny, dtype="fp16")


# -- the Typer command ---------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(bench)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "bench" a named subcommand, as in dgsct
        pass

    return app


def test_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(
        _app(),
        ["bench", "--recipe", TINY, "--json", str(out)]
        + "--batch-size 1 --steps 1 --warmup 0 --mode eval --device cpu --no-recompute".split(),
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    for key in ("step_seconds_median", "peak_memory_bytes", "flops_per_step", "samples_per_second"):
        assert data[key] > 0
    assert data["mode"] == "eval" and data["dtype"] == "fp32" and data["batch_size"] == 1


def test_command_errors_are_one_red_line():
    res = CliRunner().invoke(_app(), ["bench", "--recipe", "no-such-recipe"])
    assert res.exit_code == 1
    assert "error:" in res.output and "recipe not found" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(_app(), ["bench", "--recipe", TINY, "--mode", "infer"])
    assert res.exit_code == 1 and "error: mode must be" in res.output
