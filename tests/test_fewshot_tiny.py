"""Few-shot without the published files: every missing file named at once before any work, random
files in the published layouts (the package's writer), and the tiny recipes ``fewshot-ave-tiny``
and ``pretrain-vggsound40k-tiny`` through ``fewshot train``, ``sweep``, ``pretrain`` and
``zeroshot`` (each writes its files and data in the working folder, here a temp folder)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import invoke, ok
from test_fewshot_files import one_thread, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_every_missing_file_is_named_before_any_data_or_model(tmp_path, monkeypatch):
    """The full-size recipe without its three files: one message naming all three and where each
    comes from, before the synthetic data is written (nothing appears on disk)."""
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "fewshot", "train", "--recipe", "fewshot-ave", "--shots", "1", "--synthetic", "--data", "d"
    )
    message = flat(result.stderr)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "recipe fewshot-ave: 3 weight file(s) missing" in message
    for key, source in (
        ("model.visual.weights", "OpenAI's CLIP release"),
        ("model.audio.weights", "lukewys/laion_clap on Hugging Face"),
        ("model.text.tokenizer", "roberta-base repository on Hugging Face"),
    ):
        assert key in message and source in message
    assert "fewshot-ave-tiny" in message  # what to try instead
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data, no run folder
    # Files that are named but absent are listed with their paths, all of them.
    result = invoke(
        "fewshot", "pretrain", "--recipe", "pretrain-vggsound40k", "--data", "d",
        "model.visual.weights=w/clip.pt", "model.audio.weights=w/clap.pt", "model.text.tokenizer=w/tok",
    )  # fmt: skip
    message = flat(result.stderr)
    assert result.exit_code == 1 and "3 weight file(s) missing" in message
    assert "model.visual.weights: w/clip.pt not found" in message
    assert "model.audio.weights: w/clap.pt not found" in message
    assert "model.text.tokenizer: w/tok not found" in message


def test_random_files_load_through_the_published_readers(tmp_path):
    """The writer's files are read by the loaders of the real files: OpenAI CLIP, LAION CLAP and a
    roberta vocabulary of exactly the text tower's size (any size, roberta-base's included);
    writing again gives the same values."""
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import build_model
    from dgsct_cli.models.encoders.clap import read_clap_file
    from dgsct_cli.models.encoders.clip import read_openai_clip
    from dgsct_cli.models.encoders.clip_clap_files import write_random_files, write_roberta_tokenizer
    from dgsct_cli.models.encoders.tokenizers import load_roberta_tokenizer

    files = tmp_path / "w"
    overrides = [
        f"model.visual.weights={files / 'clip.pt'}",
        f"model.audio.weights={files / 'clap.pt'}",
        f"model.text.tokenizer={files / 'tok'}",
    ]
    model_cfg = load_recipe("fewshot-ave-tiny", overrides).model
    written = write_random_files(model_cfg.visual, model_cfg.audio, model_cfg.text)
    assert sorted(p.name for p in written) == ["clap.pt", "clip.pt", "tok"]
    clip = torch.load(files / "clip.pt", weights_only=True)
    assert clip["visual.conv1.weight"].dtype == torch.float16 and int(clip["input_resolution"]) == 32
    clap = torch.load(files / "clap.pt", weights_only=True)
    assert set(clap) == {"state_dict"} and all(k.startswith("module.") for k in clap["state_dict"])
    assert "module.audio_branch.layers.0.downsample.reduction.weight" in clap["state_dict"]  # LAION's merge
    assert "module.text_branch.embeddings.position_ids" in clap["state_dict"]
    assert len(load_roberta_tokenizer(files / "tok", 320)) == 320
    torch.manual_seed(0)
    model = build_model(load_recipe("fewshot-ave-tiny", overrides))  # strict loads
    again = tmp_path / "again"
    again_cfg = load_recipe("fewshot-ave-tiny", [o.replace(str(files), str(again)) for o in overrides]).model
    write_random_files(again_cfg.visual, again_cfg.audio, again_cfg.text)
    first, second = read_openai_clip(files / "clip.pt"), read_openai_clip(again / "clip.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    first, second = read_clap_file(files / "clap.pt"), read_clap_file(again / "clap.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(
        model.encoder.visual.conv1.weight, read_openai_clip(files / "clip.pt")["visual.conv1.weight"]
    )
    # roberta-base's size: 50,265 entries, <mask> last, the prompt words merged.
    tok = load_roberta_tokenizer(write_roberta_tokenizer(tmp_path / "base", 50265), 50265)
    assert tok.convert_tokens_to_ids("<mask>") == 50264 and tok.pad_token_id == 1
    assert tok.tokenize("The sounds of dog")[:3] == ["The", "Ġsounds", "Ġof"]


def test_an_unset_clap_file_is_reported_as_random(caplog):
    from dgsct_cli.models.encoders.clap import CLAPAudioConfig, ClipClapTextConfig, clap_towers

    tiny = dict(n_fft=256, mel_bins=16, spec_size=64, embed_dim=16, depths=[2, 2, 6, 2], num_heads=[1, 1, 2, 2],
                window_size=4, projection_dim=32)  # fmt: skip
    roberta = dict(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    logger = logging.getLogger("dgsct_cli.models.encoders")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the suite silences these warnings (conftest)
    try:
        with caplog.at_level(logging.WARNING, logger="dgsct_cli.models.encoders.clap"):
            clap_towers(CLAPAudioConfig(**tiny), ClipClapTextConfig(roberta=roberta, projection_dim=32), True)
    finally:
        logger.setLevel(level)
    assert "model.audio.weights is not set: CLAP" in caplog.text and "randomly initialised" in caplog.text


# -- the tiny recipes, end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder where ``fewshot-ave-tiny`` trained once (its files and data written there)."""
    import os

    folder = tmp_path_factory.mktemp("fewshot-tiny")
    previous = os.getcwd()
    os.chdir(folder)
    try:
        with single_thread():
            result = ok("fewshot", "train", "--recipe", "fewshot-ave-tiny", "--shots", "2", "train.epochs=2")
        assert "wrote random weight files" in flat(result.stderr)
    finally:
        os.chdir(previous)
    return folder


