"""AVVP through the CLI: the tiny recipe's own synthetic set -> train -> eval (it learns) ->
extract -> t-SNE."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dgsct_cli.cli.app import app
from dgsct_cli.tasks.avvp_metrics import SCORE_KEYS


def ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(scope="module")
def avvp_run(tmp_path_factory):
    """The embedded AVVP default as a user runs it: the tiny recipe writes its synthetic set."""
    root = tmp_path_factory.mktemp("avvp")
    data, run = root / "C", root / "RUN"
    ok("--quiet", "train", "--recipe", "avvp-tiny", "--output", run, f"data.path={data}")
    return root, data, run


@pytest.mark.slow
def test_the_tiny_avvp_recipe_learns_all_three_modalities(avvp_run):
    """Test F-scores far above an untrained model's: predicting every class in every segment
    scores 4-5 on this set, random halves 0-3, a head that has not parted its classes 15 / 25 / 40
    (it predicts nothing). Measured (segment level audio / visual / audio-visual, event-level
    Type@AV): 67.3 / 83.1 / 83.1, 85.0 with the recipe's seed 1; 72.0 / 73.1 / 83.1, 83.3 with
    train.seed=2; 62.5 / 53.1 / 73.1, 70.0 with train.seed=3."""
    root, data, run = avvp_run
    out = root / "learned.json"
    ok("--quiet", "eval", "--checkpoint", run, "--data", data, "--split", "test", "--json", out)
    scores = json.loads(out.read_text())
    for key in ("segment_audio", "segment_visual", "segment_av"):
        assert scores[key] >= 40.0, (key, scores)
    assert scores["event_type"] >= 40.0, scores


@pytest.mark.slow
def test_avvp_train_eval_extract_tsne(avvp_run):
    root, data, run = avvp_run
    assert (run / "best.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "segment_type" in record["val"]  # selection metric: validation segment-level Type@AV

    out = root / "test.json"
    result = ok("eval", "--checkpoint", run, "--data", data, "--split", "test", "--json", out)
    assert "Segment-level" in result.output and "Event-level" in result.output
    metrics = json.loads(out.read_text())
    assert metrics["task"] == "avvp" and metrics["split"] == "test" and metrics["num_samples"] > 0
    for key in SCORE_KEYS:
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["segment_type"] == pytest.approx(
        (metrics["segment_audio"] + metrics["segment_visual"] + metrics["segment_av"]) / 3
    )

    feats = root / "feats.npz"
    ok("extract", "--checkpoint", run, "--data", data, "--split", "test", "--out", feats)
    with np.load(feats) as f:
        n = metrics["num_samples"]
        assert f["visual"].shape[:2] == (n, 10) and f["audio"].shape[:2] == (n, 10)
        assert f["segment_labels"].shape == (n, 10)
        assert str(f["task"]) == "avvp"

    fig = root / "tsne.png"
    ok("visualize", "tsne", "--checkpoint", run, "--data", data, "--split", "test", "--out", fig)
    assert fig.read_bytes().startswith(b"\x89PNG")
    scores = json.loads(fig.with_suffix(".json").read_text())
    assert len(scores) == 4


def test_avvp_eval_on_train_split_explains_missing_ground_truth(avvp_run):
    _, data, run = avvp_run
    result = CliRunner().invoke(
        app, ["eval", "--checkpoint", str(run), "--data", str(data), "--split", "train"]
    )
    assert result.exit_code == 1
    assert "segment ground truth" in " ".join(result.output.split())
