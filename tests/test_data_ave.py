"""AVE data pipeline: annotation parsing, decoding, prepare (skip/resume/fail) and the cache dataset."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGENET
from rich.console import Console
from torch.utils.data import DataLoader

from dgsct_cli.data.ave import (
    ave_sample_ids,
    prepare_ave,
    read_ave_annotations,
    segment_labels,
    summary_table,
)
from dgsct_cli.data.datasets import SegmentDataset
from dgsct_cli.data.manifest import TMP_PREFIX, PreparedCache, atomic_write_json
from dgsct_cli.data.synthetic import break_dataset, write_synthetic_ave
from dgsct_cli.data.video import DecodeError, decode_clip, frame_indices, tile_audio

REAL_AVE = Path(__file__).resolve().parent / "fixtures" / "data" / "ave"
SR = 32000


# --------------------------------------------------------------------------- annotations


def test_real_annotations_counts_and_class_order() -> None:
    class_names, splits = read_ave_annotations(REAL_AVE)
    assert len(class_names) == 28
    assert class_names[0] == "Church bell" and class_names[27] == "Mandolin"
    assert class_names == (REAL_AVE / "categories.txt").read_text().splitlines()
    assert {k: len(v) for k, v in splits.items()} == {"train": 3339, "val": 402, "test": 402}
    rows = [r for v in splits.values() for r in v]
    assert len(rows) == 4143

    # A sample is a line, not a video: 45 videos carry more than one line, each its own sample.
    per_video: dict[str, int] = {}
    for r in rows:
        per_video[r.video_id] = per_video.get(r.video_id, 0) + 1
    assert len(per_video) == 4097
    assert sum(1 for n in per_video.values() if n > 1) == 45
    ids = [i for v in ave_sample_ids(splits).values() for i in v]
    assert len(ids) == len(set(ids)) == 4143
    triple = [i for i in ids if i.startswith("0f_iTO5t3hU")]
    assert sorted(triple) == ["0f_iTO5t3hU_0_10", "0f_iTO5t3hU_0_10_2", "0f_iTO5t3hU_0_10_3"]

    row = next(r for r in splits["train"] if r.video_id == "MH3m4AwEcRY")
    assert (row.start, row.end) == (6, 8)
    assert segment_labels(row.start, row.end, 0, 28) == [28] * 6 + [0, 0, 28, 28]
    empty = next(r for r in splits["train"] if r.video_id == "VWi2ENBuTbw")  # a real 0..0 line
    assert segment_labels(empty.start, empty.end, 0, 28) == [28] * 10


def _write_annotations(root: Path, train_lines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    good = "Bark&abcdefghijk&good&0&10"
    (root / "Annotations.txt").write_text(f"Category&VideoID&Quality&StartTime&EndTime\n{good}\n")
    (root / "trainSet.txt").write_text("\n".join(train_lines) + "\n")
    (root / "valSet.txt").write_text(good + "\n")
    (root / "testSet.txt").write_text(good + "\n")


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("Bark&abcdefghijk&good&0", "expected 5 '&'-separated fields"),
        ("Bark&abcdefghijk&good&zero&10", "whole seconds"),
        ("Bark&abcdefghijk&good&0&11", "EndTime <= 10"),
        ("Bark&abcdefghijk&good&7&3", "StartTime <= EndTime"),
        ("&abcdefghijk&good&0&10", "empty Category"),
        ("Cow&abcdefghijk&good&0&10", "unknown category 'Cow'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    _write_annotations(tmp_path, ["Bark&abcdefghijk&good&0&10", bad_line])
    with pytest.raises(ValueError, match=r"trainSet\.txt:2: ") as info:
        read_ave_annotations(tmp_path)
    assert problem in str(info.value)


def test_missing_annotation_file_is_named(tmp_path: Path) -> None:
    _write_annotations(tmp_path, ["Bark&abcdefghijk&good&0&10"])
    (tmp_path / "valSet.txt").unlink()
    with pytest.raises(ValueError, match="missing valSet.txt"):
        read_ave_annotations(tmp_path)
    with pytest.raises(ValueError, match="missing valSet.txt"):
        prepare_ave(tmp_path, tmp_path / "cache", workers=1, progress=False)


# --------------------------------------------------------------------------- decoding


def test_frame_indices_and_tiling_rules() -> None:
    assert frame_indices(80, 8.0, 10).tolist() == [4, 12, 20, 28, 36, 44, 52, 60, 68, 76]
    assert frame_indices(300, 29.97, 10)[0] == 15  # nearest the middle of second 0
    assert frame_indices(250, 25.0, 10).max() <= 249
    # Shorter than 10 s: spread evenly over what there is.
    assert frame_indices(24, 8.0, 10).tolist() == np.round(np.linspace(0, 23, 10)).astype(int).tolist()
    wave = np.arange(5, dtype=np.float32)
    assert tile_audio(wave, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert tile_audio(wave, 3).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ave_raw")
    return write_synthetic_ave(root, num_videos=8, num_classes=2, image_size=64, seed=3)


def test_decode_clip_shapes_and_content(synthetic_root: Path, tmp_path: Path) -> None:
    _, splits = read_ave_annotations(synthetic_root)
    row = next(r for r in splits["train"] if r.category == "Church bell" and r.end - r.start >= 2)
    frames, audio = decode_clip(synthetic_root / "AVE" / f"{row.video_id}.mp4", image_size=48)
    assert frames.shape == (10, 48, 48, 3) and frames.dtype == np.uint8
    assert audio.shape == (10 * SR,) and audio.dtype == np.float32
    # Learnable content: the event shows a saturated picture and a 440 Hz tone (class 0).
    event = row.start
    assert frames[event].astype(float).std(axis=-1).mean() > 20  # coloured, not grey
    spectrum = np.abs(np.fft.rfft(audio[event * SR : (event + 1) * SR]))
    assert abs(int(spectrum.argmax()) - 440) <= 2

    # A clip shorter than 10 s still gives 10 frames and 10 s of (tiled) audio.
    short = write_synthetic_ave(tmp_path / "short", num_videos=3, num_classes=1, image_size=32, seconds=4)
    clip = next((short / "AVE").glob("*.mp4"))
    frames, audio = decode_clip(clip, image_size=32, sample_rate=16000)
    assert frames.shape == (10, 32, 32, 3) and audio.shape == (160000,)


def test_decode_errors_have_short_reasons(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(synthetic_root, root)
    a, b, c = sorted(p.stem for p in (root / "AVE").glob("*.mp4"))[:3]
    break_dataset(root, missing=[a], corrupt=[b], no_audio=[c])
    reasons = {}
    for vid in (a, b, c):
        with pytest.raises(DecodeError) as info:
            decode_clip(root / "AVE" / f"{vid}.mp4", image_size=32)
        assert isinstance(info.value, ValueError)
        reasons[vid] = info.value.reason
    assert reasons[a] == "missing"
    assert reasons[b].startswith("corrupt: ")
    assert reasons[c] == "no audio"


# --------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def broken(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A copy of the synthetic root with one missing (train), corrupt (val), audio-less (test) video."""
    root = tmp_path_factory.mktemp("ave_broken") / "raw"
    shutil.copytree(synthetic_root, root)
    _, splits = read_ave_annotations(root)
    counts: dict[str, int] = {}
    for rows in splits.values():
        for r in rows:
            counts[r.video_id] = counts.get(r.video_id, 0) + 1
    single = {s: [r.video_id for r in rows if counts[r.video_id] == 1] for s, rows in splits.items()}
    picks = {"missing": single["train"][0], "corrupt": single["val"][0], "no_audio": single["test"][0]}
    break_dataset(root, missing=[picks["missing"]], corrupt=[picks["corrupt"]], no_audio=[picks["no_audio"]])
    return {"root": str(root), **picks}


