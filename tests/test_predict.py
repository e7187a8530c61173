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
        assert set(summary) == {
            "clip",
            "task",
            "duration",
            "windows",
            "segments",
            "events",
            "audio_track",
            "notes",
        }
        for s in summary["segments"]:
            assert set(s) == {
                "start",
                "end",
                "frame_time",
                "audio",
                "label",
                "event_probability",
                "top_classes",
            }
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
        assert set(summary) == {
            "clip", "task", "duration", "windows", "segments", "video_probabilities", "events", "audio_track", "notes"
        }  # fmt: skip
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
        assert set(summary) == {
            "clip",
            "task",
            "duration",
            "windows",
            "mask_size",
            "segments",
            "audio_track",
            "notes",
        }
        for s in summary["segments"]:
            assert set(s) == {"start", "end", "frame_time", "audio", "sounding_area", "box"}
            assert 0 <= s["sounding_area"] <= 1
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
    assert set(summary) == {
        "clip", "task", "duration", "question", "question_words", "answer", "top_answers", "segments", "audio_track",
        "notes",
    }  # fmt: skip
    assert len(summary["segments"]) == 10 and summary["audio_track"] and summary["notes"] == []
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


# -- what each segment saw, clips without audio, pictures that tell the truth ---------------------------


def _odd_clip(path: Path, frames: int, fps: int, width: int, audio_seconds: float | None) -> Path:
    """A clip of ``frames`` frames at ``fps`` (``width`` x 32 pixels), with ``audio_seconds`` of a
    tone or no audio track at all (None)."""
    from dgsct_cli.data.video import write_mp4

    rng = np.random.default_rng(3)
    video = rng.integers(0, 255, (frames, 32, width, 3), dtype=np.uint8)
    audio = None
    if audio_seconds is not None:
        t = np.arange(int(audio_seconds * 32000)) / 32000
        audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_mp4(path, video, fps, audio, 32000)
    return path


def test_each_segment_says_which_frame_and_audio_it_got(tmp_path):
    """A 2.5-s clip in a 10-s window: segment k's frame is the one spread over the clip (its own
    time), its audio the clip's seconds k..k+1 read around the end (tiling); a long clip's second s
    is frame ~s+0.5 and audio s..s+1."""
    from dgsct_cli.data.video import decode_windows
    from dgsct_cli.tasks.base import DataInfo, PredictContext
    from dgsct_cli.viz.timeline import frame_strip

    clip = _odd_clip(tmp_path / "short.mp4", 10, 4, 64, 2.5)
    windows, duration = decode_windows(clip, 10, 32, 32000)
    ctx = PredictContext(clip, windows, duration, DataInfo("ave", ["a"], 1))
    assert duration == 2.5 and ctx.tiled and not ctx.silent and len(ctx.notes()) == 1
    seen = ctx.sources(10)
    # Frames spread evenly over the 10 frames: indices round(linspace(0, 9, 10)) at 4 fps.
    assert [s["frame_time"] for s in seen] == [i / 4 for i in range(10)]
    assert seen[0]["audio"] == [[0.0, 1.0]] and seen[1]["audio"] == [[1.0, 2.0]]
    (a0, a1), (b0, b1) = seen[2]["audio"]  # 2.0 s to the end of the clip's audio, then from 0
    assert a0 == 2.0 and b0 == 0.0 and (a1 - a0) + (b1 - b0) == pytest.approx(1.0, abs=1e-3)
    assert a1 == pytest.approx(2.5, abs=0.05)  # the audio track's own length (AAC pads a little)
    # The picture's strip: every frame with its own time (no "2 s" label on a frame from 0.5 s).
    strip = frame_strip(windows)
    assert [t for t, _ in strip] == [i / 4 for i in range(10)]
    assert windows[0].aspect == 2.0  # 64 x 32 source frames
    long_clip = _odd_clip(tmp_path / "long.mp4", 4 * 25, 4, 32, 25)
    windows, duration = decode_windows(long_clip, 10, 32, 32000)
    ctx = PredictContext(long_clip, windows, duration, DataInfo("ave", ["a"], 1))
    seen = ctx.sources(25)
    assert not ctx.tiled and ctx.notes() == []
    assert [s["frame_time"] for s in seen] == [s + 0.5 for s in range(25)]  # frame 4s+2 at 4 fps
    assert [s["audio"] for s in seen] == [[[float(s), float(s + 1)]] for s in range(25)]
    (later,), _ = decode_windows(long_clip, 10, 32, 32000, start_at=12)
    assert later.start == 12 and later.frame_times[0] == 12.5 and later.audio_spans[0] == [(12.0, 13.0)]
    (last,), _ = decode_windows(long_clip, 10, 32, 32000, start_at=20)
    assert last.start == 15  # moved back to end at the clip's end


