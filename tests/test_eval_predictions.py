"""``dgsct eval --predictions F.jsonl``: one JSON line per sample, the prediction beside the ground
truth, for every task family (tiny random models on small synthetic sets), agreeing with the
split's metrics where a row carries what they count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import synthetic_cache
from test_fewshot_files import one_thread  # noqa: F401
from typer.testing import CliRunner

from dgsct_cli.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")


def ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def _checkpoint(recipe_name: str, cache: Path, folder: Path, overrides: list[str] = ()) -> Path:
    """A tiny random model of the recipe, sized by the data, in our checkpoint format."""
    from dgsct_cli.checkpoint import save_checkpoint
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import build_model, data_info, ensure_files
    from dgsct_cli.tasks.base import get_task

    recipe = load_recipe(recipe_name, list(overrides))
    ensure_files(recipe)
    info = data_info(recipe, cache)
    recipe.model.head = get_task(recipe.task).resolve_head(recipe.model.head, info)
    torch.manual_seed(0)
    model = build_model(recipe, info)
    recipe.model = model.cfg
    return save_checkpoint(model, recipe, folder / f"{recipe_name}.safetensors")


def _eval(ckpt: Path, cache: Path, split: str, folder: Path) -> tuple[list[dict], dict]:
    rows_file, metrics_file = folder / "rows.jsonl", folder / "metrics.json"
    result = ok("--quiet", "eval", "-c", ckpt, "-d", cache, "-s", split, "--json", metrics_file,
                "--predictions", rows_file)  # fmt: skip
    lines = rows_file.read_text().splitlines()
    assert f"wrote {len(lines)} per-sample predictions to {rows_file}" in " ".join(result.stdout.split())
    return [json.loads(line) for line in lines], json.loads(metrics_file.read_text())


def _split_ids(cache: Path, split: str) -> list[str]:
    manifest = json.loads((cache / "manifest.json").read_text())
    return [manifest["samples"][i]["id"] for i in manifest["splits"][split]]


def test_ave_rows_hold_each_segment_and_add_up_to_the_accuracy(ave_cache, tmp_path):
    cache = ave_cache
    ckpt = _checkpoint("ave-tiny", cache, tmp_path)
    rows, metrics = _eval(ckpt, cache, "test", tmp_path)
    assert [r["id"] for r in rows] == _split_ids(cache, "test")
    names = set(json.loads((cache / "manifest.json").read_text())["class_names"]) | {"background"}
    for r in rows:
        assert set(r) == {"id", "event_class", "event_class_probability", "correct_segments", "segments"}
        assert len(r["segments"]) == 10 and r["event_class"] in names
        for s in r["segments"]:
            assert (
                set(s) == {"predicted", "event_probability", "true"} and {s["predicted"], s["true"]} <= names
            )
            assert (s["predicted"] != "background") == (s["event_probability"] > 0.5)
        assert r["correct_segments"] == sum(s["predicted"] == s["true"] for s in r["segments"])
    correct = sum(r["correct_segments"] for r in rows)
    assert 100 * correct / (10 * len(rows)) == pytest.approx(metrics["accuracy"])


def test_avvp_rows_parse_each_segment_with_its_ground_truth(tmp_path):
    cache = synthetic_cache("avvp", tmp_path / "avvp", videos=12, image_size=64)
    ckpt = _checkpoint("avvp-tiny", cache, tmp_path)
    rows, _ = _eval(ckpt, cache, "test", tmp_path)
    assert [r["id"] for r in rows] == _split_ids(cache, "test")
    for r in rows:
        assert set(r) == {"id", "video", "true_video", "segments"} and r["true_video"]
        kept = {name for name, _ in r["video"]}
        assert all(p >= 0.5 for _, p in r["video"])
        for s in r["segments"]:
            assert set(s) == {"audio", "visual", "true_audio", "true_visual"}
            for m in ("audio", "visual"):
                assert all(name in kept and p >= 0.5 for name, p in s[m])  # gated by the video head


def test_fewshot_rows_hold_video_and_segment_classes(tmp_path):
    files = tmp_path / "w"
    overrides = [
        f"model.visual.weights={files / 'clip.pt'}",
        f"model.audio.weights={files / 'clap.pt'}",
        f"model.text.tokenizer={files / 'tok'}",
    ]
    cache = synthetic_cache("fewshot-ave", tmp_path / "ave", videos=8, image_size=32)
    ckpt = _checkpoint("fewshot-ave-tiny", cache, tmp_path, overrides)
    rows, metrics = _eval(ckpt, cache, "test", tmp_path)
    assert [r["id"] for r in rows] == _split_ids(cache, "test")
    correct = counted = 0
    for r in rows:
        assert set(r) == {"id", "video", "true_video", "segments"} and len(r["segments"]) == 10
        for s in r["segments"]:
            assert set(s) == {"predicted", "probability", "true"} and 0 < s["probability"] <= 1
            correct += s["predicted"] == s["true"]
            counted += 1
    assert metrics["metric"] == "segment" and 100 * correct / counted == pytest.approx(metrics["accuracy"])


def test_avs_rows_hold_each_frames_iou(tmp_path):
    cache = synthetic_cache("avs-s4", tmp_path / "avs", videos=6)
    ckpt = _checkpoint("avs-s4-tiny", cache, tmp_path)
    rows, metrics = _eval(ckpt, cache, "test", tmp_path)
    assert [r["id"] for r in rows] == _split_ids(cache, "test")
    for r in rows:
        assert set(r) == {"id", "miou", "frames"} and len(r["frames"]) == 5
        for f in r["frames"]:
            assert set(f) == {"iou", "predicted_area", "true_area"} and 0 <= f["iou"] <= 1
        assert r["miou"] == pytest.approx(sum(f["iou"] for f in r["frames"]) / 5, abs=1e-3)
    # The split's M_J is the mean of the frames' IoU (batches of whole videos).
    frames = [f["iou"] for r in rows for f in r["frames"]]
    assert 100 * sum(frames) / len(frames) == pytest.approx(metrics["miou"], abs=0.05)


def test_avqa_rows_hold_the_answer_and_its_probability(tmp_path):
    cache = synthetic_cache("avqa", tmp_path / "avqa", videos=6)
    ckpt = _checkpoint("avqa-tiny", cache, tmp_path, ["train.init_from=null"])
    rows, metrics = _eval(ckpt, cache, "test", tmp_path)
    assert [r["id"] for r in rows] == _split_ids(cache, "test")
    for r in rows:
        assert set(r) == {
            "id", "question_id", "question", "question_type", "answer", "probability", "true_answer",
            "true_answer_probability", "correct",
        }  # fmt: skip
        assert (
            r["correct"] == (r["answer"] == r["true_answer"])
            and r["probability"] >= r["true_answer_probability"]
        )
        assert r["question"] and "<pad>" not in r["question"]
    assert 100 * sum(r["correct"] for r in rows) / len(rows) == pytest.approx(metrics["accuracy"])
    # Stage 1 (grounding): per (video, second), p(match) with its own frame and with another's.
    grounding = _checkpoint("avqa-grounding-tiny", cache, tmp_path)
    rows, metrics = _eval(grounding, cache, "train", tmp_path)  # the test split has one video
    assert rows and all(r["id"].count("/") == 1 for r in rows)
    assert all(
        set(r) == {"id", "own_frame_match_probability", "other_frame_match_probability", "correct"}
        for r in rows
    )
    pairs = [c for r in rows for c in r["correct"]]
    assert 100 * sum(pairs) / len(pairs) == pytest.approx(metrics["accuracy"])