@pytest.fixture(scope="module")
def prepared(broken: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ave_cache")
    console = Console(file=io.StringIO(), width=120)
    summary = prepare_ave(broken["root"], out, workers=2, image_size=64, progress=True, console=console)
    return out, summary


def test_prepare_skips_and_reports_broken_videos(broken: dict[str, str], prepared) -> None:
    out, summary = prepared
    expected = {
        broken["missing"]: ("missing", ["train"]),
        broken["corrupt"]: ("corrupt: ", ["val"]),
        broken["no_audio"]: ("no audio", ["test"]),
    }
    got = {s.video_id: (s.reason, s.splits) for s in summary.skipped}
    assert set(got) == set(expected)
    for vid, (reason, splits) in expected.items():
        assert got[vid][0].startswith(reason) and got[vid][1] == splits

    report = json.loads((out / "prepare_report.json").read_text())
    assert {s["video_id"]: s["reason"] for s in report["skipped"]} == {k: v[0] for k, v in got.items()}
    assert report["splits"]["val"]["lost"] == 1 and report["videos"]["skipped"] == 3

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["dataset"] == "ave"
    assert manifest["class_names"] == ["Church bell", "Male speech, man speaking"]
    assert manifest["background_index"] == 2
    used = {manifest["samples"][i]["video_id"] for idx in manifest["splits"].values() for i in idx}
    assert used.isdisjoint(expected)
    assert {s["video_id"] for s in manifest["skipped"]} == set(expected)
    for split, idx in manifest["splits"].items():
        assert len(idx) == summary.split_usable[split] > 0
        assert all(manifest["samples"][i]["split"] == split for i in idx)
    # Each video decoded once even when two lines (samples) share it.
    assert summary.decoded == summary.videos - 3
    assert len(manifest["samples"]) > summary.decoded
    assert len({s["id"] for s in manifest["samples"]}) == len(manifest["samples"])

    text = io.StringIO()
    Console(file=text, width=160).print(summary_table(summary))
    for vid in expected:
        assert vid in text.getvalue()


def test_resume_decodes_only_what_is_missing(broken: dict[str, str], prepared, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(prepared[0], out)
    first = (out / "manifest.json").read_bytes()

    again = prepare_ave(broken["root"], out, workers=1, image_size=64, progress=False)
    assert again.decoded == 0 and again.reused == prepared[1].decoded
    assert (out / "manifest.json").read_bytes() == first

    # An interrupted run: one video's arrays never got written, and a temp file was left behind.
    vid = json.loads(first)["samples"][0]["video_id"]
    (out / "frames" / f"{vid}.npy").unlink()
    (out / "frames" / f"{TMP_PREFIX}{vid}.npy.x1y2").write_bytes(b"half a file")
    resumed = prepare_ave(broken["root"], out, workers=1, image_size=64, progress=False)
    assert resumed.decoded == 1 and resumed.reused == again.reused - 1
    assert (out / "frames" / f"{vid}.npy").is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert (out / "manifest.json").read_bytes() == first


@pytest.mark.parametrize("damage", ["missing", "corrupt"])  # found before / after decoding
def test_empty_split_fails_with_split_name(synthetic_root: Path, tmp_path: Path, damage: str) -> None:
    root = tmp_path / "raw"
    shutil.copytree(synthetic_root, root)
    _, splits = read_ave_annotations(root)
    test_only = {r.video_id for r in splits["test"]} - {
        r.video_id for s in ("train", "val") for r in splits[s]
    }
    break_dataset(root, **{damage: sorted(test_only)})
    with pytest.raises(ValueError, match=r"split 'test' has no usable videos \(2 skipped\)"):
        prepare_ave(root, tmp_path / "cache", workers=1, image_size=32, progress=False)
    assert (tmp_path / "cache" / "prepare_report.json").is_file()
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_cli_prepare_synthetic_and_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dgsct_cli.cli.prepare_cmd import prepare_app

    runner = CliRunner()
    out = tmp_path / "cache"
    args = ["ave", "--out", str(out), "--synthetic", "--videos", "4", "--image-size", "32", "--workers", "1"]
    result = runner.invoke(prepare_app, args)
    assert result.exit_code == 0, result.output
    assert (out / "raw" / "Annotations.txt").is_file() and (out / "manifest.json").is_file()
    assert PreparedCache(out).image_size == 32

    result = runner.invoke(
        prepare_app, ["ave", "--out", str(tmp_path / "x"), "--root", str(tmp_path / "nope")]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "nope" in result.output


# --------------------------------------------------------------------------- reading the cache


def test_prepared_cache_validation(prepared, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"manifest\.json: not found; run 'dgsct prepare \.\.\.' first"):
        PreparedCache(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json: cannot be read as JSON"):
        PreparedCache(tmp_path)
    manifest = json.loads((prepared[0] / "manifest.json").read_text())
    del manifest["splits"]
    atomic_write_json(tmp_path / "manifest.json", manifest)
    with pytest.raises(ValueError, match="'splits' must be an object"):
        PreparedCache(tmp_path)

    cache = PreparedCache(prepared[0])
    with pytest.raises(ValueError, match="available splits: 'train', 'val', 'test'"):
        cache.split_indices("validation")
    vid = cache.samples[0]["video_id"]
    assert isinstance(cache.frames(vid), np.memmap) and cache.audio(vid).dtype == np.float32


def test_segment_dataset_items(prepared) -> None:
    cache = PreparedCache(prepared[0])
    ds = SegmentDataset(cache, "train", segment_tiling=3, **IMAGENET)
    assert len(ds) == len(ds.sample_ids) == len(cache.split_indices("train"))
    assert ds.background_index == 2 and ds.class_names == cache.class_names
    item = ds[0]
    vid = ds.samples[0]["video_id"]
    assert item["frames"].shape == (10, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert item["audio"].shape == (10, 3 * SR) and item["audio"].dtype == torch.float32
    assert item["index"] == 0
    assert item["segment_labels"].dtype == torch.long and item["segment_labels"].shape == (10,)
    assert item["event_label"].tolist() == ds.samples[0]["targets"]["event_label"]

    raw = torch.from_numpy(np.array(cache.frames(vid))).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(item["frames"], (raw - mean) / std)

    wave = np.array(cache.audio(vid))
    for r in range(10):
        segment = wave[r * SR : (r + 1) * SR]
        np.testing.assert_array_equal(item["audio"][r].numpy(), np.tile(segment, 3))

    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["frames"].shape == (2, 10, 3, 64, 64) and batch["event_label"].shape == (2, 1)

    small = SegmentDataset(cache, "val", image_size=32, segment_tiling=2, sample_rate=16000, **IMAGENET)
    item = small[0]
    assert item["frames"].shape == (10, 3, 32, 32)
    assert item["audio"].shape == (10, 2 * 16000)
    np.testing.assert_array_equal(item["audio"][4, :16000].numpy(), item["audio"][4, 16000:].numpy())
