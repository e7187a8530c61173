"""Comparing and sharing runs: `dgsct runs list`, `dgsct visualize curves` on two tiny runs, and
`dgsct export` / `dgsct push` / `--checkpoint hf://...` round-tripping through eval and predict
(the Hub is a local cache folder and a patched client: no network)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, ok, synthetic_cache
from rich.console import Console

from dgsct_cli.config import load_recipe
from dgsct_cli.train import Trainer, TrainingInterrupted

BASE = ["data.num_workers=0", "train.batch_size=2", "train.epochs=2", "train.max_steps_per_epoch=1"]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Under one folder: `a` (CLI, with --test), `b` (another learning rate), `c` (Ctrl-C in its
    first epoch) and `d` (a copy of c whose lock a live process holds)."""
    root = tmp_path_factory.mktemp("runs")
    data = synthetic_cache("ave", root.parent / "data", videos=8, image_size=64)
    ok("--quiet", "train", "--recipe", "ave-tiny", "--data", data, "--output", root / "a", "--test", *BASE)
    overrides = [*BASE, "train.lr=3e-3"]
    recipe = load_recipe("ave-tiny", overrides)
    record = {"recipe": recipe.source, "overrides": overrides}
    Trainer(recipe, data, root / "b", Console(quiet=True), False, run_record=record).run()
    recipe = load_recipe("ave-tiny", BASE)
    with pytest.raises(TrainingInterrupted):
        Trainer(
            recipe, data, root / "c", Console(quiet=True), False, interrupt_after_batches=1, run_record=record
        ).run()
    shutil.copytree(root / "c", root / "d")
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    (root / "d" / "run.lock").write_text(json.dumps(lock))
    return {"root": root, "data": data, **{k: root / k for k in "abcd"}}


# -- runs list ---------------------------------------------------------------------------------------


def test_runs_list_reads_task_recipe_epochs_best_and_state(runs):
    rows = json.loads(ok("runs", "list", runs["root"], "--json").stdout)
    by_run = {r["run"]: r for r in rows}
    assert sorted(by_run) == ["a", "b", "c", "d"]
    a, b, c, d = (by_run[k] for k in "abcd")
    assert (a["task"], a["recipe"], a["epochs_done"], a["epochs"], a["state"]) == (
        "ave",
        "ave-tiny",
        2,
        2,
        "finished",
    )
    best = json.loads((runs["a"] / "best.json").read_text())
    assert (a["best_metric"], a["best_epoch"], a["selection_metric"]) == (
        best["best_metric"],
        best["best_epoch"],
        "accuracy",
    )
    assert a["test_metric"] == json.loads((runs["a"] / "test_metrics.json").read_text())["accuracy"]
    assert "train.lr=3e-3" in b["overrides"] and b["state"] == "finished"
    assert (c["state"], c["epochs_done"], c["best_metric"]) == ("interrupted", 0, None)
    assert d["state"] == "running" and str(os.getpid()) in d["state_detail"]
    table = ok("runs", "list", runs["root"]).stdout
    for fragment in ("ave-tiny", "finished", "interrupted", "running", "train.lr=3e-3", "2/2"):
        assert fragment in table


def test_runs_list_sorts_by_a_metric(runs):
    rows = json.loads(ok("runs", "list", runs["root"], "--json", "--sort", "accuracy").stdout)
    values = [r["metrics"].get("accuracy") for r in rows]
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=True) and values[len(present) :] == [None] * (4 - len(present))
    assert [r["run"] for r in rows][len(present) :] == ["c", "d"]  # runs without the metric last
    assert_one_line_error(invoke("runs", "list", runs["root"], "--sort", "nosuch"), "--sort nosuch")
    assert_one_line_error(invoke("runs", "list", runs["root"] / "missing"), "no such folder")


# -- curves ------------------------------------------------------------------------------------------


