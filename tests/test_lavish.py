"""LAVisH and LAVisH* against numbers from LAVisH's own code (``tests/fixtures/release/lavish``;
how each file was made is in the fixtures' README): one adapter in five settings, LAVisH's audio
front end, the whole published AVE model (one shared Swin-V2-L) loaded from its ``MMIL_Net``
state dict, and LAVisH* (LAVisH adapters at DG-SCT's insertion points of Swin-V2-L + HTS-AT)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import EXCERPTS, FIXTURES, assert_regenerated, excerpt

from dgsct_cli.models.adapter import AdapterSettings
from dgsct_cli.models.encoders.swinv2_shared import SpectrogramImage, SpectrogramImageConfig
from dgsct_cli.models.lavish import LAVisHAdapter

HERE = FIXTURES / "lavish"


def _detfill():
    spec = importlib.util.spec_from_file_location("detfill", FIXTURES / "avvp-head" / "detfill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


detfill = _detfill()


def _load(name: str) -> dict:
    return torch.load(HERE / name, weights_only=True)


def _make_inputs():
    spec = importlib.util.spec_from_file_location("lavish_make_inputs", HERE / "make_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- one adapter -------------------------------------------------------------------------------------


def _settings(case: dict) -> AdapterSettings:
    o = case["options"]
    return AdapterSettings(
        kind="lavish",
        num_tokens=o["num_tokens"],
        reduction=o["reduction"],
        groups=o["groups"],
        use_bn=bool(o["use_bn"]),
        use_gate=bool(o["use_gate"]),
        ln_before=bool(o["ln_before"]),
        ln_post=bool(o["ln_post"]),
        guide_projection=case["bridge"] or "linear",
    )


@pytest.mark.parametrize(
    "name", ["lavish", "lavish_nogate_nobn", "lavish_no_ln", "star_linear", "star_token_conv"]
)
def test_one_lavish_adapter_matches_the_release(name):
    case = _load("lavish_adapter_small.pt")["cases"][name]
    c, length, cg, lg = case["dims"]
    adapter = LAVisHAdapter(c, length, cg, lg, _settings(case))
    own = adapter.state_dict()
    assert set(own) == set(case["weight_shapes"]), set(own) ^ set(case["weight_shapes"])
    adapter.load_state_dict(
        {k: detfill.fill("adapter." + k, v).to(own[k].dtype) for k, v in case["weight_shapes"].items()}
    )
    x = case["x"].squeeze(-1).transpose(1, 2)  # the release's [N, C, L, 1] -> ours [N, L, C]
    y = case["y"].squeeze(-1).transpose(1, 2)

    def ours() -> torch.Tensor:
        with torch.no_grad():
            out, spatial_map = adapter(x, y)
        assert spatial_map is None
        return out.transpose(1, 2).unsqueeze(-1)

    adapter.eval()
    torch.testing.assert_close(ours(), case["eval"], rtol=1e-4, atol=1e-5)
    adapter.train()  # batch statistics, and the running statistics they update
    torch.testing.assert_close(ours(), case["train"], rtol=1e-4, atol=1e-5)
    for key, value in case["state_after_train"].items():
        torch.testing.assert_close(adapter.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_the_shared_familys_audio_front_end_is_lavishs():
    """Waveform -> the normalised 192 x 192 Kaldi filterbank image LAVisH's ``_wav2fbank`` gives."""
    ref = _load("lavish_ave_full.pt")
    wave = _load("inputs.pt")["wave16k"][:3].float()
    image = SpectrogramImage(SpectrogramImageConfig())(wave)
    assert image.shape == (3, 3, 192, 192)
    assert torch.equal(image[:, 0], image[:, 2])  # the same image on the three colour channels
    torch.testing.assert_close(image[:, 0], ref["audio_spec"], rtol=1e-4, atol=1e-4)


# -- whole models (full size) ------------------------------------------------------------------------


def _state(ref: dict) -> dict[str, torch.Tensor]:
    """The reference's deterministic weights by key (the outputs check them: their recorded hashes
    hold only on the CPU kernels that made them; tests/fixtures/README.md, "Portability")."""
    state = {}
    for key, shape in ref["weight_shapes"].items():
        if detfill.skip(key):
            state[key] = torch.zeros(shape)
            continue
        state[key] = detfill.fill(key, shape)
    return state


