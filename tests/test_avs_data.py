"""AVSBench data: files written in the published layout read as the release's loaders read them
(tests/fixtures/release/avs/data_rules.pt: what S4Dataset / MS3Dataset return on the same files), the
mask rule, bad files reported and skipped, resume, the raw-video frame rule, safe AVS.npy reading."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGENET
from PIL import Image

from dgsct_cli.data.avsbench import load_wave_dict, prepare_avsbench, read_mask_png, write_synthetic_avsbench
from dgsct_cli.data.datasets import SegmentDataset
from dgsct_cli.data.manifest import PreparedCache
from dgsct_cli.data.video import last_of_sixteen

HERE = Path(__file__).resolve().parent / "fixtures" / "release" / "avs"

# The reference's fake layout (data_rules.pt meta.fake_layout_rules / mask_modes), rebuilt here.
S4_ROWS = [
    ("s4vidA", "0", "dog_barking", "train"),
    ("s4vidB", "1", "male_speech", "test"),
    ("s4vidC", "0", "dog_barking", "val"),
    ("s4vidD", "2", "race_car", "train"),
    ("s4vidE", "0", "race_car", "test"),
]
MS3_ROWS = [
    ("ms3vidF", "train"),
    ("ms3vidG", "test"),
    ("ms3vidH", "val"),
    ("ms3vidI", "train"),
    ("ms3vidJ", "test"),
]


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, key)) * 7919)


def _frame(name: str, k: int) -> np.ndarray:
    return _rng(name + str(k)).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)


def _mask(name: str, k: int) -> np.ndarray:
    a = np.zeros((224, 224), np.uint8)
    r0, c0 = 20 + 10 * k + len(name), 30 + 7 * k
    a[r0 : r0 + 60 + 5 * k, c0 : c0 + 80] = 255
    return a


def _save_mask(path: Path, a: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L255":  # 0/255 plus grey pixels
        b = a.copy()
        b[0, 0:4] = [64, 127, 128, 200]
        b[200:204, 200:204] = 128
        Image.fromarray(b, "L").save(path)
    elif mode == "L255clean":
        Image.fromarray(a, "L").save(path)
    elif mode == "RGB255":
        Image.fromarray(np.stack([a] * 3, -1), "RGB").save(path)
    else:  # "P1": palette index 1 = white
        img = Image.fromarray((a > 0).astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
        img.save(path)


def _save_waves(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, entries, allow_pickle=True)


def build_fake_layout(root: Path, modes: dict[str, str]) -> Path:
    s4 = root / "Single-source"
    s4.mkdir(parents=True)
    (s4 / "s4_meta_data.csv").write_text(
        "name,start,category,split\n" + "".join(f"{n},{st},{c},{sp}\n" for n, st, c, sp in S4_ROWS)
    )
    waves: dict = {}
    for n, _, c, sp in S4_ROWS:
        d = s4 / "s4_data"
        for k in range(1, 6):
            p = d / "visual_frames" / sp / c / n / f"{n}_{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_frame(n, k), "RGB").save(p)
            _save_mask(d / "gt_masks" / sp / c / n / f"{n}_{k}.png", _mask(n, k), modes[n])
        waves.setdefault(d / "wave" / sp / c / "AVS.npy", {})[n + ".wav"] = (
            0.1 * _rng("wave" + n).standard_normal(160000)
        ).astype(np.float32)
    ms3 = root / "Multi-sources"
    ms3.mkdir(parents=True)
    (ms3 / "ms3_meta_data.csv").write_text("video_id,split\n" + "".join(f"{n},{sp}\n" for n, sp in MS3_ROWS))
    for n, sp in MS3_ROWS:
        d = ms3 / "ms3_data"
        for k in range(1, 6):
            p = d / "visual_frames" / n / f"{n}.mp4_{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_frame(n, k), "RGB").save(p)
            _save_mask(d / "gt_masks" / sp / n / f"{n}_{k}.png", _mask(n, k), modes[n])
        waves.setdefault(d / "wave" / sp / "AVS.npy", {})[n + ".wav"] = (
            0.1 * _rng("wave" + n).standard_normal(160000)
        ).astype(np.float32)
    for path, entries in waves.items():
        _save_waves(path, entries)
    return root


@pytest.fixture(scope="module")
def rules() -> dict:
    return torch.load(HERE / "data_rules.pt", weights_only=True)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory, rules) -> Path:
    return build_fake_layout(tmp_path_factory.mktemp("avsbench"), rules["meta"]["mask_modes"])


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("setting", ["s4", "ms3"])
def test_published_layout_reads_as_the_release_reads_it(fake_root, rules, tmp_path, setting):
    summary = prepare_avsbench(fake_root, tmp_path / "cache", setting, progress=False)
    assert not summary.skipped and summary.split_usable == {"train": 2, "val": 1, "test": 2}
    cache = PreparedCache(tmp_path / "cache")
    for split, expected in rules[setting].items():
        dataset = SegmentDataset(
            cache, split, image_size=224, segment_tiling=5, sample_rate=32000, **IMAGENET
        )
        assert len(dataset) == expected["len"]
        for i, (key, ref) in enumerate(expected["items"].items()):
            item = dataset[i]
            assert dataset.sample_ids[i] == key.split(":")[1]  # CSV order within the split
            # frames: ToTensor + ImageNet Normalize (float arithmetic: compared to float drift)
            assert list(item["frames"].shape) == ref["imgs"]["shape"]
            total = item["frames"].double().sum().item()
            assert total == pytest.approx(ref["imgs"]["sum_f64"], rel=1e-7)
            # audio: each 1-s row repeated 5 times, [5, 160000], bit for bit (copied, not computed)
            assert _sha(item["audio"]) == ref["wave"]["sha256"] and ref["wave"]["row_is_segment_tiled_5x"]
            # masks: S4 train has the first frame's only (the release reads _1 alone)
            count = ref["masks"]["shape"][0]
            assert item["mask_valid"].tolist() == [1] * count + [0] * (5 - count)
            ours = item["masks"][:count].double().sum((1, 2))
            release = ref["masks"]["frame_sum_f64"]
            mode = ref["mask_png_storage"]
            if mode == "L255":
                # Grey pixels: ours (> 0) counts all 20 as foreground; the release's S4 convert('1')
                # dithers them (10 survive), MS3's convert('P') keeps value / 255.
                assert torch.equal(
                    ours, torch.tensor([5200.0 + 400 * j + 20 for j in range(count)], dtype=torch.float64)
                )
                assert (ours - release).abs().max() < 20
            elif setting == "ms3" and mode in ("RGB255", "P1"):
                # The release decodes these to 225/255 and 1/255; ours to 1 on the same pixels.
                value = ref["masks"]["unique"][1].item()
                assert torch.allclose(ours * value, release, rtol=1e-6)
            else:
                assert torch.equal(ours, release)


@pytest.mark.parametrize(
    "mode, release_key",
    [
        ("L_0_1", None),
        ("RGB_0_255", "s4"),
        ("P_index1_white", "s4"),
        ("P_index255_white", "s4"),
        ("1_bilevel", "s4"),
    ],
)
def test_mask_storage_modes(rules, tmp_path, mode, release_key):
    """A mask is ``grey > 0``: the release's S4 decoding ({0,1}) wherever that is well defined."""
    ref = rules["mask_png_modes"][mode]
    stored = ref["stored_values"].numpy().astype(np.uint8)
    path = tmp_path / "m.png"
    if ref["stored_png_mode"] == "P":
        img = Image.fromarray(stored, "P")
        white = 1 if "index1" in mode else 255
        palette = [0, 0, 0] * 256
        palette[3 * white : 3 * white + 3] = [255, 255, 255]
        img.putpalette(palette)
    elif ref["stored_png_mode"] == "1":
        img = Image.fromarray(stored.astype(bool))
    else:
        img = Image.fromarray(stored, ref["stored_png_mode"])
    img.save(path)
    ours = read_mask_png(path, size=8)
    if release_key:
        assert np.array_equal(ours * 255, ref[f"{release_key}_convert1_x255"].numpy())
    else:  # stored 0/1 in an L image: S4's convert('1') sees black; ours sees the mask
        assert ours.sum() == 16 and ref["s4_convert1_x255"].sum() == 0


