"""AVQA through the CLI, as a user runs it: prepare --synthetic -> train stage 1 -> train stage 2
(from stage 1) -> eval (the per-type table and JSON) -> extract / t-SNE; the tiny run learns the
synthetic set; release-layout files of both stages load through eval, convert and
``load_official_checkpoint``."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest
import torch
from conftest import invoke, ok

from dgsct_cli.tasks.avqa import SUB_TYPE_KEYS, TRANSFER_MODULES

ADAPTER_LISTS = (
    "audio_adapter_blocks_p1",
    "vis_adapter_blocks_p1",
    "audio_adapter_blocks_p2",
    "vis_adapter_blocks_p2",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("avqa")
    data, stage1, stage2 = root / "C", root / "G", root / "R"
    # One decoding process: a spawn pool's start costs more than 32 small videos.
    ok("--quiet", "prepare", "avqa", "--synthetic", "--out", data, "--videos", 32, "--image-size", 32,
       "--workers", 1)  # fmt: skip
    ok("--quiet", "train", "--recipe", "avqa-grounding-tiny", "--data", data, "--output", stage1)
    ok(
        "--quiet",
        "train",
        "--recipe",
        "avqa-tiny",
        "--data",
        data,
        "--output",
        stage2,
        f"train.init_from.checkpoint={stage1}",
    )
    return root, data, stage1, stage2


@pytest.mark.slow
def test_the_tiny_avqa_run_learns_the_synthetic_set(runs):
    """The answer accuracy on the test questions is well above always giving the most common
    test answer (the run learns at least which instrument is shown)."""
    root, data, _, stage2 = runs
    out = root / "learned.json"
    ok("--quiet", "eval", "--checkpoint", stage2, "--data", data, "--split", "test", "--json", out)
    metrics = json.loads(out.read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    answers = [manifest["samples"][i]["targets"]["answer"][0] for i in manifest["splits"]["test"]]
    majority = 100.0 * collections.Counter(answers).most_common(1)[0][1] / len(answers)
    assert metrics["accuracy"] >= majority + 20, (metrics["accuracy"], majority)
    assert metrics["visual_location"] >= 80.0, metrics


@pytest.mark.slow
def test_the_tiny_stage1_run_learns_to_tell_a_videos_own_frames(runs):
    """Stage 1's pair accuracy on the test split is well above chance (50%). The best possible on
    the synthetic set is 75%: a quarter of its videos play another instrument than they show, and
    another video's frame shows the instrument heard a quarter of the time."""
    root, data, stage1, _ = runs
    out = root / "stage1.json"
    ok("--quiet", "eval", "--checkpoint", stage1, "--data", data, "--split", "test", "--json", out)
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] >= 60.0, metrics


@pytest.mark.slow
def test_stage2_starts_from_stage1_and_eval_prints_the_per_type_table(runs):
    root, data, stage1, stage2 = runs
    copied = json.loads((stage2 / "init_from.json").read_text())["copied"]
    assert sorted(copied) == sorted(f"{m}.{p}" for m in TRANSFER_MODULES for p in ("weight", "bias"))
    record = json.loads((stage2 / "metrics.jsonl").read_text().splitlines()[0])
    assert "audio_visual_accuracy" in record["val"]

    out = root / "test.json"
    result = ok("eval", "--checkpoint", stage2, "--data", data, "--split", "test", "--json", out)
    for text in ("Audio (AQ)", "Visual (VQ)", "Audio-Visual (AVQ)", "Overall (Avg)", "Existential"):
        assert text in result.output
    metrics = json.loads(out.read_text())
    # 6 test videos: 6 location and 6 counting questions, 3 existential ones (videos 0, 3 and 4
    # of the split: as many "yes" as "no" answers, but for the odd video out).
    assert metrics["task"] == "avqa" and metrics["split"] == "test" and metrics["num_samples"] == 15
    for key in ("accuracy", "audio_accuracy", "visual_accuracy", "audio_visual_accuracy", *SUB_TYPE_KEYS):
        assert key in metrics
    assert metrics["audio_comparative"] is None  # no such questions in the synthetic set
    assert metrics["question_counts"]["total"] == 15
    per_template = metrics["per_template"]
    assert set(per_template) == {
        "What kind of musical instrument is it",
        "Is there a <Object> sound",
        "Is this sound from the instrument in the video",
    }
    assert [per_template[t]["questions"] for t in sorted(per_template)] == [6, 3, 6]

    result = ok("eval", "--checkpoint", stage1, "--data", data, "--split", "val")
    assert "pair accuracy" in result.output


