"""AVS end to end: the model call, the trainable sets, the HTS-AT front end as weights, and the CLI path
prepare --synthetic -> train -> eval -> visualize masks for S4 (which learns the synthetic set) and MS3."""

from __future__ import annotations

import copy
import json
import re
import shlex

import pytest
import torch
from typer.testing import CliRunner

from dgsct_cli.config import load_recipe
from dgsct_cli.factory import build_model


def _run(*args: str):
    from dgsct_cli.cli.app import app

    result = CliRunner().invoke(app, ["--quiet", *args])
    assert result.exit_code == 0, result.output
    return result


def _inputs(batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 5, 3, 224, 224, generator=g), torch.randn(batch, 5, 64000, generator=g) * 0.1


def test_model_call_returns_masks_maps_and_audio():
    torch.manual_seed(0)
    model = build_model(load_recipe("avs-ms3-tiny")).eval()
    frames, audio = _inputs(2)
    with torch.no_grad():
        out = model(frames=frames, audio=audio)
    assert tuple(out["mask_logits"].shape) == (10, 1, 224, 224)  # [B*5, 1, 224, 224], video-major
    for i, side in enumerate((56, 28, 14, 7)):
        assert (
            tuple(out[f"feature_map_{i}"].shape) == (10, 8, side, side)
            and (out[f"feature_map_{i}"] >= 0).all()
        )
        assert tuple(out[f"tpavi_audio_{i}"].shape) == (2, 5, 8)
    # video-major: the second video's frames alone give the same rows
    with torch.no_grad():
        alone = model(frames=frames[1:], audio=audio[1:])["mask_logits"]
        # inference decodes one video at a time (memory): the same as decoding the batch at once
        feats = model.encode(frames, audio, needs=model.needs)
        batched = model.head.decode(feats.visual_stages, feats.audio)["mask_logits"]
    assert torch.allclose(alone, out["mask_logits"][5:], atol=1e-4)
    assert torch.allclose(batched, out["mask_logits"], atol=1e-5)
    with pytest.raises(ValueError, match=r"frames: expected \[B, 5, 3, 224, 224\]"):
        model(frames=torch.zeros(1, 5, 3, 64, 64), audio=audio[:1])


def test_trainable_sets_follow_the_release():
    s4 = build_model(load_recipe("avs-s4-tiny"))
    trainable = {n for n, p in s4.named_parameters() if p.requires_grad}
    assert "encoder.audio.logmel_extractor.melW" in trainable  # S4 fine-tunes HTS-AT, front end included
    assert "encoder.audio.spectrogram_extractor.stft.conv_real.weight" in trainable
    assert "encoder.audio.layers.0.blocks.0.attn.qkv.weight" in trainable
    assert not any(n.startswith("encoder.visual.") for n in trainable)  # Swin frozen
    assert "head.tpavi_b1.theta.weight" in trainable and "encoder.vis_adapter_blocks_p1.0.gate" in trainable
    ms3 = build_model(load_recipe("avs-ms3-tiny"))
    assert not any(n.startswith("encoder.audio.") for n, p in ms3.named_parameters() if p.requires_grad)
    # S4's resize projection builds no token conv; MS3 uses it
    assert s4.encoder.vis_adapter_blocks_p1[0].conv_adapter is None
    assert ms3.encoder.vis_adapter_blocks_p1[0].conv_adapter is not None


def test_front_end_weights_in_a_checkpoint_are_used(tmp_path):
    from dgsct_cli.checkpoint import load_checkpoint, save_checkpoint

    recipe = load_recipe("avs-s4-tiny")
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    frames, audio = _inputs()
    keys = ("audio_features", "tpavi_audio_0", "mask_logits")
    with torch.no_grad():
        before = model(frames=frames, audio=audio)
        tuned = copy.deepcopy(model)
        tuned.encoder.audio.logmel_extractor.melW.mul_(1.5).add_(0.01)
        tuned.encoder.audio.spectrogram_extractor.stft.conv_real.weight.mul_(0.8)
        after = tuned(frames=frames, audio=audio)
    # (At initialisation the audio reaches the masks only faintly: TPAVI's W_z starts at zero.)
    assert not torch.allclose(before["audio_features"], after["audio_features"], atol=1e-3)
    assert not torch.allclose(before["tpavi_audio_0"], after["tpavi_audio_0"], atol=1e-4)
    save_checkpoint(tuned, recipe, tmp_path / "tuned.safetensors")
    loaded, _, _ = load_checkpoint(tmp_path / "tuned.safetensors")
    with torch.no_grad():
        again = loaded.eval()(frames=frames, audio=audio)
    for key in keys:
        assert torch.allclose(again[key], after[key], atol=1e-6), key


def test_a_file_without_front_end_kernels_loads_the_computed_ones(tmp_path):
    from dgsct_cli.models.encoders.htsat import HTSAT, LogMelFrontEnd, load_htsat_weights
    from dgsct_cli.models.weights import CheckpointError

    cfg = copy.deepcopy(load_recipe("avs-s4-tiny").model.audio)
    model = HTSAT(cfg)
    fresh = HTSAT(cfg)
    with torch.no_grad():
        model.logmel_extractor.melW.mul_(2.0)
    # the published layout (patch merging at the end of a stage: timm's layers.i+1 is HTS-AT's layers.i)
    without = {
        re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
        for k, v in fresh.state_dict().items()
        if "extractor" not in k
    }
    load_htsat_weights(model, without)
    assert torch.equal(model.logmel_extractor.melW, fresh.logmel_extractor.melW)
    # ... which are the standard front end: the same log-mel as the computed one
    wave = torch.randn(2, 32000) * 0.1
    standard = LogMelFrontEnd(cfg)(wave)
    assert torch.allclose(model.compute_log_mel(wave), standard, atol=1e-3)
    partial = {**without, "logmel_extractor.melW": fresh.logmel_extractor.melW}
    with pytest.raises(CheckpointError, match="only part of the HTS-AT front end"):
        load_htsat_weights(model, partial)