def test_a_clip_without_audio_is_heard_as_silence(clips, tmp_path):
    """predict and visualize attention run a clip that has no audio track with silence, and say so
    in the table, the JSON and the picture's caption."""
    ckpt = _checkpoint("ave", tmp_path, 4)
    mute = _odd_clip(tmp_path / "mute.mp4", 12, 4, 48, None)
    out = tmp_path / "out"
    result = ok("--quiet", "predict", mute, "--checkpoint", ckpt, "--out", out)
    assert "skipped" not in result.stderr
    assert "note: the clip has no audio track: the model heard silence" in result.stdout
    assert "silence" in result.stdout  # the table's audio column
    summary = json.loads((out / "mute.json").read_text())
    assert summary["audio_track"] is False and any("silence" in n for n in summary["notes"])
    assert all(s["audio"] == [] for s in summary["segments"])
    _check_png(out / "mute.png")
    ok("--quiet", "visualize", "attention", "--checkpoint", ckpt, mute, "--out", tmp_path / "att")
    assert "no audio track" in (tmp_path / "att" / "index.html").read_text()


def test_predict_picture_places_each_value_at_its_time(clips, tmp_path, monkeypatch):
    """The p(event) curve of a short clip is drawn at its segments' places on the clip's own time
    axis (not at 0.5 .. 9.5 on an axis cut at the clip's length); the frames keep their aspect."""
    import dgsct_cli.viz.timeline as timeline

    calls = {}
    draw = timeline.draw_tracks

    def spy(path, title, strip, end, tracks, colours, curves=(), aspect=1.0, notes=(), background_label=""):
        calls.update(end=end, curves=curves, strip=strip, aspect=aspect, notes=notes, legend=background_label)
        return draw(path, title, strip, end, tracks, colours, curves, aspect, notes, background_label)

    monkeypatch.setattr(timeline, "draw_tracks", spy)
    ckpt = _checkpoint("ave", tmp_path, 4)
    short = _odd_clip(tmp_path / "wide.mp4", 10, 4, 64, 2.5)
    ok("--quiet", "predict", short, "--checkpoint", ckpt, "--out", tmp_path / "out")
    ((label, xs, values),) = calls["curves"]
    assert calls["end"] == 2.5 and len(xs) == 10 and 0 < min(xs) and max(xs) < 2.5
    assert xs == sorted(xs) and calls["aspect"] == 2.0 and calls["notes"] and "background" in calls["legend"]
    assert [t for t, _ in calls["strip"]] == [i / 4 for i in range(10)]
    _check_png(tmp_path / "out" / "wide.png")


def test_an_avs_box_of_a_few_pixels_prints_as_none():
    from dgsct_cli.tasks.avs import box_text

    assert box_text(None, 0.0, [224, 224]) == "none"
    tiny = [223 / 224, 223 / 224, 1.0, 1.0]  # one pixel in the corner: "1.00, 1.00, 1.00, 1.00" before
    assert box_text(tiny, 1 / 224**2, [224, 224]) == "none (1 pixel of the mask)"
    assert box_text([0.1, 0.2, 0.5, 0.75], 0.2, [224, 224]) == "0.10, 0.20, 0.50, 0.75"


def test_visualize_attention_chooses_windows_and_says_which(clips, tmp_path):
    ckpt = _checkpoint("ave", tmp_path, 4)
    out = tmp_path / "att"
    ok("--quiet", "visualize", "attention", "--checkpoint", ckpt, clips["long"], "--start", 12, "--out", out)
    _check_png(out / "long-12s.png")
    page = (out / "index.html").read_text()
    assert (
        "long.mp4: 12-22 s of 25 s" in page and str(clips["long"].parent) not in page
    )  # the name, not the path
    every = tmp_path / "every"
    ok("--quiet", "visualize", "attention", "--checkpoint", ckpt, clips["long"], clips["short"], "--all-windows",
       "--out", every)  # fmt: skip
    assert sorted(p.name for p in every.glob("*.png")) == [
        "long-0s.png",
        "long-10s.png",
        "long-15s.png",
        "short.png",
    ]
    assert (
        "short.mp4: the whole clip, 0-3 s; the clip (3.00 s) is shorter" in (every / "index.html").read_text()
    )
    both = CliRunner().invoke(
        app, ["visualize", "attention", "-c", str(ckpt), str(clips["long"]), "--start", "3", "--all-windows",
              "--out", str(out)],
    )  # fmt: skip
    assert both.exit_code == 1 and "not both" in both.stderr