@pytest.mark.slow
def test_extract_and_tsne_colour_by_answer_or_question_type(runs):
    root, data, _, stage2 = runs
    feats = root / "feats.npz"
    ok(
        "extract",
        "--checkpoint",
        stage2,
        "--data",
        data,
        "--split",
        "test",
        "--out",
        feats,
        "--labels",
        "type",
    )
    with np.load(feats) as f:
        assert f["visual"].shape[:2] == (15, 10) and f["segment_labels"].shape == (15, 10)
        assert str(f["task"]) == "avqa" and f["label_names"][3] == "Visual/Location"
        assert set(np.unique(f["segment_labels"])) == {0, 3, 4}
    fig = root / "tsne.png"
    ok("visualize", "tsne", "--checkpoint", stage2, "--data", data, "--split", "test", "--out", fig)
    assert (
        fig.read_bytes().startswith(b"\x89PNG") and len(json.loads(fig.with_suffix(".json").read_text())) == 4
    )
    result = invoke("extract", "--checkpoint", stage2, "--data", data, "--out", feats, "--labels", "colour")
    assert result.exit_code == 1 and "label kinds are: answer, type" in " ".join(result.output.split())


# -- release checkpoints of both stages -------------------------------------------------------------


def _previous_stage_downsample(key: str) -> str:
    """timm's layout (merge at the start of stage i) -> the release's (end of stage i-1)."""
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    return f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key


def to_release_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the release's, saved from nn.DataParallel (``module.`` keys)."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder.visual."):
            name = "swin." + _previous_stage_downsample(key[len("encoder.visual.") :])
        elif key.startswith("encoder.audio."):
            name = "htsat." + _previous_stage_downsample(key[len("encoder.audio.") :])
        elif key.startswith("encoder.") and key.split(".")[1] in ADAPTER_LISTS:
            name = key[len("encoder.") :]
        elif key.startswith("head."):
            name = key[len("head.") :]
        else:
            raise AssertionError(f"no release name for {key}")
        out["module." + name] = value
    return out


@pytest.mark.slow
def test_release_layout_files_of_both_stages_evaluate_convert_and_load(runs):
    from dgsct_cli.checkpoint import load_checkpoint
    from dgsct_cli.config import load_recipe
    from dgsct_cli.convert import load_official_checkpoint

    root, data, stage1, stage2 = runs
    model, _, _ = load_checkpoint(stage2 / "best.safetensors")
    release = to_release_layout(model.state_dict())
    # Modules the release builds but never runs ride along, as in avst.pt.
    for name in ("fc_a1_pure", "fc_a2_pure"):
        release[f"module.{name}.weight"] = release[f"module.{name[:5]}.weight"].clone()
        release[f"module.{name}.bias"] = release[f"module.{name[:5]}.bias"].clone()
    release["module.norm3.weight"], release["module.norm3.bias"] = torch.ones(4), torch.zeros(4)
    path = root / "avst.pt"
    torch.save(release, path)

    ours, theirs = root / "ours.json", root / "release.json"
    ok("--quiet", "eval", "--checkpoint", stage2, "--data", data, "--json", ours)
    ok("--quiet", "eval", "--checkpoint", path, "--recipe", "avqa-tiny", "--data", data, "--json", theirs)
    a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
    assert b["checkpoint_kind"] == "release" and b["task"] == "avqa"
    assert a["accuracy"] == b["accuracy"] and a["per_template"] == b["per_template"]

    converted = root / "converted.safetensors"
    ok("--quiet", "convert", "avqa", path, "--out", converted, "--recipe", "avqa-tiny")
    again = root / "converted.json"
    ok("--quiet", "eval", "--checkpoint", converted, "--data", data, "--json", again)
    assert json.loads(again.read_text())["accuracy"] == a["accuracy"]

    # Stage 1's file (lavish_grounding_gen_best.pt layout) loads strictly into the grounding model.
    grounding, recipe, _ = load_checkpoint(stage1 / "best.safetensors")
    stage1_file = root / "grounding.pt"
    torch.save(to_release_layout(grounding.state_dict()), stage1_file)
    loaded = load_official_checkpoint("avqa-grounding", stage1_file, load_recipe("avqa-grounding-tiny").model)
    for key, value in grounding.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    result = invoke("convert", "avqa", stage1_file, "--out", root / "x.safetensors", "--recipe", "avqa-tiny")
    assert result.exit_code == 1
    assert "this is an AVQA-GROUNDING release checkpoint, expected AVQA" in " ".join(result.output.split())


