"""End to end through the ``dgsct`` command line on a small synthetic AVE dataset.

prepare -> train -> eval -> extract -> visualize tsne, release checkpoints in eval, ``--help``,
``--quiet``, ``info`` and the one-line errors.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO
from typer.testing import CliRunner

from dgsct_cli.cli.app import app

PROGRESS_CHARS = "━"  # rich progress bars
FORCE_TTY = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "FORCE_COLOR": "1", "COLUMNS": "120"}


def invoke(*args, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def ok(*args, env: dict[str, str] | None = None):
    result = invoke(*args, env=env)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def error_text(result) -> str:
    """The error output with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    text = error_text(result)
    for fragment in fragments:
        assert fragment in text, text


def temp_files(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        found += [p for p in folder.rglob("*") if "tmp" in p.name.lower()]
    return found


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One prepared dataset and one 1-epoch training run, shared by the module."""
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "C", root / "RUN"
    prepared = ok("prepare", "ave", "--synthetic", "--out", data, "--videos", 12, "--image-size", 64)
    trained = ok("train", "--recipe", "ave-tiny", "--data", data, "--output", run, "train.epochs=1")
    from dgsct_cli.data.manifest import PreparedCache

    cache = PreparedCache(data)
    return SimpleNamespace(root=root, data=data, run=run, prepared=prepared, trained=trained, cache=cache)


def _test_split(ws):
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import open_split

    return open_split(load_recipe("ave-tiny"), ws.data, "test")


# -- help, info, fast errors --------------------------------------------------------------------------


def _all_commands() -> list[list[str]]:
    """Every command and command group of the app (walked, so new commands are covered too)."""
    import typer.main

    found: list[list[str]] = []
    root = typer.main.get_command(app)
    ctx = root.make_context("dgsct", [], resilient_parsing=True)

    def walk(cmd, path: list[str]) -> None:
        found.append(path)
        if hasattr(cmd, "list_commands"):  # lazy groups (prepare) build their commands on demand
            for name in sorted(cmd.list_commands(ctx)):
                walk(cmd.get_command(ctx, name), [*path, name])

    walk(root, [])
    return found


COMMANDS = _all_commands()


def test_the_documented_commands_exist():
    expected = [
        [],
        ["train"],
        ["eval"],
        ["extract"],
        ["info"],
        ["convert"],
        ["recipes"],
        ["recipes", "list"],
        ["recipes", "show"],
        ["visualize"],
        ["visualize", "tsne"],
        ["prepare"],
        ["prepare", "ave"],
    ]
    assert all(c in COMMANDS for c in expected), COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dgsct")
def test_help_works_for_every_command(command):
    result = ok(*command, "--help")
    assert "Usage:" in result.stdout
    assert "--help" in result.stdout


def test_python_dash_m_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "dgsct_cli", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and "train" in out.stdout and "prepare" in out.stdout


def test_info_prints_parameter_counts():
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import create_model

    result = ok("info", "--recipe", "ave-tiny", env={"COLUMNS": "160"})
    model = create_model("ave", load_recipe("ave-tiny").model, load_encoder_weights=False)
    counts = model.parameter_counts()
    out = result.stdout
    for key in ("total", "trainable", "adapters", "visual encoder", "audio encoder", "head"):
        n = counts[key.replace(" ", "_")]
        assert re.search(rf"{key}\s.*\b{n:,}\b", out), (key, n, out)
    assert counts["trainable"] == counts["adapters"] + counts["head"] < counts["total"]
    pairs = len(model.encoder.pairs)
    assert f"adapters: {pairs} block pairs x 4 = {4 * pairs}" in out
    # Overrides change what is counted.
    wider = ok("info", "--recipe", "ave-tiny", "model.adapter.num_tokens=16", env={"COLUMNS": "160"})
    assert wider.stdout != out


def test_missing_data_folder_is_a_one_line_error(tmp_path):
    missing = tmp_path / "no-such-data"
    for command in (
        ["eval"],
        ["extract", "--out", tmp_path / "f.npz"],
        ["visualize", "tsne", "--out", tmp_path / "f.png"],
    ):
        result = invoke(*command, "--checkpoint", tmp_path / "RUN", "--data", missing)
        assert_clean_error(result, f"{missing}: data folder does not exist", "dgsct prepare")
    assert not (tmp_path / "f.npz").exists() and not (tmp_path / "f.png").exists()


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    for ckpt in (tmp_path / "nope.safetensors", tmp_path / "release.pt"):
        result = invoke("eval", "--checkpoint", ckpt, "--data", tmp_path)
        assert_clean_error(result, f"{ckpt}: checkpoint not found")
    (tmp_path / "run").mkdir()
    result = invoke("eval", "--checkpoint", tmp_path / "run", "--data", tmp_path)
    assert_clean_error(result, "run folder without best.safetensors or last.safetensors")


def test_unknown_recipe_key_override_is_a_one_line_error(tmp_path):
    result = invoke("train", "--recipe", "ave-tiny", "--output", tmp_path / "run", "train.lrr=0.1")
    assert_clean_error(result, "ave-tiny.yaml", "unknown key 'train.lrr'", "did you mean 'train.lr'?")
    assert not (tmp_path / "run").exists()
    result = invoke("train", "--recipe", "ave-tiny", "--output", tmp_path / "run", "train.epochs=abc")
    assert_clean_error(result, "train.epochs: expected an integer, got 'abc'")
    result = invoke("train", "--recipe", "nope", "--output", tmp_path / "run")
    assert_clean_error(result, "nope: recipe not found; known recipes:", "ave-tiny")
    result = invoke("train", "--output", tmp_path / "run")
    assert_clean_error(result, "--recipe is required")


def test_errors_are_printed_on_one_line_even_when_long(tmp_path):
    """The error is one line (grep-able, no terminal wrapping) however long the path is."""
    missing = tmp_path / ("a-rather-long-folder-name-" * 4) / "data"
    result = invoke("eval", "--checkpoint", tmp_path / "RUN", "--data", missing, env={"COLUMNS": "80"})
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == f"error: {missing}: data folder does not exist (run 'dgsct prepare ...' first)\n"


@pytest.mark.parametrize("name", ["data[v2]", "data[/old]"])
def test_error_messages_are_printed_verbatim_not_as_rich_markup(tmp_path, name):
    missing = tmp_path / name
    result = invoke("eval", "--checkpoint", tmp_path / "RUN", "--data", missing, env={"COLUMNS": "1000"})
    assert_clean_error(result, f"{missing}: data folder does not exist")


# -- the pipeline ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_and_train_write_the_expected_files(ws):
    from safetensors import safe_open

    from dgsct_cli.checkpoint import read_metadata
    from dgsct_cli.config import load_recipe

    assert (ws.data / "manifest.json").is_file()
    assert {s: len(ws.cache.split_indices(s)) > 0 for s in ("train", "val", "test")} == {
        "train": True,
        "val": True,
        "test": True,
    }
    assert len({s["video_id"] for s in ws.cache.samples}) == 12 and ws.cache.image_size == 64
    assert "done: 1 epoch," in ws.trained.stdout and str(ws.run) in " ".join(ws.trained.stdout.split())

    names = {p.name for p in ws.run.iterdir()}
    assert {
        "best.safetensors",
        "last.safetensors",
        "best.json",
        "last.json",
        "recipe.yaml",
        "metrics.jsonl",
        "trainer_state.pt",
    } <= names
    assert temp_files(ws.run, ws.data) == []

    lines = (ws.run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and np.isfinite(record["train_loss"])
    assert 0.0 <= record["val"]["accuracy"] <= 100.0
    assert json.loads((ws.run / "best.json").read_text())["best_epoch"] == 1

    saved = load_recipe(str(ws.run / "recipe.yaml"))
    assert saved.name == "ave-tiny" and saved.train.epochs == 1 and saved.model.visual.img_size == 64
    for name in ("best.safetensors", "last.safetensors"):
        meta = read_metadata(ws.run / name)
        assert meta["task"] == "ave"
        assert json.loads(meta["recipe"])["train"]["epochs"] == 1
        with safe_open(str(ws.run / name), framework="pt") as f:
            assert any(k.startswith("encoder.vis_adapter_blocks_p1.") for k in f.keys())
    state = torch.load(ws.run / "trainer_state.pt", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["batch_in_epoch"] == 0


@pytest.mark.slow
def test_eval_writes_json_metrics(ws):
    out = ws.root / "eval" / "test.json"
    result = ok("eval", "--checkpoint", ws.run, "--data", ws.data, "--split", "test", "--json", out)
    metrics = json.loads(out.read_text())
    n = len(ws.cache.split_indices("test"))
    assert metrics["task"] == "ave" and metrics["split"] == "test"
    assert metrics["checkpoint_kind"] == "dgsct"
    assert metrics["num_samples"] == n and metrics["num_segments"] == 10 * n
    assert 0.0 <= metrics["accuracy"] <= 100.0
    per = metrics["per_class_accuracy"]
    assert list(per) == [*ws.cache.class_names, "background"]

    # The overall accuracy is the segment-weighted mean of the per-class accuracies.
    labels = torch.stack([item["segment_labels"] for item in _test_split(ws)])
    counts = torch.bincount(labels.flatten(), minlength=len(per))
    pooled = sum((acc or 0.0) * int(c) for acc, c in zip(per.values(), counts, strict=True)) / int(
        counts.sum()
    )
    assert metrics["accuracy"] == pytest.approx(pooled)
    assert all((acc is None) == (int(c) == 0) for acc, c in zip(per.values(), counts, strict=True))
    assert f"AVE test: {n} samples" in result.stdout
    assert temp_files(out.parent) == []

    # A checkpoint file gives the same numbers as its run folder (1 epoch: best == last).
    out2 = ws.root / "eval" / "last.json"
    ok("eval", "-c", ws.run / "last.safetensors", "-d", ws.data, "--json", out2, "--batch-size", 3)
    again = json.loads(out2.read_text())
    assert again["split"] == "test"
    assert again["accuracy"] == metrics["accuracy"]
    assert again["per_class_accuracy"] == per


@pytest.mark.slow
def test_extract_writes_features_with_and_without_adapters(ws):
    with_path, without_path = ws.root / "feats" / "F.npz", ws.root / "feats" / "F-base"
    result = ok("extract", "-c", ws.run, "-d", ws.data, "-s", "test", "--out", with_path)
    assert "with DG-SCT adapters" in " ".join(result.stdout.split())
    ok("extract", "-c", ws.run, "-d", ws.data, "-s", "test", "--out", without_path, "--no-adapters")
    without_path = without_path.with_name("F-base.npz")
    assert without_path.is_file()

    ids = [ws.cache.samples[i]["id"] for i in ws.cache.split_indices("test")]
    n = len(ids)
    with np.load(with_path) as a, np.load(without_path) as b:
        for f in (a, b):
            assert f["visual"].ndim == 3 and f["visual"].shape[:2] == (n, 10)
            assert f["audio"].ndim == 3 and f["audio"].shape[:2] == (n, 10)
            assert f["segment_labels"].shape == (n, 10)
            assert f["sample_ids"].tolist() == ids
            assert np.isfinite(f["visual"]).all() and np.isfinite(f["audio"]).all()
        assert a["visual"].shape == b["visual"].shape and a["audio"].shape == b["audio"].shape
        assert not np.allclose(a["visual"], b["visual"]) and not np.allclose(a["audio"], b["audio"])
        np.testing.assert_array_equal(a["segment_labels"], b["segment_labels"])
        assert bool(a["use_adapters"]) and not bool(b["use_adapters"])
        labels = torch.stack([item["segment_labels"] for item in _test_split(ws)]).numpy()
        np.testing.assert_array_equal(a["segment_labels"], labels)
    assert temp_files(with_path.parent) == []


@pytest.mark.slow
def test_visualize_tsne_writes_png_and_silhouettes(ws):
    fig = ws.root / "figs" / "fig.png"
    ok("visualize", "tsne", "-c", ws.run, "-d", ws.data, "-s", "test", "--out", fig)
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = json.loads(fig.with_suffix(".json").read_text())
    n = len(ws.cache.split_indices("test"))
    assert set(scores) == {
        "visual: adapters removed",
        "visual: DG-SCT",
        "audio: adapters removed",
        "audio: DG-SCT",
    }
    for panel in scores.values():
        assert panel["num_points"] == 10 * n
        assert panel["background_index"] == len(ws.cache.class_names)
        for key in ("silhouette", "silhouette_tsne"):
            assert panel[key] is None or -1.0 <= panel[key] <= 1.0
    assert temp_files(fig.parent) == []
    result = invoke("visualize", "tsne", "-c", ws.run, "-d", ws.data, "--out", fig, "--modality", "sound")
    assert_clean_error(result, "--modality must be visual, audio or both")


@pytest.mark.slow
def test_wrong_split_name_lists_the_available_splits(ws):
    for command in (["eval"], ["extract", "--out", ws.root / "x.npz"]):
        result = invoke(*command, "--checkpoint", ws.run, "--data", ws.data, "--split", "validation")
        assert_clean_error(result, "unknown split 'validation'", "available splits: 'train', 'val', 'test'")


def run_cli(*args, env: dict[str, str] | None = None, cwd: Path | None = None):
    """``python -m dgsct_cli`` in a subprocess: rich decides on a live display at start-up."""
    return subprocess.run(
        [sys.executable, "-m", "dgsct_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_quiet_hides_progress_bars(ws):
    args = ("eval", "--checkpoint", ws.run, "--data", ws.data, "--split", "val")
    loud = run_cli(*args, env=FORCE_TTY, cwd=ws.root)
    assert loud.returncode == 0, loud.stderr
    assert PROGRESS_CHARS in loud.stderr and "eval val" in loud.stderr
    quiet = run_cli("--quiet", *args, env=FORCE_TTY, cwd=ws.root)
    assert quiet.returncode == 0, quiet.stderr
    assert PROGRESS_CHARS not in quiet.stderr and "eval val" not in quiet.stderr
    assert "AVE val:" in quiet.stdout and "accuracy" in quiet.stdout  # results are still printed


@pytest.mark.slow
def test_quiet_train_on_missing_tiny_data_shows_no_progress(ws):
    """A tiny recipe prepares its synthetic data on the fly; --quiet hides that progress too."""
    data, run = ws.root / "auto-data", ws.root / "auto-run"
    args = (
        "train",
        "-r",
        "ave-tiny",
        "-d",
        data,
        "--synthetic",
        "-o",
        run,
        "train.epochs=1",
        "data.synthetic_videos=6",
    )
    result = run_cli("--quiet", *args, env=FORCE_TTY, cwd=ws.root)
    assert result.returncode == 0, result.stderr
    assert (data / "manifest.json").is_file() and (run / "last.safetensors").is_file()
    assert "done: 1 epoch," in result.stdout
    assert "decoding AVE videos" not in result.stderr, result.stderr[:400]
    assert PROGRESS_CHARS not in result.stderr, result.stderr[:400]


@pytest.mark.slow
def test_outputs_are_readable_like_ordinary_files(ws):
    """Atomic writes must not leave outputs 0600: checkpoints and caches are shared files."""
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    out = ws.root / "perm.json"
    ok("eval", "-c", ws.run, "-d", ws.data, "--json", out)
    files = [
        ws.run / "best.safetensors",
        ws.run / "last.safetensors",
        ws.run / "best.json",
        ws.run / "recipe.yaml",
        ws.run / "metrics.jsonl",
        ws.run / "trainer_state.pt",
        ws.data / "manifest.json",
        out,
    ]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {p.name: oct(expected) for p in files}


# -- release checkpoints ------------------------------------------------------------------------------

ADAPTER_LISTS = (
    "audio_adapter_blocks_p1",
    "vis_adapter_blocks_p1",
    "audio_adapter_blocks_p2",
    "vis_adapter_blocks_p2",
)


def _previous_stage_downsample(key: str) -> str:
    """timm's layout (merge at the start of stage i) -> the release's (end of stage i-1)."""
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    return f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key


def to_release_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our AVE state dict -> the DG-SCT release's key layout (inverse of map_release_state_dict)."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder.visual."):
            out["swin." + _previous_stage_downsample(key[len("encoder.visual.") :])] = value
        elif key.startswith("encoder.audio."):
            out["htsat." + _previous_stage_downsample(key[len("encoder.audio.") :])] = value
        elif key.startswith("encoder.") and key.split(".")[1] in ADAPTER_LISTS:
            out[key[len("encoder.") :]] = value
        elif key.startswith("head."):
            out[key[len("head.") :]] = value
        else:
            raise AssertionError(f"no release name for {key}")
    return out


@pytest.fixture(scope="module")
def release_model():
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import create_model

    torch.manual_seed(123)
    model = create_model("ave", load_recipe("ave-tiny").model, load_encoder_weights=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.head.parameters():  # a head that does not predict one class
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def test_release_layout_inversion_maps_back_exactly(release_model):
    from dgsct_cli.convert import map_release_state_dict
    from dgsct_cli.tasks.ave import AVE

    own = release_model.state_dict()
    release = to_release_layout(own)
    assert "CMBS.localize_module.classifier.weight" in release
    assert "swin.layers.0.downsample.reduction.weight" in release
    assert "htsat.layers.0.downsample.norm.weight" in release
    mapped, dropped = map_release_state_dict(release, release_model, AVE.release.unused_keys)
    assert dropped == [] and set(mapped) == set(own)
    assert all(torch.equal(mapped[k], own[k]) for k in own)


@pytest.mark.slow
def test_eval_detects_and_runs_a_release_checkpoint(ws, release_model):
    from dgsct_cli.evaluate import evaluate
    from dgsct_cli.tasks.ave import AVE

    release = to_release_layout(release_model.state_dict())
    # Keys of modules the release builds but never runs ride along, as in the published files.
    release["adapter_token_downsampler.0.weight"] = torch.zeros(4, 4)
    release["CMBS.AVInter.self_attn.in_proj_weight"] = torch.zeros(6, 2)
    path = ws.root / "release.pt"
    torch.save(release, path)

    out = ws.root / "release.json"
    ok("eval", "--checkpoint", path, "--recipe", "ave-tiny", "--data", ws.data, "--json", out)
    metrics = json.loads(out.read_text())
    assert metrics["checkpoint_kind"] == "release" and metrics["task"] == "ave"
    assert metrics["checkpoint"] == str(path)
    n = len(ws.cache.split_indices("test"))
    assert metrics["num_samples"] == n and metrics["num_segments"] == 10 * n

    # Same numbers as evaluating the model the file was made from.
    expected = evaluate(release_model, _test_split(ws), AVE, torch.device("cpu"), 8, 0, "fp32", None, False)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])

    # A file that is neither ours nor a release checkpoint is a clean error.
    junk = ws.root / "junk.pt"
    torch.save({"a.weight": torch.zeros(2)}, junk)
    result = invoke("eval", "--checkpoint", junk, "--recipe", "ave-tiny", "--data", ws.data)
    assert_clean_error(result, "neither a dgsct checkpoint nor a recognised DG-SCT release checkpoint")


@pytest.mark.slow
def test_convert_writes_our_checkpoint_with_the_same_predictions(ws, release_model):
    from safetensors import safe_open

    path = ws.root / "release-for-convert.pt"
    torch.save(to_release_layout(release_model.state_dict()), path)
    converted = ws.root / "converted.safetensors"
    ok("convert", "ave", path, "--out", converted, "--recipe", "ave-tiny")
    with safe_open(str(converted), framework="pt") as f:
        meta = f.metadata()
    assert meta["task"] == "ave" and meta["contents"] == "full"

    a, b = ws.root / "a.json", ws.root / "b.json"
    ok("eval", "--checkpoint", path, "--recipe", "ave-tiny", "--data", ws.data, "--json", a)
    ok("eval", "--checkpoint", converted, "--data", ws.data, "--json", b)
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert second["checkpoint_kind"] == "dgsct"
    assert first["accuracy"] == second["accuracy"]
    assert first["per_class_accuracy"] == second["per_class_accuracy"]

    result = invoke("convert", "avvp", path, "--out", ws.root / "x.safetensors")
    assert_clean_error(result, "this is an AVE release checkpoint, expected AVVP")
