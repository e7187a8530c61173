"""AVVP (LLP) data pipeline: CSV parsing, prepare (skip/resume/features/R(2+1)D), cache items, CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGENET, synthetic_cache
from rich.console import Console

from dgsct_cli.data import avvp as avvp_module
from dgsct_cli.data.avvp import AVVP_CLASSES, prepare_avvp, read_llp_annotations, read_llp_ground_truth
from dgsct_cli.data.datasets import SegmentDataset
from dgsct_cli.data.lines import LineProblems
from dgsct_cli.data.manifest import TMP_PREFIX, PreparedCache, atomic_write_json, validate_manifest
from dgsct_cli.data.r2plus1d import (
    KINETICS_MEAN,
    KINETICS_STD,
    _decode_st_frames,
    load_r2plus1d_18,
    r2plus1d_inputs,
    r2plus1d_segment_features,
    st_frame_indices,
)
from dgsct_cli.data.report import summary_table
from dgsct_cli.data.synthetic import break_dataset, write_synthetic_llp

REAL_AVVP = Path(__file__).resolve().parent / "fixtures" / "data" / "avvp"
SPLIT_FILES = ("AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv")
EVAL_FILES = ("AVVP_eval_audio.csv", "AVVP_eval_visual.csv")


# --------------------------------------------------------------------------- annotations


def test_real_csvs_parse_with_published_counts(tmp_path: Path) -> None:
    splits = read_llp_annotations(REAL_AVVP)
    assert {k: len(v) for k, v in splits.items()} == {"train": 10000, "val": 649, "test": 1200}
    assert splits["train"][0].filename == "BjCEufrlXm4_20_30"
    assert splits["train"][0].labels == ["Speech", "Dog"] and splits["train"][0].youtube_id == "BjCEufrlXm4"
    names = [r.filename for rows in splits.values() for r in rows]
    assert len(set(names)) == len({n[:11] for n in names}) == 11849

    # Labels per video over the full set (spec §A.1); the one "Clapping,Clapping" test row is one label.
    counts: dict[int, int] = {}
    for rows in splits.values():
        for r in rows:
            counts[len(r.labels)] = counts.get(len(r.labels), 0) + 1
    assert counts == {1: 4648, 2: 6895, 3: 263, 4: 39, 5: 3, 7: 1}
    train_speech = sum("Speech" in r.labels for r in splits["train"])
    assert train_speech == 4988

    eval_rows = [r.filename for s in ("val", "test") for r in splits[s]]
    gt_audio, gt_visual = read_llp_ground_truth(REAL_AVVP, eval_rows)
    assert gt_audio.shape == gt_visual.shape == (1849, 10, 25)
    # 70 val and 121 test videos have no visual row (spec §A.1).
    no_visual = gt_visual.reshape(1849, -1).sum(1) == 0
    assert (no_visual[:649].sum(), no_visual[649:].sum()) == (70, 121)
    first = eval_rows.index("4YdbENYcIyE_23_33")  # audio 0..4 and visual 0..10 Baby_cry_infant_cry
    k = AVVP_CLASSES.index("Baby_cry_infant_cry")
    assert gt_audio[first, :, k].tolist() == [1] * 4 + [0] * 6 and gt_visual[first, :, k].sum() == 10

    # The release layout: CSVs under data/AVVP/.
    nested = tmp_path / "data" / "AVVP"
    nested.mkdir(parents=True)
    for name in (*SPLIT_FILES, *EVAL_FILES):
        (nested / name).symlink_to(REAL_AVVP / name)
    assert {k: len(v) for k, v in read_llp_annotations(tmp_path).items()}["val"] == 649


def _write_csvs(root: Path, train_lines: list[str], header: str = "filename\tevent_labels") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "AVVP_train.csv").write_text("\n".join([header, *train_lines]) + "\n")
    for name in ("AVVP_val_pd.csv", "AVVP_test_pd.csv"):
        (root / name).write_text(f"filename\tevent_labels\n{name[5:8]}_abcdefg_0_10\tDog\n")


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("xyzxyzxyzxy_0_10", "expected 2 tab-separated fields"),
        ("xyzxyzxyzxy_0_10\tDog\tCat", "expected 2 tab-separated fields"),
        ("xyzxyzxyzxy_0_10\tDog,Cow", "unknown class 'Cow'"),
        ("xyzxyzxyzxy_0_10\tDog,", "empty class name"),
        ("short\tDog", "invalid filename 'short'"),
        ("abcdefghijk_0_10\tCat", "listed twice"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    _write_csvs(tmp_path, ["abcdefghijk_0_10\tDog", bad_line])
    with pytest.raises(ValueError, match=r"AVVP_train\.csv:3: ") as info:
        read_llp_annotations(tmp_path)
    assert problem in str(info.value)


def test_missing_files_and_bad_headers_are_named(tmp_path: Path) -> None:
    _write_csvs(tmp_path, ["abcdefghijk_0_10\tDog"], header="name\tlabels")
    with pytest.raises(ValueError, match=r"AVVP_train\.csv:1: expected the tab-separated header"):
        read_llp_annotations(tmp_path)
    _write_csvs(tmp_path, ["abcdefghijk_0_10\tDog"])
    (tmp_path / "AVVP_test_pd.csv").unlink()
    with pytest.raises(ValueError, match="missing AVVP_test_pd.csv"):
        read_llp_annotations(tmp_path)
    with pytest.raises(ValueError, match="missing AVVP_test_pd.csv"):
        prepare_avvp(tmp_path, tmp_path / "cache", features=tmp_path, progress=False)

    _write_csvs(tmp_path, ["abcdefghijk_0_10\tDog"])
    with pytest.raises(ValueError, match="missing AVVP_eval_audio.csv"):
        read_llp_ground_truth(tmp_path, ["val_abcdefg_0_10"])
    (tmp_path / "AVVP_eval_audio.csv").write_text(
        "filename\tonset\toffset\tevent_labels\nval_abcdefg_0_10\t0\t4\tDog\n"
    )
    (tmp_path / "AVVP_eval_visual.csv").write_text(
        "filename\tonset\toffset\tevent_labels\nval_abcdefg_0_10\t0\tx\tDog\n"
    )
    with pytest.raises(ValueError, match=r"AVVP_eval_visual\.csv:2: onset/offset must be seconds"):
        read_llp_ground_truth(tmp_path, ["val_abcdefg_0_10"])


def test_a_malformed_last_eval_line_is_reported_and_skipped(tmp_path: Path) -> None:
    header = "filename\tonset\toffset\tevent_labels\n"
    (tmp_path / "AVVP_eval_audio.csv").write_text(
        header + "val_abcdefg_0_10\t0\t4\tDog\nval_abcdefg_0_10\t4\n"
    )
    (tmp_path / "AVVP_eval_visual.csv").write_text(header + "val_abcdefg_0_10\t2\t3\tDog\n")
    problems = LineProblems(strict=False)
    gt_audio, gt_visual = read_llp_ground_truth(tmp_path, ["val_abcdefg_0_10"], problems=problems)
    dog = AVVP_CLASSES.index("Dog")
    assert gt_audio[0, :, dog].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert gt_visual[0, :, dog].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert len(problems.messages) == 1 and "AVVP_eval_audio.csv:3" in problems.messages[0]


# --------------------------------------------------------------------------- R(2+1)D pieces


def test_st_frame_indices_and_network_inputs() -> None:
    idx = st_frame_indices(80, 8.0)
    assert idx.shape == (10, 8) and idx.ravel().tolist() == list(range(80))
    idx = st_frame_indices(300, 30.0)
    assert idx[0].tolist() == [1, 5, 9, 13, 16, 20, 24, 28]  # floor((j + 0.5) / 8 * 30)
    assert idx.max() <= 299 and (idx[1] >= 30).all() and (idx[1] < 60).all()
    short = st_frame_indices(24, 8.0)  # 3 s clip: spread over what there is
    assert short.shape == (10, 8) and short[0, 0] == 0 and short[-1, -1] == 23

    frames = np.full((2, 8, 40, 60, 3), 255, dtype=np.uint8)
    x = r2plus1d_inputs(frames, size=16)
    assert x.shape == (2, 3, 8, 16, 16) and x.dtype == torch.float32
    expected = (1 - torch.tensor(KINETICS_MEAN)) / torch.tensor(KINETICS_STD)
    torch.testing.assert_close(x[0, :, 0, 5, 5], expected)


@pytest.fixture(scope="module")
def r2p1d_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchvision.models.video import r2plus1d_18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "r2plus1d_18.pth"
    # Randomly initialised, Kinetics-400 fc included; half precision only to halve the file.
    state = {k: v.half() if v.is_floating_point() else v for k, v in r2plus1d_18().state_dict().items()}
    torch.save(state, path)
    return path


def test_r2plus1d_loader_and_features(r2p1d_weights: Path, tmp_path: Path) -> None:
    from torchvision.models.video import r2plus1d_18

    model = load_r2plus1d_18(r2p1d_weights)
    reference = r2plus1d_18()
    reference.load_state_dict(torch.load(r2p1d_weights, weights_only=True))
    reference.fc = torch.nn.Identity()
    clips = torch.randn(2, 3, 8, 16, 16)
    feats = r2plus1d_segment_features(model, clips, batch_size=1)
    assert feats.shape == (2, 512) and feats.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(feats, reference.eval()(clips).numpy(), rtol=1e-4, atol=1e-5)

    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not an r2plus1d_18 state dict"):
        load_r2plus1d_18(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a torch state dict"):
        load_r2plus1d_18(tmp_path / "junk.pth")


# --------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def llp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llp") / "raw"
    return write_synthetic_llp(root, num_videos=10, num_classes=3, image_size=64, seed=1)


def test_synthetic_llp_layout(llp_root: Path, tmp_path: Path) -> None:
    splits = read_llp_annotations(llp_root)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 2}
    for rows in splits.values():
        for row in rows:
            assert (llp_root / "video" / f"{row.filename}.mp4").is_file()
            feats = np.load(llp_root / "feats" / "r2plus1d_18" / f"{row.youtube_id}.npy")
            assert feats.shape == (10, 512) and feats.dtype == np.float32
            assert set(row.labels) <= set(AVVP_CLASSES[:3])
    # The eval CSVs describe val/test only, and their classes are among the weak labels.
    eval_names = {r.filename: r for s in ("val", "test") for r in splits[s]}
    for name in EVAL_FILES:
        lines = (llp_root / name).read_text().splitlines()
        assert lines[0] == "filename\tonset\toffset\tevent_labels"
        for line in lines[1:]:
            filename, _, _, label = line.split("\t")
            assert label in eval_names[filename].labels
    # A real dataset is never overwritten.
    _write_csvs(tmp_path, ["abcdefghijk_0_10\tDog"])
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_synthetic_llp(tmp_path, num_videos=3)


@pytest.fixture(scope="module")
def broken(llp_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A copy with one missing, corrupt and audio-less video, one wrong-shape and one absent feature file."""
    base = tmp_path_factory.mktemp("llp_broken")
    root = base / "raw"
    shutil.copytree(llp_root, root)
    splits = read_llp_annotations(root)
    train = [r.filename for r in splits["train"]]
    picks = {
        "missing": train[0],
        "corrupt": splits["val"][0].filename,
        "no_audio": splits["test"][0].filename,
        "bad_shape": train[1],
        "no_feats": train[2],
    }
    break_dataset(
        root,
        missing=[picks["missing"]],
        corrupt=[picks["corrupt"]],
        no_audio=[picks["no_audio"]],
        video_dir=root / "video",
    )
    feats = root / "feats" / "r2plus1d_18"
    np.save(feats / f"{picks['bad_shape'][:11]}.npy", np.zeros((9, 512), dtype=np.float32))
    (feats / f"{picks['no_feats'][:11]}.npy").unlink()
    return {"root": str(root), "feats": str(feats), **picks}