def _baseline(evaluator_cls, data, value: float) -> float:
    """M_J of a constant mask (all foreground or all background) on the test split."""
    from dgsct_cli.data.manifest import PreparedCache

    cache = PreparedCache(data)
    evaluator = evaluator_cls()
    for i in cache.split_indices("test"):
        video = cache.samples[i]["video_id"]
        masks = torch.from_numpy(cache.array("masks", video).copy()).float()[None]
        evaluator.update({"mask_logits": torch.full((5, 1, 224, 224), value)}, {"masks": masks})
    return evaluator.compute()["miou"]


def test_s4_cli_prepare_train_eval_visualize_and_it_learns(tmp_path):
    from dgsct_cli.tasks.avs import AVSEvaluator

    data, run = tmp_path / "data", tmp_path / "run"
    _run("prepare", "avs", "--setting", "s4", "--synthetic", "--out", str(data))
    _run("train", "--recipe", "avs-s4-tiny", "--data", str(data), "--output", str(run))
    _run(
        "eval",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--split",
        "test",
        "--json",
        str(tmp_path / "t.json"),
    )
    metrics = json.loads((tmp_path / "t.json").read_text())
    assert metrics["task"] == "avs-s4" and metrics["split"] == "test" and metrics["num_samples"] == 4
    background = _baseline(AVSEvaluator, data, -10.0)
    foreground = _baseline(AVSEvaluator, data, 10.0)
    assert metrics["miou"] > max(background, foreground) + 25, (metrics, background, foreground)
    assert 0 <= metrics["fscore"] <= 100
    out = _run(
        "visualize",
        "masks",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "fig"),
        "--limit",
        "2",
    )
    figures = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert len(figures) == 3 and "index.html" in figures and "wrote 2 figures" in out.stdout
    assert "syns4_" in (tmp_path / "fig" / "index.html").read_text()


def test_ms3_cli_prepare_train_eval_visualize(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    _run("prepare", "avs", "--setting", "ms3", "--synthetic", "--videos", "6", "--out", str(data))
    _run("train", "--recipe", "avs-ms3-tiny", "--data", str(data), "--output", str(run), "train.epochs=1")
    out = _run(
        "eval",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--split",
        "val",
        "--json",
        str(tmp_path / "v.json"),
    )
    metrics = json.loads((tmp_path / "v.json").read_text())
    assert {"task", "split", "num_samples", "miou", "fscore"} <= set(metrics) and metrics["task"] == "avs-ms3"
    assert "M_J" in out.stdout and "M_F" in out.stdout
    _run(
        "visualize",
        "masks",
        "--checkpoint",
        str(run),
        "--data",
        str(data),
        "--split",
        "val",
        "--out",
        str(tmp_path / "fig"),
    )
    assert (tmp_path / "fig" / "index.html").is_file()
    from dgsct_cli.cli.app import app

    result = CliRunner().invoke(
        app, ["eval", "--checkpoint", str(run), "--data", str(data), "--split", "nope"]
    )
    assert result.exit_code == 1 and "unknown split 'nope'" in result.output
    _run("bench", "--recipe", "avs-ms3-tiny", "--steps", "1", "--warmup", "0", "--batch-size", "1")


@pytest.mark.parametrize(
    ("recipe", "hint"),
    [("avs-ms3-tiny", "avs --setting ms3"), ("avs-s4-tiny", "avs --setting s4"), ("fewshot-ave", "ave")],
)
def test_missing_data_names_the_prepare_command_that_makes_it(tmp_path, recipe, hint):
    from dgsct_cli.cli.app import app

    missing = tmp_path / "nothing"
    files = []
    if recipe.startswith("fewshot"):  # its weight files are checked first: stand-ins that exist
        (tmp_path / "tok").mkdir()
        for name in ("clip.pt", "clap.pt", "tok/vocab.json", "tok/merges.txt"):
            (tmp_path / name).touch()
        files = [f"model.visual.weights={tmp_path / 'clip.pt'}", f"model.audio.weights={tmp_path / 'clap.pt'}",
                 f"model.text.tokenizer={tmp_path / 'tok'}"]  # fmt: skip
    result = CliRunner().invoke(
        app, ["train", "--recipe", recipe, "--data", str(missing), "--output", str(tmp_path / "r"), *files]
    )
    message = " ".join(result.stderr.split())
    assert (
        result.exit_code == 1 and f"run 'dgsct prepare {hint} --root ROOT --out {missing}' first" in message
    )
    assert f"'dgsct prepare {hint} --synthetic --out {missing}'" in message
    # Both commands parse as printed (ROOT stands for a folder): every option exists, none is missing.
    import click
    import typer

    from dgsct_cli.cli.prepare_cmd import prepare_app

    group = typer.main.get_command(prepare_app)
    for command in re.findall(r"'dgsct prepare ([^']+)'", message):
        name, *args = shlex.split(command.replace("ROOT", str(tmp_path)))
        sub = group.get_command(click.Context(group), name)
        sub.make_context(name, args)