def test_bench_runs_an_avqa_training_step():
    ok("--quiet", "bench", "--recipe", "avqa-tiny", "--steps", 1, "--warmup", 0, "--batch-size", 2)


@pytest.mark.slow
def test_init_from_copies_stage1_tensors_and_nothing_else(runs, tmp_path):
    from dgsct_cli.checkpoint import read_checkpoint_tensors
    from dgsct_cli.config import load_recipe
    from dgsct_cli.train import Trainer

    _, data, stage1, _ = runs
    recipe = load_recipe("avqa-tiny", [f"train.init_from.checkpoint={stage1}"])
    trainer = Trainer(recipe, data, tmp_path / "run", show_progress=False)
    trainer._build()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._init_from()
    after = trainer.model.state_dict()
    source = read_checkpoint_tensors(stage1 / "best.safetensors")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == set(trainer.init_copied) and len(changed) == 14
    for key in changed:
        assert torch.equal(after[key], source[key]), key


def test_the_recipes_hold_the_release_settings():
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import create_model

    stage2 = load_recipe("avqa.yaml")
    a = stage2.model.adapter
    assert (a.num_tokens, a.token_init, a.groups, a.use_bn, a.use_gate, a.audio_gate) == (
        2,
        "zeros",
        4,
        False,
        True,
        False,
    )
    t = stage2.train
    assert (t.lr, t.batch_size, t.early_stop, t.epochs, t.seed, t.mixup) == (1e-4, 8, 3, 80, 1, True)
    assert (t.scheduler.type, t.scheduler.step_size, t.scheduler.gamma) == ("step", 8, 0.1)
    assert sorted(t.init_from.modules) == sorted(TRANSFER_MODULES) and stage2.loss.match_weight == 0.5
    stage1 = load_recipe("avqa-grounding")
    assert not stage1.model.use_adapters and stage1.model.num_segments == 1
    assert (stage1.train.lr, stage1.train.batch_size, stage1.train.epochs) == (3e-4, 128, 30)

    # The trainable set: adapters and the whole head, the question embedding and LSTM included.
    model = create_model("avqa", load_recipe("avqa-tiny").model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.question_encoder.word2vec.weight" in trainable
    assert "head.question_encoder.lstm.weight_hh_l0" in trainable
    assert any("vis_adapter_blocks_p1" in n for n in trainable)
    assert not any(n.startswith(("encoder.visual.", "encoder.audio.")) for n in trainable)
    grounding = create_model("avqa-grounding", load_recipe("avqa-grounding-tiny").model)
    assert not list(grounding.encoder.adapter_modules()[0]) and not grounding.encoder.pairs
    assert {n.split(".")[1] for n, p in grounding.named_parameters() if p.requires_grad} == {
        "fc_a1", "fc_a2", "fc_gl", "fc1", "fc2", "fc3", "fc4"
    }  # fmt: skip