def test_fewshot_train_on_the_tiny_recipe(workdir):
    for path in (
        "clip-vit-tiny.pt",
        "clap-htsat-tiny.pt",
        "roberta-tiny/vocab.json",
        "roberta-tiny/merges.txt",
    ):
        assert (workdir / "weights" / "random-tiny" / path).is_file()
    assert (workdir / "data" / "fewshot-ave-tiny" / "manifest.json").is_file()
    summary = json.loads((workdir / "runs" / "fewshot-ave-tiny-K2" / "fewshot.json").read_text())
    assert summary["task"] == "fewshot-ave" and summary["shots"] == 2 and summary["train_samples"] == 8
    assert 0 <= summary["test_accuracy"] <= 100 and summary["epochs"] == 2


def test_fewshot_sweep_on_the_tiny_recipe(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    result = ok("fewshot", "sweep", "--recipe", "fewshot-ave-tiny", "--shots", "1,2", "train.epochs=1")
    table = json.loads((workdir / "runs" / "fewshot-ave-tiny-sweep" / "sweep.json").read_text())
    assert [r["shots"] for r in table["runs"]] == [1, 2] and all(
        r["accuracy"] is not None for r in table["runs"]
    )
    assert (workdir / "runs" / "fewshot-ave-tiny-sweep" / "sweep.png").is_file()
    assert "wrote random weight files" not in result.stderr  # already there: not written again


@pytest.mark.slow
def test_fewshot_pretrain_and_zeroshot_on_the_tiny_recipes(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    ok("fewshot", "pretrain", "--recipe", "pretrain-vggsound40k-tiny", "train.epochs=2")
    run_dir = Path("runs") / "pretrain-vggsound40k-tiny"
    assert (workdir / run_dir / "best.safetensors").is_file()
    for metric in ("segment", "video"):
        out = workdir / f"zeroshot-{metric}.json"
        result = ok(
            "fewshot", "zeroshot", "--checkpoint", run_dir, "--dataset", "ave", "--metric", metric,
            "--data", "data/fewshot-ave-tiny", "--json", out,
        )  # fmt: skip
        score = json.loads(out.read_text())
        assert score["classes"] == 4 and 0 <= score["accuracy"] <= 100
        assert f"zero-shot ave {metric} accuracy" in result.output


def test_on_and_off_overrides_are_the_words_not_booleans():
    """YAML reads on/off as booleans: ``model.recompute=on`` (the README's remedy for the full-size
    few-shot recipes' memory on a CPU) must still mean the word."""
    from dgsct_cli.config import RecipeError, load_recipe

    assert load_recipe("fewshot-ave", ["model.recompute=on"]).model.recompute == "on"
    assert load_recipe("ave-tiny", ["model.recompute=off"]).model.recompute == "off"
    with pytest.raises(RecipeError, match="expected true/false"):
        load_recipe("ave-tiny", ["model.encoders_train_mode=maybe"])
