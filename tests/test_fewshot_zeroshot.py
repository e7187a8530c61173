"""Pre-training on VGG-Sound(40K) and zero-shot AVE / LLP: the release's objective and scoring
(tests/fixtures/release/fewshot/zeroshot.pt), ``prepare vggsound40k``, and pre-training on a tiny
synthetic set followed by zero-shot scoring on tiny AVE and LLP caches, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES
from test_fewshot_files import one_thread, single_thread, tiny_overrides  # noqa: F401
from typer.testing import CliRunner

from dgsct_cli.cli.app import app
from dgsct_cli.config import load_recipe
from dgsct_cli.tasks.fewshot import FewShotEvaluator, combine_losses, fewshot_loss_terms

REF = FIXTURES / "fewshot" / "zeroshot.pt"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref():
    return torch.load(REF, weights_only=True)


def ok(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


# -- the release's numbers ------------------------------------------------------------------------


def test_pretraining_objective_and_validation_match_the_release(ref):
    """Per-segment soft CE over 142 classes + the two InfoNCE terms with the loss-adaptive,
    non-detached weights (pretrain/main_trans.py:85-160), and the per-batch mean of video
    accuracies where predicting background is always wrong (:175-224)."""
    train = ref["pretrain"]["train"]
    cfg = load_recipe("pretrain-vggsound40k", ["loss.weighting=adaptive"]).loss
    batch = {"segment_labels": train["GT"].argmax(-1), "background_index": torch.tensor([141, 141])}
    for epoch, expected in train["by_epoch"].items():
        scores = train["outputs"]["event_scores"].clone().requires_grad_(True)
        outputs = {"event_logits": scores.view(2, 10, -1)}
        outputs.update({k: train["outputs"][k] for k in ("logits_audio_image", "logits_image_audio")})
        terms = fewshot_loss_terms(outputs, batch, cfg, 141)
        total = combine_losses(terms, cfg, int(epoch))
        torch.testing.assert_close(terms["event"], expected["loss_event"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(total, expected["loss_total"], rtol=1e-5, atol=1e-5)
        total.backward()
        torch.testing.assert_close(scores.grad, expected["grad_event_scores"], rtol=1e-4, atol=1e-7)
    ev = FewShotEvaluator("video", 141, averaging="batch_mean", no_event="class0")
    for b in ref["pretrain"]["eval"]["batches"]:
        n = b["GT"].shape[0]
        ev.update({"event_logits": b["event_scores"].view(n, 10, -1)}, {"segment_labels": b["GT"].argmax(-1)})
    torch.testing.assert_close(torch.tensor([ev.compute()["accuracy"]]), ref["pretrain"]["eval"]["mean_acc"])


@pytest.mark.parametrize("case", ["AVE_segment", "AVE_video", "LLP_video"])
def test_zero_shot_scoring_matches_the_release(ref, case):
    """zero_shot.py's global accuracies: AVE background segments cannot be won (28 scores), an
    event-less AVE video counts as class 0, LLP's target is the lowest true class index."""
    r = ref["validate_epoch"][case]
    metric = "segment" if r["is_event_score"] else "video"
    ev = FewShotEvaluator(metric, 28, averaging="global", llp_rule="lowest", no_event="class0")
    for b in r["batches"]:
        n = b["GT"].shape[0]
        batch = {"labels": b["GT"]} if b["GT"].dim() == 2 else {"segment_labels": b["GT"].argmax(-1)}
        ev.update({"event_logits": b["event_scores"].view(n, 10, -1)}, batch)
    assert ev.compute()["accuracy"] == pytest.approx(float(r["acc"]), abs=1e-4)


def test_zero_shot_rules_on_hand_made_cases():
    # A background segment cannot be won with 3 class scores; an event segment can.
    ev = FewShotEvaluator("segment", 3)
    scores = torch.zeros(1, 10, 3)
    scores[0, :, 1] = 1.0
    ev.update({"event_logits": scores}, {"segment_labels": torch.tensor([[1] * 4 + [3] * 6])})
    assert ev.compute()["accuracy"] == pytest.approx(40.0)
    # LLP Speech + Dog predicted Dog: right by any true class, wrong by the lowest index.
    labels = torch.zeros(1, 25)
    labels[0, [0, 3]] = 1.0
    scores = torch.zeros(1, 10, 25)
    scores[0, :, 3] = 1.0
    for rule, acc in (("any", 100.0), ("lowest", 0.0)):
        ev = FewShotEvaluator("video", None, llp_rule=rule)
        ev.update({"event_logits": scores}, {"labels": labels})
        assert ev.compute()["accuracy"] == acc


# -- prepare ----------------------------------------------------------------------------------------


def test_prepare_vggsound40k_layout_resume_and_bad_rows(tmp_path):
    from dgsct_cli.data.vggsound import VGG_LABELS_FILE, prepare_vggsound40k, write_synthetic_vggsound40k

    root = write_synthetic_vggsound40k(tmp_path / "raw", num_videos=10, image_size=32)
    with (root / VGG_LABELS_FILE).open("a") as f:
        f.write('train,Nope,99,"[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"\ntrain,Bark,98,"[1, 1]"\n')
    with pytest.raises(ValueError, match=r"vggsound-avel40k_labels.csv:12: unknown category 'Nope'"):
        prepare_vggsound40k(root, tmp_path / "strict", image_size=32, strict=True, progress=False)
    (root / "wave" / "000003.npy").write_bytes(b"not a numpy file")
    summary = prepare_vggsound40k(
        root, tmp_path / "c", image_size=32, val_every=3, extra_sizes=(48,), progress=False
    )
    assert len(summary.bad_lines) == 2 and "label must be a list of 10" in summary.bad_lines[1]
    assert [s.video_id for s in summary.skipped] == ["000003"] and "wave" in summary.skipped[0].reason
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["class_names"][:2] == ["Church bell", "Male speech, man speaking"]
    assert manifest["background_index"] == 4 and manifest["frame_sizes"] == [48]
    first = manifest["samples"][0]
    assert first["id"] == "000000" and len(first["targets"]["segment_labels"]) == 10
    assert set(manifest["splits"]) == {"train", "val", "test", "train_full"}
    assert sorted(manifest["splits"]["train_full"]) == sorted(
        manifest["splits"]["train"] + manifest["splits"]["val"]
    )
    again = prepare_vggsound40k(
        root, tmp_path / "c", image_size=32, val_every=3, extra_sizes=(48,), progress=False
    )
    assert again.decoded == 0 and again.reused == summary.decoded  # resumed: nothing read twice