def test_missing_and_corrupt_files_are_reported_not_fatal(fake_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(fake_root, root)
    base = root / "Multi-sources" / "ms3_data"
    (base / "visual_frames" / "ms3vidI" / "ms3vidI.mp4_3.png").unlink()
    (base / "gt_masks" / "test" / "ms3vidJ" / "ms3vidJ_2.png").write_bytes(b"not a png")
    with open(root / "Multi-sources" / "ms3_meta_data.csv", "a") as fh:
        fh.write("ms3vidK,test\nbad line without split\n")
    summary = prepare_avsbench(root, tmp_path / "cache", "ms3", progress=False)
    reasons = {s.video_id: s.reason for s in summary.skipped}
    assert reasons["ms3vidI"] == "missing frame ms3_data/visual_frames/ms3vidI/ms3vidI.mp4_3.png"
    assert reasons["ms3vidJ"].startswith("corrupt mask ms3_data/gt_masks/test/ms3vidJ/ms3vidJ_2.png")
    assert reasons["ms3vidK"] == "no audio: ms3vidK.wav is not in ms3_data/wave/test/AVS.npy"
    assert len(summary.bad_lines) == 1 and "ms3_meta_data.csv:8" in summary.bad_lines[0]
    assert summary.split_usable == {"train": 1, "val": 1, "test": 1}
    assert {s["id"] for s in PreparedCache(tmp_path / "cache").samples} == {"ms3vidF", "ms3vidG", "ms3vidH"}
    # resumable: a second run decodes nothing again, and an interrupted file is redone
    again = prepare_avsbench(root, tmp_path / "cache", "ms3", progress=False)
    assert again.decoded == 0 and again.reused == 3
    (tmp_path / "cache" / "masks" / "ms3vidG.npy").unlink()
    assert prepare_avsbench(root, tmp_path / "cache", "ms3", progress=False).decoded == 1
    with pytest.raises(ValueError, match="ms3_meta_data.csv:8"):
        prepare_avsbench(root, tmp_path / "strict", "ms3", progress=False, strict=True)


def test_a_split_without_videos_and_a_missing_csv_are_errors(fake_root, tmp_path):
    with pytest.raises(ValueError, match="no s4_meta_data.csv"):
        prepare_avsbench(tmp_path, tmp_path / "c", "s4", progress=False)
    with pytest.raises(ValueError, match="--setting must be one of s4, ms3"):
        prepare_avsbench(fake_root, tmp_path / "c", "s5", progress=False)


def test_frame_rule_is_the_last_of_sixteen_samples_per_second():
    # F = round(fps); frame int(l*F + 15/16*F) of second l, clamped to the last frame
    assert last_of_sixteen(150, 30.0, 5)[0].tolist() == [28, 58, 88, 118, 148]
    assert last_of_sixteen(125, 25.0, 5)[0].tolist() == [23, 48, 73, 98, 123]
    assert last_of_sixteen(100, 29.97, 5)[0].tolist() == [28, 58, 88, 99, 99]
    assert last_of_sixteen(125, 25.0, 5)[1] is None  # audio: the clip's first seconds


def test_wave_files_are_read_without_running_code(tmp_path):
    good = tmp_path / "AVS.npy"
    _save_waves(good, {"a.wav": np.arange(4, dtype=np.float32)})
    assert load_wave_dict(good)["a.wav"].tolist() == [0, 1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.npy"
    buffer = io.BytesIO()
    np.save(buffer, np.array({"a.wav": Evil()}, dtype=object), allow_pickle=True)
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(
        ValueError, match=r"evil.npy: not a readable AVS.npy .*refusing to load builtins.print"
    ):
        load_wave_dict(bad)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(ValueError, match="plain array, not a dict"):
        load_wave_dict(plain)


def test_synthetic_set_has_the_published_layout(tmp_path):
    root = write_synthetic_avsbench(tmp_path / "raw", "s4", num_videos=6)
    base = root / "Single-source"
    lines = (base / "s4_meta_data.csv").read_text().splitlines()
    assert lines[0] == "name,start,category,split" and len(lines) == 7
    train = [line.split(",") for line in lines[1:] if line.endswith(",train")]
    name, _, category, _ = train[0]
    masks = sorted((base / "s4_data" / "gt_masks" / "train" / category / name).iterdir())
    assert [m.name for m in masks] == [f"{name}_1.png"]  # train: the first frame's mask only
    summary = prepare_avsbench(root, tmp_path / "cache", "s4", progress=False)
    assert not summary.skipped and all(summary.split_usable.values())
    with pytest.raises(ValueError, match="refusing to overwrite"):
        (tmp_path / "raw" / ".dgsct-synthetic").unlink()
        write_synthetic_avsbench(tmp_path / "raw", "s4", num_videos=6)


def test_raw_videos_are_decoded_at_the_last_of_sixteen_frames(fake_root, tmp_path):
    """``--source videos``: frames and 32 kHz audio from the clips (decord), masks from gt_masks.
    Frame f of a 16 fps clip is painted grey level 3f, so the picked frames can be read back."""
    from dgsct_cli.data.video import write_mp4

    videos = tmp_path / "raw_videos"
    fps, seconds, rate = 16, 5, 32000
    t = np.arange(seconds * rate) / rate
    for name, _, category, split in S4_ROWS:
        frames = np.stack([np.full((64, 64, 3), 3 * f, np.uint8) for f in range(fps * seconds)])
        audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        path = videos / split / category / f"{name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, frames, fps, audio, rate)
    (videos / "test" / "male_speech" / "s4vidB.mp4").unlink()
    summary = prepare_avsbench(
        fake_root, tmp_path / "cache", "s4", source="videos", videos=videos, workers=1, progress=False
    )
    assert {s.video_id: s.reason for s in summary.skipped} == {"s4vidB": "missing"}
    cache = PreparedCache(tmp_path / "cache")
    frames = np.asarray(cache.frames("s4vidA"), dtype=np.float32)
    assert frames.shape == (5, 224, 224, 3)
    picked = [int(second * fps + 15 / 16 * fps) for second in range(5)]  # 15, 31, 47, 63, 79
    assert np.allclose(frames.mean(axis=(1, 2, 3)), [3 * f for f in picked], atol=4)
    audio = np.asarray(cache.audio("s4vidA"))
    assert audio.shape == (160000,) and 0.1 < np.abs(audio).max() < 1.0  # AAC overshoots a little
    assert int(np.asarray(cache.array("masks", "s4vidA"))[0].sum()) == 5220  # the PNG mask (grey > 0)