@pytest.mark.slow
def test_lavish_ave_from_its_mmil_net_state_dict_matches_lavish():
    """LAVisH's AVE ``MMIL_Net`` state dict -> ``load_official_checkpoint("ave-lavish", ...)`` ->
    ``model(frames=[1, 10, 3, 192, 192], audio=[1, 10, 16000])``: LAVisH's per-segment
    probabilities (full size, one shared Swin-V2-L; about two minutes on 2 CPU cores)."""
    from dgsct_cli.convert import detect_release_task, load_official_checkpoint

    ref = _load("lavish_ave_full.pt")
    inputs = _load("inputs.pt")
    state = _state(ref)
    assert detect_release_task(state) == "ave-lavish"
    model = load_official_checkpoint("ave-lavish", state)
    del state
    assert model.cfg.family == "swinv2-shared" and model.cfg.adapter.kind == "lavish"
    with torch.no_grad():
        out = model(frames=inputs["frames"].float(), audio=inputs["wave16k"].float()[None])
    assert {"segment_logits", "event_logits", "visual_features", "audio_features"} <= set(out)
    assert out["segment_class_logits"].shape == (1, 10, 29)
    probs = torch.softmax(out["segment_class_logits"][0], dim=-1)
    assert _rel(probs, ref["p_av"]) < 1e-3
    torch.testing.assert_close(probs, ref["p_av"], rtol=1e-3, atol=1e-5)
    assert _rel(out["visual_features"][0], ref["pooled_visual"]) < 1e-3
    assert _rel(out["audio_features"][0], ref["pooled_audio"]) < 1e-3
    # LAVisH's prediction rule: the argmax over 28 classes + background, per segment.
    assert torch.equal(out["segment_class_logits"][0].argmax(-1), ref["p_av"].argmax(-1))


@pytest.mark.slow
def test_lavish_star_ave_matches_lavish_adapters_in_dgscts_model():
    """LAVisH* (DG-SCT's AVE model with LAVisH adapters at its 12 block pairs, tokens pooled by
    their mean) against DG-SCT's release model run with LAVisH's adapter code in place of DG-SCT's
    (full size: about two minutes on 2 CPU cores)."""
    from dgsct_cli.config import load_recipe
    from dgsct_cli.convert import load_release_state_dict
    from dgsct_cli.factory import create_model
    from dgsct_cli.tasks.ave import AVE

    ref = _load("lavish_star_ave_full.pt")
    inputs = _load("inputs.pt")
    cfg = load_recipe("ave-lavish-star").model
    cfg.head.num_classes = 28
    model = create_model("ave", cfg, load_encoder_weights=False)
    dropped = load_release_state_dict(model, _state(ref), "LAVisH* reference", AVE.release.unused_keys)
    assert not any("adapter_blocks" in k for k in dropped), dropped
    model.eval()
    audio = inputs["wave32k"].float().repeat(1, 10)[None]  # each 1-s segment tiled to 10 s
    with torch.no_grad():
        out = model(frames=inputs["frames"].float(), audio=audio)
    want = ref["outputs"]
    assert _rel(out["visual_features"][0], ref["pooled_visual"]) < 1e-3
    assert _rel(out["audio_features"][0], ref["pooled_audio"]) < 1e-3
    assert _rel(out["event_logits"], want["event_scores"]) < 1e-3
    assert _rel(out["segment_logits"], want["is_event_scores"].squeeze(-1).transpose(0, 1)) < 1e-3
    assert _rel(out["av_gate"], want["audio_visual_gate"].squeeze(-1).transpose(0, 1)) < 1e-3
    assert _rel(out["av_score"], want["av_score"]) < 1e-3
    torch.testing.assert_close(out["event_logits"], want["event_scores"], rtol=1e-3, atol=1e-4)


# -- AVS: LAVisH's decoder ------------------------------------------------------------------------------