def test_visualize_curves_of_two_runs_share_axes_and_mark_the_best_epoch(runs, tmp_path):
    from dgsct_cli.viz.curves import curve_panels

    out = tmp_path / "curves.png"
    ok("visualize", "curves", runs["a"], runs["b"], "--out", out)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 600 and np.asarray(im.convert("L")).std() > 5
    panels = curve_panels([runs["a"], runs["b"]])
    assert list(panels)[:2] == ["train loss", "val accuracy"] and "train accuracy" in panels
    for run in ("a", "b"):
        records = [json.loads(x) for x in (runs[run] / "metrics.jsonl").read_text().splitlines()]
        loss = panels["train loss"][run]
        assert loss["epochs"] == [1, 2] and loss["values"] == [r["train_loss"] for r in records]
        best = json.loads((runs[run] / "best.json").read_text())["best_epoch"]
        accuracy = panels["val accuracy"][run]
        assert accuracy["best"] == (best, records[best - 1]["val"]["accuracy"])
    only = curve_panels([runs["a"]], ["accuracy"])
    assert list(only) == ["val accuracy", "train accuracy"]
    assert_one_line_error(invoke("visualize", "curves", runs["c"], "--out", out), "no metrics.jsonl")


# -- export, push, hf:// -----------------------------------------------------------------------------


def _eval(checkpoint, data, tmp_path: Path, name: str) -> dict:
    out = tmp_path / f"{name}.json"
    ok("--quiet", "eval", "--checkpoint", checkpoint, "--data", data, "--split", "test", "--json", out)
    result = json.loads(out.read_text())
    return {k: v for k, v in result.items() if k not in ("checkpoint", "checkpoint_kind")}


def _clip(path: Path) -> Path:
    from dgsct_cli.data.synthetic import _render_audio, _render_frames
    from dgsct_cli.data.video import write_mp4

    rng = np.random.default_rng(0)
    seg = [0, 0, 1, -1, 2]
    write_mp4(path, _render_frames(seg, 4, 64, 4, rng), 4, _render_audio(seg, 32000, rng), 32000)
    return path


def _predict(checkpoint, clip: Path, tmp_path: Path, name: str) -> list:
    out = tmp_path / f"{name}-predict.json"
    ok("--quiet", "predict", "--checkpoint", checkpoint, clip, "--json", out)
    return json.loads(out.read_text())["clips"]


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ave-tiny-a"
    ok("export", runs["a"], "--out", out)
    return out


def test_export_writes_the_hub_layout_with_a_model_card(exported, runs):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    meta = json.loads((runs["a"] / "best.json").read_text())
    assert config["task"] == "ave" and config["recipe"]["task"] == "ave"
    assert len(config["class_names"]) == config["recipe"]["model"]["head"]["num_classes"]
    assert config["checkpoint"]["source"] == "best.safetensors" and config["checkpoint"]["contents"] == "full"
    selection = config["metrics"]["selection"]
    assert (selection["metric"], selection["split"], selection["epoch"]) == (
        "accuracy",
        "val",
        meta["best_epoch"],
    )
    assert config["metrics"]["test"]["values"]["accuracy"] == pytest.approx(
        json.loads((runs["a"] / "test_metrics.json").read_text())["accuracy"]
    )
    assert config["metrics"]["paper"] == {"accuracy": 82.2}
    assert config["licenses"]["visual"][1] == "mit" and config["parameters"]["total"] > 0
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dgsct\nlicense: mit\n")
    for fragment in (
        "## Results",
        "the `val` split",
        "| accuracy |",
        "82.20",
        "dgsct train --recipe ave-tiny --data DATA",
        "## Parameters",
        "## Encoders and licences",
        "hf://OWNER/REPO",
    ):
        assert fragment in card, fragment


def test_export_round_trips_through_eval_and_predict(exported, runs, tmp_path):
    data = runs["data"]
    assert _eval(exported, data, tmp_path, "export") == _eval(runs["a"], data, tmp_path, "run")
    clip = _clip(tmp_path / "clip.mp4")
    got, want = _predict(exported, clip, tmp_path, "export"), _predict(runs["a"], clip, tmp_path, "run")
    assert got == want and "error" not in got[0]


