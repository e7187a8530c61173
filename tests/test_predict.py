"""``dgsct predict`` and ``dgsct visualize attention`` on the user's own clips, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from typer.testing import CliRunner

from dgsct_cli.cli.app import app


def ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def _clip(path: Path, seconds: int, seed: int) -> Path:
    from dgsct_cli.data.synthetic import _render_audio, _render_frames
    from dgsct_cli.data.video import write_mp4

    rng = np.random.default_rng(seed)
    seg = [(t // 4) % 4 if t % 4 < 3 else -1 for t in range(seconds)]
    write_mp4(path, _render_frames(seg, 4, 64, 4, rng), 4, _render_audio(seg, 32000, rng), 32000)
    return path


def _checkpoint(task: str, folder: Path, num_classes: int) -> Path:
    """A tiny random model in our checkpoint format, naming the classes it knows."""
    from dgsct_cli.checkpoint import save_checkpoint
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import create_model

    torch.manual_seed(0)
    recipe = load_recipe(f"{task}-tiny")
    cfg = tiny_model_config(task)
    cfg.head.num_classes = num_classes
    model = create_model(task, cfg)
    recipe.model = model.cfg
    names = [f"sound {i}" for i in range(num_classes)]
    data = {"dataset": task, "class_names": names, "background_index": num_classes if task == "ave" else None}
    path = folder / f"{task}.safetensors"
    save_checkpoint(model, recipe, path, extra={"data": json.dumps(data)})
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    broken = folder / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00 ftypisom not really a video")
    return {
        "short": _clip(folder / "short.mp4", 3, 0),
        "long": _clip(folder / "long.mp4", 25, 1),
        "broken": broken,
    }


def _check_png(path: Path) -> None:
    assert path.read_bytes().startswith(b"\x89PNG"), path


def test_predict_ave_writes_table_json_and_png_for_short_and_long_clips(clips, tmp_path):
    ckpt = _checkpoint("ave", tmp_path, 4)
    out, all_json = tmp_path / "out", tmp_path / "all.json"
    args = ("predict", clips["short"], clips["long"], clips["broken"], "--checkpoint", ckpt)
    result = ok("--quiet", *args, "--out", out, "--json", all_json, "--stride", 5)
    assert "AVE timeline" in result.stdout and "skipped" in result.stderr and "broken.mp4" in result.stderr
    payload = json.loads(all_json.read_text())
    assert payload["task"] == "ave" and len(payload["clips"]) == 3
    short, long, broken = payload["clips"]
    assert broken["error"].startswith("corrupt")
    # A 3-s clip is one tiled window, reported as its 10 segments over 3 s.
    assert short["windows"] == [0] and len(short["segments"]) == 10 and short["segments"][-1]["end"] == 3
    # A 25-s clip: windows every 5 s up to the end, one entry per second.
    assert long["windows"] == [0, 5, 10, 15] and [s["start"] for s in long["segments"]] == list(range(25))
    for summary in (short, long):
        assert set(summary) == {"clip", "task", "duration", "windows", "segments", "events"}
        for s in summary["segments"]:
            assert set(s) == {"start", "end", "label", "event_probability", "top_classes"}
            assert s["label"] in ("background", *[f"sound {i}" for i in range(4)])
            assert 0 <= s["event_probability"] <= 1 and len(s["top_classes"]) == 3
        for e in summary["events"]:
            assert set(e) == {"label", "start", "end"} and e["label"] != "background"
        _check_png(out / f"{Path(summary['clip']).stem}.png")
        assert json.loads((out / f"{Path(summary['clip']).stem}.json").read_text()) == summary


@pytest.mark.slow
def test_predict_avvp_parses_events_with_r2plus1d_features(clips, tmp_path):
    from torchvision.models.video import r2plus1d_18

    ckpt = _checkpoint("avvp", tmp_path, 25)
    weights = tmp_path / "r2plus1d_18.pth"
    torch.manual_seed(0)
    torch.save(r2plus1d_18().state_dict(), weights)
    missing = CliRunner().invoke(app, ["predict", str(clips["short"]), "--checkpoint", str(ckpt)])
    assert missing.exit_code == 1 and "--r2plus1d-weights" in missing.stderr
    out = tmp_path / "out"
    result = ok(
        "--quiet",
        "predict",
        clips["short"],
        clips["long"],
        "--checkpoint",
        ckpt,
        "--r2plus1d-weights",
        weights,
        "--out",
        out,
    )
    assert "AVVP parsing" in result.stdout
    for name in ("short", "long"):
        summary = json.loads((out / f"{name}.json").read_text())
        assert set(summary) == {"clip", "task", "duration", "windows", "video_probabilities", "events"}
        assert len(summary["video_probabilities"]) == 25
        for e in summary["events"]:
            assert set(e) == {"modality", "class", "onset", "offset"}
            assert e["modality"] in ("audio", "visual", "audio-visual") and e["offset"] > e["onset"]
        _check_png(out / f"{name}.png")


def test_attention_maps_come_from_the_adapters(clips, tmp_path, monkeypatch):
    from dgsct_cli.checkpoint import load_checkpoint
    from dgsct_cli.data.video import decode_windows
    from dgsct_cli.predict import window_batch
    from dgsct_cli.viz.attention import attention_maps

    model, recipe, _ = load_checkpoint(_checkpoint("ave", tmp_path, 4))
    windows, _ = decode_windows(clips["long"], 10, 64, 32000)
    frames, audio = window_batch(model, windows[:1], recipe.data)
    maps = attention_maps(model, frames, audio)
    assert maps["visual"].shape == (10, 64, 64) and maps["plain"].shape == (10, 64, 64)
    assert maps["audio"].shape == maps["log_mel"].shape and maps["audio"].shape[1] == 16
    # The visual heat map is the last visual adapter's map: replace it and the picture changes.
    last = model.encoder.vis_adapter_blocks_p2[-1]
    forward = last.forward

    def flat_map(x, y):
        out, spatial = forward(x, y)
        ramp = torch.linspace(0, 1, spatial.shape[-1]).expand_as(spatial)
        return out, ramp

    monkeypatch.setattr(last, "forward", flat_map)
    changed = attention_maps(model, frames, audio)
    assert not np.allclose(changed["visual"], maps["visual"])
    np.testing.assert_allclose(changed["plain"], maps["plain"])  # the frozen encoder's map does not move


def test_visualize_attention_writes_pictures_and_an_index(clips, tmp_path):
    ckpt = _checkpoint("ave", tmp_path, 4)
    out = tmp_path / "att"
    ok(
        "--quiet",
        "visualize",
        "attention",
        "--checkpoint",
        ckpt,
        clips["short"],
        clips["broken"],
        "--out",
        out,
    )
    _check_png(out / "short.png")
    assert 'src="short.png"' in (out / "index.html").read_text()


def _task_checkpoint(task: str, recipe: str, folder: Path, data: dict) -> Path:
    """A tiny random model of ``task`` in our checkpoint format with the given data metadata."""
    from dgsct_cli.checkpoint import save_checkpoint
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import create_model

    torch.manual_seed(0)
    r = load_recipe(recipe)
    model = create_model(task, r.model)
    r.model = model.cfg
    path = folder / f"{task}.safetensors"
    save_checkpoint(model, r, path, extra={"data": json.dumps(data)})
    return path


def test_decode_windows_follows_the_task_frame_rule(clips):
    """A long clip's windows take each window's frames by the rule, counted from the window's start
    (AVSBench: the last of 16 samples per second, frame 4l+3 at 4 fps)."""
    import decord

    from dgsct_cli.data.video import decode_windows, read_frames, resize_frames

    windows, duration = decode_windows(clips["long"], 5, 32, 32000, frame_rule="last_of_sixteen")
    assert duration == 25 and [w.start for w in windows] == [0, 5, 10, 15, 20]
    reader = decord.VideoReader(str(clips["long"]))
    for w in windows:
        expected = [4 * (w.start + second) + 3 for second in range(5)]
        assert np.array_equal(w.frames, resize_frames(read_frames(reader, expected), 32))
        assert w.audio.shape == (5 * 32000,)
    # Read whole (one sample per video, AVQA): one window over the clip, as prepare reads it.
    whole, _ = decode_windows(clips["long"], 10, 32, 32000, frame_rule="linspace_1fps", whole_clip=True)
    assert len(whole) == 1 and whole[0].frames.shape == (10, 32, 32, 3)


def test_predict_avs_writes_masks_as_png_and_mp4(clips, tmp_path):
    import decord

    data = {"dataset": "avs-s4", "class_names": ["sounding object"], "background_index": None}
    ckpt = _task_checkpoint("avs-s4", "avs-s4-tiny", tmp_path, data)
    out, all_json = tmp_path / "out", tmp_path / "all.json"
    args = ("predict", clips["short"], clips["long"], clips["broken"], "--checkpoint", ckpt)
    result = ok("--quiet", *args, "--out", out, "--json", all_json)
    assert "sounding objects" in result.stdout and "broken.mp4" in result.stderr
    short, long, broken = json.loads(all_json.read_text())["clips"]
    assert broken["error"].startswith("corrupt")
    # A 3-s clip is one window of 5 segments over 3 s; a 25-s clip is five 5-s windows, per second.
    assert short["windows"] == [0] and len(short["segments"]) == 5 and short["segments"][-1]["end"] == 3
    assert long["windows"] == [0, 5, 10, 15, 20] and [s["start"] for s in long["segments"]] == list(range(25))
    for summary in (short, long):
        assert set(summary) == {"clip", "task", "duration", "windows", "mask_size", "segments"}
        for s in summary["segments"]:
            assert set(s) == {"start", "end", "sounding_area", "box"} and 0 <= s["sounding_area"] <= 1
            assert s["box"] is None or (
                0 <= s["box"][0] < s["box"][2] <= 1 and 0 <= s["box"][1] < s["box"][3] <= 1
            )
        stem = Path(summary["clip"]).stem
        _check_png(out / f"{stem}.png")
        assert json.loads((out / f"{stem}.json").read_text()) == summary
    asked = CliRunner().invoke(
        app, ["predict", str(clips["short"]), "--checkpoint", str(ckpt), "--question", "Why?"]
    )
    assert asked.exit_code == 1 and "--question: avs-s4 models do not read it" in asked.stderr
    # The video shows every second's mask for a second (4 frames per second).
    assert len(decord.VideoReader(str(out / "long.mp4"))) == 25 * 4


def test_predict_avqa_answers_the_question(clips, tmp_path):
    from dgsct_cli.data.avqa import ANSWER_VOCAB, QUESTION_VOCAB

    data = {
        "dataset": "avqa",
        "class_names": list(ANSWER_VOCAB),
        "background_index": None,
        "extra": {"question_vocab": list(QUESTION_VOCAB)},
    }
    ckpt = _task_checkpoint("avqa", "avqa-tiny", tmp_path, data)
    out = tmp_path / "out"
    question = "Is the acoustic guitar louder than the violin?"
    result = ok(
        "--quiet", "predict", clips["long"], "--checkpoint", ckpt, "--question", question, "--out", out
    )
    assert question in result.stdout.replace("\n", "")
    summary = json.loads((out / "long.json").read_text())
    assert set(summary) == {"clip", "task", "duration", "question", "question_words", "answer", "top_answers"}
    assert summary["question_words"] == ["Is", "the", "acoustic_guitar", "louder", "than", "the", "violin"]
    probs = [p for _, p in summary["top_answers"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-3
    assert summary["answer"] == summary["top_answers"][0][0] and summary["answer"] in ANSWER_VOCAB
    _check_png(out / "long.png")
    # Without a question, or with a word the model has no id for: one line, exit 1.
    missing = CliRunner().invoke(app, ["predict", str(clips["short"]), "--checkpoint", str(ckpt)])
    assert missing.exit_code == 1 and "--question" in missing.stderr
    unknown = CliRunner().invoke(
        app, ["predict", str(clips["short"]), "--checkpoint", str(ckpt), "--question", "Is the chello loud?"]
    )
    assert unknown.exit_code == 1 and "'chello' (closest: cello)" in unknown.stderr
    # An option the task does not read is refused, not ignored.
    stride = CliRunner().invoke(
        app,
        ["predict", str(clips["short"]), "--checkpoint", str(ckpt), "--question", question, "--stride", "2"],
    )
    assert stride.exit_code == 1 and "--stride: avqa models read the whole clip" in stride.stderr