def test_lavish_avs_decoder_matches_lavish():
    """``model.head.decoder: lavish`` (Linear to PVT-v2's widths, ASPP, TPAVI, FPN; no temporal
    attention) against LAVisH's Pred_endecoder lines on fixed stage maps, full size, one video."""
    from dgsct_cli.models.heads.avs import AVSHead, AVSHeadConfig

    ref = _load("lavish_avs_decoder.pt")
    stages, tokens = _make_inputs().avs_decoder_inputs(batch=1, seed=31)
    for i, tensor in enumerate((*stages, tokens)):
        assert_regenerated(excerpt(tensor), EXCERPTS[f"lavish/lavish_avs_decoder.pt:input{i}"])
    head = AVSHead(1536, 1536, AVSHeadConfig(decoder="lavish")).eval()
    state = _state(ref)
    own = head.state_dict()
    unused = sorted(set(state) - set(own))
    assert unused == [f"path4.resConfUnit1.{p}.{w}" for p in ("conv1", "conv2") for w in ("bias", "weight")]
    assert not set(own) - set(state)
    head.load_state_dict({k: state[k] for k in own})
    assert head.temporal_attn is None
    with torch.no_grad():
        out = head.decode(stages, tokens.mean(1).view(1, 5, -1))
    assert _rel(out["mask_logits"], ref["pred"]) < 1e-3
    torch.testing.assert_close(out["mask_logits"], ref["pred"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out["feature_map_3"], ref["feature_maps"][3], rtol=1e-3, atol=1e-4)
    for i, audio in enumerate(ref["tpavi_audio"]):
        torch.testing.assert_close(out[f"tpavi_audio_{i}"], audio, rtol=1e-4, atol=1e-5)


# -- AVQA: LAVisH's head ----------------------------------------------------------------------------


def test_lavish_avqa_head_matches_lavish():
    """``model.head.type: lavish`` (yb_fc_v / yb_fc_a to 512, no fc_a1, the grounding, match and
    question-guided fusion of ST-AVQA at 512) against LAVisH's AVQA_Fusion_Net lines after the
    shared Swin, on fixed normed token maps (2 clips of 10 segments)."""
    from dgsct_cli.models.heads.avqa import LAVisHAVSTHead
    from dgsct_cli.models.output import EncoderOutput

    ref = _load("lavish_avqa_head.pt")
    f_v, f_a, nega, question = _make_inputs().avqa_head_inputs(batch=2, segments=10, seed=47)
    for i, tensor in enumerate((f_v, f_a, nega, question)):
        assert_regenerated(excerpt(tensor), EXCERPTS[f"lavish/lavish_avqa_head.pt:input{i}"])
    head = LAVisHAVSTHead(1536, 1536, num_answers=42, vocab_size=93).eval()
    state = _state(ref)
    own = head.state_dict()
    never_run = {k.split(".")[0] for k in set(state) - set(own)}
    assert never_run == {
        "fc_a1",
        "fc_a1_pure",
        "fc_a2_pure",
        "fc_v",
        "fc_st",
        "fc",
        "fc_aq",
        "fc_vq",
        "norm3",
    }
    assert not set(own) - set(state)
    head.load_state_dict({k: state[k] for k in own})
    features = EncoderOutput(
        visual=f_v.mean(1).view(2, 10, -1), audio=f_a.mean(1).view(2, 10, -1), visual_tokens=f_v
    )
    with torch.no_grad():
        out = head(features, question=question, negative_frames=nega)
    torch.testing.assert_close(out["answer_logits"], ref["out_qa"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["match_logits_positive"], ref["out_match_posi"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["match_logits_negative"], ref["out_match_nega"], rtol=1e-4, atol=1e-5)


def test_a_shared_family_run_saves_only_what_training_changes(tmp_path):
    """The shared family's audio side has no weight file of its own: with the Swin read from a
    file, training checkpoints hold only the adapters and the head, and load back exactly."""
    from safetensors.torch import save_file

    from dgsct_cli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from dgsct_cli.config import load_recipe
    from dgsct_cli.factory import build_model

    recipe = load_recipe("ave-lavish-tiny", ["model.head.num_classes=28"])
    torch.manual_seed(0)
    model = build_model(recipe)
    weights = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in model.encoder.visual.state_dict().items()}, str(weights))
    recipe = load_recipe("ave-lavish-tiny", ["model.head.num_classes=28", f"model.visual.weights={weights}"])
    path = save_checkpoint(model, recipe, tmp_path / "run.safetensors", full=False)
    assert read_metadata(path)["contents"] == "delta"
    loaded, _, _ = load_checkpoint(path)
    frames, audio = torch.randn(1, 10, 3, 64, 64), torch.randn(1, 10, 16000) * 0.1
    with torch.no_grad():
        want = model.eval()(frames=frames, audio=audio)["segment_class_logits"]
        got = loaded.eval()(frames=frames, audio=audio)["segment_class_logits"]
    torch.testing.assert_close(got, want)
