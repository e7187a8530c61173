"""``dgsct fewshot`` end to end on tiny CLIP/CLAP/RoBERTa files and synthetic AVE/LLP data:
a K sweep (JSON table + PNG), a run that learns its synthetic set, the release protocol preset,
and ``dgsct eval`` / ``visualize tsne`` on few-shot checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_fewshot_files import one_thread, single_thread, tiny_overrides  # noqa: F401
from typer.testing import CliRunner

from dgsct_cli.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")


def ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fewshot_files, fewshot_ave):
    root = tmp_path_factory.mktemp("fewshot-cli")
    return {
        "root": root,
        "overrides": tiny_overrides(fewshot_files),
        "ave": fewshot_ave,
        "files": fewshot_files,
    }


def test_sweep_end_to_end(setup):
    out = setup["root"] / "sweep"
    result = ok(
        "fewshot", "sweep", "--recipe", "fewshot-ave", "--shots", "1,2", "--data", setup["ave"], "--output", out,
        *setup["overrides"], "train.epochs=1",
    )  # fmt: skip
    table = json.loads((out / "sweep.json").read_text())
    assert [r["shots"] for r in table["runs"]] == [1, 2]
    # 4 synthetic classes: K videos of each.
    assert [r["train_samples"] for r in table["runs"]] == [4, 8]
    assert all(0 <= r["accuracy"] <= 100 for r in table["runs"])
    assert table["published"] == {"16": 72.4} and table["protocol"] == "default"
    assert table["selection_split"] == "val" and table["split"] == "test"
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "K2" / "fewshot.json").read_text())
    assert run["shots"] == 2 and run["task"] == "fewshot-ave" and "test_metrics" in run
    assert "test accuracy by shots" in result.output


@pytest.fixture(scope="module")
def learned(setup):
    """A tiny AVE-classification run on the synthetic set (every training video, 5 epochs)."""
    out = setup["root"] / "learn"
    with single_thread():
        ok(
            "fewshot", "train", "--recipe", "fewshot-ave-cls", "--data", setup["ave"], "--output", out,
            *setup["overrides"], "train.epochs=5", "train.lr=1e-2", "train.batch_size=4",
            "train.scheduler.type=none", "loss.weighting=fixed",
        )  # fmt: skip
    return out


def test_a_tiny_fewshot_run_learns_its_synthetic_set(setup, learned):
    summary = json.loads((learned / "fewshot.json").read_text())
    assert summary["shots"] is None and summary["protocol"] == "default"
    ok(
        "eval",
        "--checkpoint",
        learned,
        "--data",
        setup["ave"],
        "--split",
        "train",
        "--json",
        learned / "train.json",
    )
    train = json.loads((learned / "train.json").read_text())
    assert train["metric"] == "video" and train["protocol"] == "default"
    assert train["accuracy"] >= 75.0  # chance: 25 % over 4 classes


def test_eval_and_tsne_accept_fewshot_checkpoints(setup, learned):
    result = ok("eval", "--checkpoint", learned, "--data", setup["ave"], "--split", "test")
    assert "FEWSHOT-AVE-CLS test" in result.output
    ok("visualize", "tsne", "--checkpoint", learned, "--data", setup["ave"], "--out", learned / "tsne.png")
    assert (learned / "tsne.png").is_file() and json.loads((learned / "tsne.json").read_text())


def test_release_protocol_preset(setup):
    out = setup["root"] / "release"
    ok(
        "fewshot", "train", "--recipe", "fewshot-ave", "--shots", "1", "--protocol", "release", "--data",
        setup["ave"], "--output", out, *setup["overrides"], "train.epochs=1",
    )  # fmt: skip
    summary = json.loads((out / "fewshot.json").read_text())
    assert summary["protocol"] == "release" and summary["selection_split"] == "test"
    assert summary["test_metrics"]["averaging"] == "batch_mean"
    recipe = (out / "recipe.yaml").read_text()
    assert "protocol: release" in recipe and "val_split: test" in recipe


def test_llp_kshot_dataset_and_loss_on_a_synthetic_cache(setup, fewshot_llp):
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import build_model, data_info, open_split
    from dgsct_cli.tasks.base import get_task

    cache = fewshot_llp
    recipe = load_recipe("fewshot-llp-cls", [*setup["overrides"], "data.shots=1"])
    train = open_split(recipe, cache, "train")
    labels = torch.stack([train[i]["labels"] for i in range(len(train))])
    assert (labels.sum(1) == 1).all()  # single-label videos only
    assert len(set(labels.argmax(1).tolist())) == len(train)  # one per class
    task = get_task("fewshot-llp-cls")
    model = build_model(recipe, data_info(recipe, cache))
    batch = torch.utils.data.default_collate([train[0], train[1]])
    loss = task.loss(task.forward(model, batch), {**batch, "epoch": 3}, recipe.loss)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert model.head.class_names == json.loads((Path(cache) / "manifest.json").read_text())["class_names"]


def test_fewshot_errors_are_one_line(setup, tmp_path):
    result = CliRunner().invoke(app, ["fewshot", "sweep", "--recipe", "fewshot-ave", "--shots", "1,x"])
    assert result.exit_code == 1 and "--shots '1,x': expected comma-separated whole numbers" in result.stderr
    result = CliRunner().invoke(
        app, ["fewshot", "train", "--recipe", "ave-tiny", "--shots", "2", "--data", setup["ave"]]
    )
    assert result.exit_code == 1 and "has no K-shot training subsets" in " ".join(result.stderr.split())
    bad = [o for o in setup["overrides"] if not o.startswith("model.text.tokenizer=")]
    result = CliRunner().invoke(
        app, ["fewshot", "train", "--recipe", "fewshot-ave", "--data", setup["ave"], "--output", tmp_path / "r",
              *bad, f"model.text.tokenizer={tmp_path / 'none'}"],
    )  # fmt: skip
    message = " ".join(result.stderr.split())
    assert result.exit_code == 1 and f"model.text.tokenizer: {tmp_path / 'none'} not found" in message
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_frames_at_another_size_come_from_the_same_decode(tmp_path):
    """``prepare ave --extra-size 32`` stores 32-px frames resized from the decoded frames (the
    same as a cache prepared at 32 px), and the CLIP tasks read them."""
    import numpy as np

    from dgsct_cli.data.ave import prepare_ave
    from dgsct_cli.data.fewshot import FewShotDataset
    from dgsct_cli.data.manifest import PreparedCache
    from dgsct_cli.data.synthetic import write_synthetic_ave

    raw = write_synthetic_ave(tmp_path / "raw", num_videos=4, image_size=64)
    prepare_ave(raw, tmp_path / "big", image_size=64, extra_sizes=(32,), progress=False, workers=1)
    prepare_ave(raw, tmp_path / "small", image_size=32, progress=False, workers=1)
    big, small = PreparedCache(tmp_path / "big"), PreparedCache(tmp_path / "small")
    assert big.frame_sizes == [32] and big.image_size == 64
    for sample in big.samples:
        vid = sample["video_id"]
        assert np.array_equal(np.load(tmp_path / "big" / "frames_32" / f"{vid}.npy"), small.frames(vid))
    stats = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    a = FewShotDataset(big, "train", 32, 32000, **stats)[0]["frames"]
    b = FewShotDataset(small, "train", 32, 32000, **stats)[0]["frames"]
    assert a.shape == (10, 3, 32, 32) and torch.equal(a, b)
    again = prepare_ave(raw, tmp_path / "big", image_size=64, extra_sizes=(32,), progress=False, workers=1)
    assert again.decoded == 0  # resumed: every array already there