def _fake_hub(monkeypatch, cache: Path) -> list[dict]:
    """A Hub client that commits into a local Hugging Face cache; downloads read that cache with
    huggingface_hub's own offline code."""
    import huggingface_hub
    from huggingface_hub import constants

    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"create_repo": repo_id, **kwargs})

    def create_branch(self, repo_id, branch, **kwargs):
        calls.append({"create_branch": branch})

    def upload_folder(self, *, folder_path, repo_id, revision=None, **kwargs):
        calls.append(
            {"upload_folder": repo_id, "revision": revision, "files": sorted(os.listdir(folder_path))}
        )
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        commit = f"{len(calls):040x}"
        shutil.copytree(folder_path, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (revision or "main")).write_text(commit)
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}",
            commit_message=kwargs.get("commit_message", ""),
            commit_description="",
            oid=commit,
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return calls


def test_push_then_hf_checkpoint_gives_the_runs_numbers(runs, tmp_path, monkeypatch):
    calls = _fake_hub(monkeypatch, tmp_path / "hub")
    result = ok("push", runs["a"], "me/ave-tiny")
    assert "https://huggingface.co/me/ave-tiny/commit/" in result.stdout
    assert calls[0] == {
        "create_repo": "me/ave-tiny",
        "repo_type": "model",
        "private": False,
        "exist_ok": True,
    }
    assert calls[-1]["files"] == ["README.md", "config.json", "model.safetensors"]
    ok("push", runs["b"], "me/ave-tiny", "--revision", "lr3e-3")
    data = runs["data"]
    assert _eval("hf://me/ave-tiny", data, tmp_path, "hub") == _eval(runs["a"], data, tmp_path, "a")
    assert _eval("hf://me/ave-tiny@lr3e-3", data, tmp_path, "hub-b") == _eval(runs["b"], data, tmp_path, "b")
    assert_one_line_error(
        invoke("eval", "--checkpoint", "hf://me/nothing", "--data", data), "hf://me/nothing: cannot download"
    )
    assert_one_line_error(
        invoke("eval", "--checkpoint", "hf://nonsense", "--data", data), "expected hf://OWNER/REPO"
    )


def test_train_init_from_takes_an_hf_checkpoint(runs, tmp_path, monkeypatch):
    from dgsct_cli.checkpoint import resolve_run_checkpoint

    _fake_hub(monkeypatch, tmp_path / "hub")
    ok("push", runs["a"], "me/ave-tiny")
    path = resolve_run_checkpoint("hf://me/ave-tiny")
    assert path.name == "model.safetensors" and str(tmp_path / "hub") in str(path)
    # Without hf:// nothing is downloaded: a missing local path stays an error about that path.
    with pytest.raises(Exception, match="checkpoint not found"):
        resolve_run_checkpoint(tmp_path / "me" / "ave-tiny")


def test_encoder_files_are_listed_with_size_and_hash(tmp_path):
    from dgsct_cli.hub import encoder_files

    weights = tmp_path / "swin.safetensors"
    weights.write_bytes(b"0123456789")
    recipe = {"model": {"visual": {"weights": str(weights)}, "audio": {"weights": None}, "text": None}}
    files = encoder_files(recipe, included=False)
    assert list(files) == ["model.visual.weights"]
    entry = files["model.visual.weights"]
    assert entry["name"] == "swin.safetensors" and entry["size"] == 10 and not entry["included"]
    assert entry["sha256"] == "84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882"


NO_EXTRAS = """
import sys
from dgsct_cli.cli.app import app
for args in {args!r}:
    try:
        app(args, prog_name="dgsct")
    except SystemExit:
        pass
loaded = [m for m in ("torch", "wandb", "tensorboard", "huggingface_hub", "matplotlib") if m in sys.modules]
assert not loaded, loaded
print("ok")
"""


def test_help_of_the_new_commands_imports_no_extra(tmp_path):
    import subprocess
    import sys

    args = [["--help"], ["runs", "list", "--help"], ["export", "--help"], ["push", "--help"]]
    args += [["visualize", "curves", "--help"], ["train", "--help"]]
    result = subprocess.run(
        [sys.executable, "-c", NO_EXTRAS.format(args=args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