# -- pre-train, then zero-shot ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, fewshot_files):
    """A tiny model pre-trained on a synthetic VGG-Sound(40K) set whose classes are the synthetic
    AVE set's (the same names, drawn the same way)."""
    root = tmp_path_factory.mktemp("pretrain")
    with single_thread():
        ok(
            "prepare",
            "vggsound40k",
            "--synthetic",
            "--out",
            root / "vgg",
            "--videos",
            "24",
            "--image-size",
            "32",
        )
        ok(
            "fewshot", "pretrain", "--recipe", "pretrain-vggsound40k", "--data", root / "vgg", "--output",
            root / "run", *tiny_overrides(fewshot_files), "train.epochs=6", "train.lr=1e-2", "train.batch_size=4",
            "train.scheduler.type=none", "model.head.fusion=sum",
        )  # fmt: skip
    # The last epoch's weights: the tiny set's video-level selection metric favours early epochs.
    return root / "run" / "last.safetensors"


def test_pretrain_then_zero_shot_on_ave_is_above_chance(pretrained, fewshot_ave, tmp_path):
    manifest = json.loads((fewshot_ave / "manifest.json").read_text())
    labels = [
        v for i in manifest["splits"]["train"] for v in manifest["samples"][i]["targets"]["segment_labels"]
    ]
    chance = (
        100
        * sum(v != manifest["background_index"] for v in labels)
        / len(labels)
        / len(manifest["class_names"])
    )
    for metric, floor in (("segment", 1.5 * chance), ("video", 100 / len(manifest["class_names"]))):
        out = tmp_path / f"{metric}.json"
        result = ok(
            "fewshot", "zeroshot", "--checkpoint", pretrained, "--dataset", "ave", "--metric", metric,
            "--data", fewshot_ave, "--split", "train", "--json", out,
        )  # fmt: skip
        score = json.loads(out.read_text())
        assert score["protocol"] == "default" and score["prompt_context"] == "pre-trained"
        assert score["classes"] == 4 and score["published"] == (64.7 if metric == "segment" else 76.6)
        assert score["accuracy"] > floor, (metric, score["accuracy"], floor)
        assert f"zero-shot ave {metric} accuracy" in result.output


def test_zero_shot_on_llp_runs_end_to_end(pretrained, fewshot_llp, tmp_path):
    out = tmp_path / "llp.json"
    ok("fewshot", "zeroshot", "-c", pretrained, "--dataset", "llp", "--data", fewshot_llp, "--json", out)
    score = json.loads(out.read_text())
    assert score["metric"] == "video" and score["classes"] == 25 and 0 <= score["accuracy"] <= 100
    result = CliRunner().invoke(
        app,
        [
            "fewshot",
            "zeroshot",
            "-c",
            str(pretrained),
            "--dataset",
            "llp",
            "--metric",
            "segment",
            "--data",
            str(fewshot_llp),
        ],
    )
    assert (
        result.exit_code == 1 and "no zero-shot scoring for --dataset llp --metric segment" in result.stderr
    )


def test_release_preset_differs_exactly_where_the_release_does(pretrained, fewshot_ave):
    """B.2: a fresh random context (not the learned one), the adapters' BatchNorm in batch mode,
    the release's batch size; prompts rebuilt for the target's class names in both."""
    from dgsct_cli.checkpoint import load_checkpoint
    from dgsct_cli.fewshot_runs import zero_shot_model

    source, _, _ = load_checkpoint(pretrained)
    clean, clean_recipe, _ = zero_shot_model(pretrained, "ave", "video", fewshot_ave)
    release, release_recipe, _ = zero_shot_model(pretrained, "ave", "video", fewshot_ave, protocol="release")
    names = json.loads((fewshot_ave / "manifest.json").read_text())["class_names"]
    for model in (clean, release):
        assert model.head.class_names == names and model.head.clip_tokens.shape[0] == len(names)
        assert "background" not in model.head.class_names
    ctx = source.head.prompt_learner.ctx
    assert torch.equal(clean.head.prompt_learner.ctx, ctx)
    assert not torch.allclose(release.head.prompt_learner.ctx, ctx)
    assert release.head.prompt_learner.ctx.std().item() == pytest.approx(0.02, rel=0.5)
    modes = {name: m.training for name, m in release.named_modules()}
    assert all(modes[n] for n in modes if "_adapter_blocks_p" in n)
    assert not any(modes[n] for n in modes if "_adapter_blocks_p" not in n)
    assert not any(m.training for m in clean.modules())
    assert (clean_recipe.train.eval_batch_size, release_recipe.train.eval_batch_size) == (4, 16)
    # Every other weight is the pre-trained one.
    theirs = source.state_dict()
    for key, value in release.state_dict().items():
        if key != "head.prompt_learner.ctx":
            assert torch.equal(value, theirs[key]), key