@pytest.fixture(scope="module")
def prepared(broken: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("llp_cache")
    console = Console(file=io.StringIO(), width=120)
    summary = prepare_avvp(
        broken["root"], out, workers=2, image_size=48, features=Path(broken["feats"]), console=console
    )
    return out, summary


def test_prepare_skips_and_reports(broken: dict[str, str], prepared) -> None:
    out, summary = prepared
    expected = {
        broken["missing"]: ("missing", "train"),
        broken["corrupt"]: ("corrupt: ", "val"),
        broken["no_audio"]: ("no audio", "test"),
        broken["bad_shape"]: ("3-D features", "train"),
        broken["no_feats"]: ("no 3-D features", "train"),
    }
    got = {s.video_id: (s.reason, s.splits) for s in summary.skipped}
    assert set(got) == set(expected)
    for vid, (reason, split) in expected.items():
        assert got[vid][0].startswith(reason) and got[vid][1] == [split]
    assert "shape (9, 512), expected (10, 512)" in got[broken["bad_shape"]][0]
    assert got[broken["no_feats"]][0] == "no 3-D features"
    assert summary.split_usable == {"train": 3, "val": 1, "test": 1}
    # Videos without usable features are not decoded at all.
    assert summary.decoded == summary.videos - 5 == 5

    report = json.loads((out / "prepare_report.json").read_text())
    assert report["dataset"] == "avvp" and report["videos"]["skipped"] == 5
    assert {s["video_id"] for s in report["skipped"]} == set(expected)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "avvp" and manifest["class_names"] == AVVP_CLASSES
    assert manifest["background_index"] is None and manifest["extra_arrays"] == ["video_st"]
    assert {s["video_id"] for s in manifest["skipped"]} == set(expected)
    splits = read_llp_annotations(broken["root"])
    by_name = {r.filename: r for rows in splits.values() for r in rows}
    eval_lines = {
        kind: (Path(broken["root"]) / f"AVVP_eval_{kind}.csv").read_text().splitlines()[1:]
        for kind in ("audio", "visual")
    }
    for sample in manifest["samples"]:
        assert sample["id"] == sample["video_id"] not in expected
        targets = sample["targets"]
        labels = [AVVP_CLASSES[k] for k, v in enumerate(targets["labels"]) if v]
        assert sorted(labels) == sorted(by_name[sample["id"]].labels)
        if sample["split"] == "train":
            assert set(targets) == {"labels"}
            continue
        for kind in ("audio", "visual"):
            gt = np.array(targets[f"gt_{kind}"])
            want = np.zeros((10, 25))
            for line in eval_lines[kind]:
                name, onset, offset, label = line.split("\t")
                if name == sample["id"]:
                    want[int(onset) : int(offset), AVVP_CLASSES.index(label)] = 1
            np.testing.assert_array_equal(gt, want)
    # Dense targets stay one line each, so the manifest stays small.
    assert max(len(line) for line in (out / "manifest.json").read_text().splitlines()) < 2000

    text = io.StringIO()
    Console(file=text, width=200).print(summary_table(summary))
    assert all(vid in text.getvalue() for vid in expected) and "3-D features" in text.getvalue()


def test_segment_dataset_items(broken: dict[str, str], prepared) -> None:
    cache = PreparedCache(prepared[0])
    assert cache.extra_arrays == ["video_st"] and cache.background_index is None
    train = SegmentDataset(cache, "train", segment_tiling=2, **IMAGENET)
    item = train[0]
    assert item["frames"].shape == (10, 3, 48, 48) and item["audio"].shape == (10, 64000)
    assert item["video_st"].shape == (10, 512) and item["video_st"].dtype == torch.float32
    assert item["labels"].shape == (25,) and item["labels"].dtype == torch.float32
    assert "gt_audio" not in item
    source = np.load(Path(broken["feats"]) / f"{train.sample_ids[0][:11]}.npy")
    np.testing.assert_array_equal(item["video_st"].numpy(), source)

    for split in ("val", "test"):
        ds = SegmentDataset(cache, split, **IMAGENET)
        item = ds[0]
        assert item["gt_audio"].shape == item["gt_visual"].shape == (10, 25)
        assert item["gt_audio"].dtype == torch.float32
        # The weak labels cover every segment-level event.
        present = (item["gt_audio"].amax(0) + item["gt_visual"].amax(0)) > 0
        assert bool((item["labels"][present] == 1).all())

    batch = next(iter(torch.utils.data.DataLoader(SegmentDataset(cache, "train", **IMAGENET), batch_size=2)))
    assert batch["video_st"].shape == (2, 10, 512) and batch["labels"].shape == (2, 25)


def test_resume(broken: dict[str, str], prepared, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(prepared[0], out)
    first = (out / "manifest.json").read_bytes()
    feats = Path(broken["feats"])

    again = prepare_avvp(broken["root"], out, workers=1, image_size=48, features=feats, progress=False)
    assert again.decoded == 0 and again.reused == prepared[1].decoded
    assert (out / "manifest.json").read_bytes() == first
    assert "0 written now" in again.details["3-D features (video_st)"]

    # Interrupted run: a video's frames and another's features never got written, plus a temp file.
    samples = json.loads(first)["samples"]
    (out / "frames" / f"{samples[0]['video_id']}.npy").unlink()
    (out / "video_st" / f"{samples[1]['video_id']}.npy").unlink()
    (out / "video_st" / f"{TMP_PREFIX}x.npy.abc").write_bytes(b"half")
    resumed = prepare_avvp(broken["root"], out, workers=1, image_size=48, features=feats, progress=False)
    assert resumed.decoded == 1 and "1 written now" in resumed.details["3-D features (video_st)"]
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert (out / "manifest.json").read_bytes() == first


def test_r2plus1d_path_computes_video_st(
    r2p1d_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_synthetic_llp(tmp_path / "raw", num_videos=3, num_classes=2, image_size=32, seed=2)
    out = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"--features DIR .* --r2plus1d-weights FILE.*found .*feats"):
        prepare_avvp(root, out, progress=False)
    with pytest.raises(ValueError, match="not both"):
        prepare_avvp(root, out, features=root, r2plus1d_weights=r2p1d_weights, progress=False)

    # 112x112 costs ~10 s per video on 2 CPU cores; 32x32 runs the same code path faster.
    monkeypatch.setattr(avvp_module, "R2P1D_SIZE", 32)
    summary = prepare_avvp(
        root, out, workers=2, image_size=32, r2plus1d_weights=r2p1d_weights, progress=False
    )
    assert summary.decoded == 3 and not summary.skipped
    assert "r2plus1d_18" in summary.details["3-D features (video_st)"]
    cache = PreparedCache(out)
    vid = cache.samples[0]["video_id"]
    got = np.array(cache.array("video_st", vid))
    assert got.shape == (10, 512) and got.dtype == np.float32
    # Same numbers as running the pieces by hand (first segment only, to save time).
    clips = _decode_st_frames(str(root / "video" / f"{vid}.mp4"), 10, 8, 32)
    direct = r2plus1d_segment_features(load_r2plus1d_18(r2p1d_weights), clips[:1])
    np.testing.assert_allclose(got[:1], direct, rtol=1e-4, atol=1e-5)
    assert cache.manifest["info"]["video_st"]["source"] == "r2plus1d_18"

    # Switching to the published features replaces every cached video_st without re-decoding.
    feats = root / "feats" / "r2plus1d_18"
    switched = prepare_avvp(root, out, workers=1, image_size=32, features=feats, progress=False)
    assert switched.decoded == 0 and "3 written now" in switched.details["3-D features (video_st)"]
    np.testing.assert_array_equal(
        np.array(PreparedCache(out).array("video_st", vid)), np.load(feats / f"{vid[:11]}.npy")
    )


def test_empty_split_fails(llp_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(llp_root, root)
    test_videos = [r.filename for r in read_llp_annotations(root)["test"]]
    break_dataset(root, missing=test_videos, video_dir=root / "video")
    with pytest.raises(ValueError, match=r"split 'test' has no usable videos \(2 skipped\)"):
        prepare_avvp(
            root, tmp_path / "cache", workers=1, features=root / "feats" / "r2plus1d_18", progress=False
        )
    assert (tmp_path / "cache" / "prepare_report.json").is_file()
    assert not (tmp_path / "cache" / "manifest.json").exists()


def test_manifest_nested_targets_and_extra_arrays_validation(prepared) -> None:
    manifest = json.loads((prepared[0] / "manifest.json").read_text())
    validate_manifest(manifest)
    sample = next(s for s in manifest["samples"] if "gt_audio" in s["targets"])
    ragged = json.loads(json.dumps(manifest))
    next(s for s in ragged["samples"] if s["id"] == sample["id"])["targets"]["gt_audio"][3].pop()
    with pytest.raises(ValueError, match="rectangular nested list of numbers"):
        validate_manifest(ragged)
    for bad in (["video_st", "video_st"], ["frames"], ["../x"], "video_st"):
        broken_manifest = dict(manifest, extra_arrays=bad)
        with pytest.raises(ValueError, match="extra_arrays"):
            validate_manifest(broken_manifest)
    clash = json.loads(json.dumps(manifest))
    clash["samples"][0]["targets"]["video_st"] = [1.0]
    with pytest.raises(ValueError, match="reserved"):
        validate_manifest(clash)


def test_cli_and_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dgsct_cli.cli.prepare_cmd import prepare_app

    runner = CliRunner()
    out = tmp_path / "cache"
    args = ["avvp", "--out", str(out), "--synthetic", "--videos", "3", "--image-size", "32", "--workers", "1"]
    result = runner.invoke(prepare_app, args)
    assert result.exit_code == 0, result.output
    assert (out / "raw" / "AVVP_train.csv").is_file()
    cache = PreparedCache(out)
    assert cache.dataset == "avvp" and cache.image_size == 32 and cache.extra_arrays == ["video_st"]

    result = runner.invoke(prepare_app, ["avvp", "--out", str(tmp_path / "x"), "--root", str(out / "raw")])
    assert result.exit_code == 1 and "--features DIR" in result.output
    result = runner.invoke(
        prepare_app,
        ["avvp", "--out", str(tmp_path / "x"), "--root", str(tmp_path / "nope"), "--features", "."],
    )
    assert result.exit_code == 1 and "error:" in result.output and "nope" in result.output

    # The task writes the synthetic root and prepares it from its own feature folder.
    calls = []
    monkeypatch.setattr(avvp_module, "prepare_avvp", lambda *a, **kw: calls.append((a, kw)))
    target = synthetic_cache("avvp", tmp_path / "reg", videos=3, image_size=32)
    assert target == tmp_path / "reg" and (target / "raw" / "video").is_dir()
    ((args, kwargs),) = calls
    assert args == (target / "raw", target) and kwargs["image_size"] == 32
    assert kwargs["features"] == target / "raw" / "feats" / "r2plus1d_18"


def test_ave_style_manifest_without_extra_arrays_still_reads(prepared, tmp_path: Path) -> None:
    manifest = json.loads((prepared[0] / "manifest.json").read_text())
    del manifest["extra_arrays"]
    for sample in manifest["samples"]:
        sample["targets"] = {"labels": sample["targets"]["labels"]}
    shutil.copytree(prepared[0], tmp_path / "c")
    atomic_write_json(tmp_path / "c" / "manifest.json", manifest)
    cache = PreparedCache(tmp_path / "c")
    assert cache.extra_arrays == []
    item = SegmentDataset(cache, "val", **IMAGENET)[0]
    assert "video_st" not in item and set(item) == {"frames", "audio", "index", "labels"}
