"""AVE and AVVP parts that claim to be exact, against numbers from the release's own code
(``tests/fixtures/release/ave-avvp``: the AVE head, AVE loss and accuracy, HTS-AT's front end,
the AVVP parsing scores and loss, and the whole AVE model; how each was made is in the fixtures'
README)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, assert_regenerated

from dgsct_cli.models.encoders.htsat import HTSAT, HTSATConfig
from dgsct_cli.models.heads.ave import AVE_UNUSED_RELEASE_KEYS, AVEHead, AVEHeadConfig
from dgsct_cli.models.heads.mgn import avvp_loss
from dgsct_cli.models.output import EncoderOutput
from dgsct_cli.tasks.ave import AVEEvaluator, AVELossConfig, ave_loss_terms
from dgsct_cli.tasks.avvp_metrics import parsing_scores

HERE = FIXTURES / "ave-avvp"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


detfill = _module(FIXTURES / "avvp-head" / "detfill.py", "detfill")


def _load(name: str) -> dict:
    return torch.load(HERE / name, weights_only=True)


def _weights(ref: dict) -> dict[str, torch.Tensor]:
    """The reference's deterministic weights, rebuilt. Their stored SHA-256s are not compared:
    torch.randn's values differ in the last bits between CPUs (tests/fixtures/README.md); the
    outputs check the weights."""
    out = {}
    for key, shape in ref["weight_shapes"].items():
        if detfill.skip(key):
            continue
        out[key] = detfill.fill(key, shape)
    assert set(out) <= set(ref["weight_sha256"])
    return out


# -- AVE head ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ave_head_run():
    ref = _load("ave_head.pt")
    head = AVEHead(1536, 768, AVEHeadConfig(num_classes=28)).eval()
    weights = _weights(ref)
    own = head.state_dict()
    dropped = [k for k in weights if k not in own]
    assert all(any(re.search(p, k) for p in AVE_UNUSED_RELEASE_KEYS) for k in dropped), dropped
    head.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=True)
    trace: dict[str, torch.Tensor] = {}
    t = head.temporal_attn

    def keep(name):
        return lambda m, a, out: trace.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    hooks = [
        t.a_fc.register_forward_hook(keep("temporal_attn.a_fc")),
        t.v_fc.register_forward_hook(keep("temporal_attn.v_fc")),
        t.video_encoder.register_forward_hook(keep("temporal_attn.video_encoder")),
        t.audio_encoder.register_forward_hook(keep("temporal_attn.audio_encoder")),
        t.audio_decoder.register_forward_hook(keep("temporal_attn.audio_decoder")),
        t.video_decoder.register_forward_hook(keep("temporal_attn.video_decoder")),
        t.audio_gated.register_forward_hook(keep("temporal_attn.audio_gate")),
        t.video_gated.register_forward_hook(keep("temporal_attn.video_gate")),
        head.CMBS.video_cas.register_forward_hook(keep("CMBS.video_cas")),
        head.CMBS.audio_cas.register_forward_hook(keep("CMBS.audio_cas")),
    ]
    with torch.no_grad():
        out = head(EncoderOutput(visual=ref["inputs"]["visual"], audio=ref["inputs"]["audio"]))
    for h in hooks:
        h.remove()
    return ref, out, trace


@pytest.mark.parametrize(
    "stage",
    [
        "temporal_attn.a_fc",
        "temporal_attn.v_fc",
        "temporal_attn.video_encoder",
        "temporal_attn.audio_encoder",
        "temporal_attn.audio_decoder",
        "temporal_attn.video_decoder",
        "temporal_attn.audio_gate",
        "temporal_attn.video_gate",
        "CMBS.video_cas",
        "CMBS.audio_cas",
    ],
)
def test_ave_head_stages_match_the_release(ave_head_run, stage):
    ref, _, trace = ave_head_run
    torch.testing.assert_close(trace[stage], ref["intermediates"][stage], rtol=1e-5, atol=1e-5)


def test_ave_head_outputs_match_the_release(ave_head_run):
    ref, out, _ = ave_head_run
    post = ref["post_main_trans"]  # the [B, 10] forms the release's loss and accuracy read
    torch.testing.assert_close(out["segment_logits"], post["is_event_scores"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["av_gate"], post["audio_visual_gate"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["event_logits"], ref["outputs"]["event_scores"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["av_score"], ref["outputs"]["av_score"], rtol=1e-5, atol=1e-5)


# -- AVE loss and accuracy --------------------------------------------------------------------------


def _ave_batch(inputs: dict, labels_event: torch.Tensor | None = None):
    """Release model outputs and one-hot labels -> our output dict and batch."""
    outputs = {
        "segment_logits": inputs["is_event_scores"].squeeze(-1).transpose(0, 1),
        "av_gate": inputs["audio_visual_gate"].squeeze(-1).transpose(0, 1),
        "event_logits": inputs["event_scores"],
        "av_score": inputs["av_score"],
    }
    labels = inputs["labels"]
    segment_labels = labels.argmax(-1)  # background is the last column (28)
    event = labels_event if labels_event is not None else labels[..., :-1].amax(1).argmax(-1)
    return outputs, {"segment_labels": segment_labels, "event_label": event.view(-1, 1)}


@pytest.mark.parametrize("case", [0, 1])
def test_ave_loss_terms_match_the_release(case):
    ref = _load("ave_loss_metric.pt")["loss_cases"][case]
    # The release's event target (max over time of each segment's argmax): equal to the clip's class
    # except for an all-background clip, which AVE does not have (case 1 pins it to 0 as released).
    outputs, batch = _ave_batch(ref["inputs"], ref["terms"]["labels_event"])
    terms = ave_loss_terms(outputs, batch, AVELossConfig(gate_loss="release"))
    want = ref["terms"]
    for ours, theirs in (
        ("segment", "loss_is_event"),
        ("gate", "label_is_gate"),
        ("event", "loss_event_class"),
        ("av_score", "loss_cas"),
    ):
        torch.testing.assert_close(terms[ours], want[theirs], rtol=1e-6, atol=1e-6)


def test_ave_accuracy_is_the_pooled_accuracy_the_release_gets_at_batch_one():
    ref = _load("ave_loss_metric.pt")["metric"]
    pooled = AVEEvaluator([str(i) for i in range(28)])
    for batch_ref, acc in zip(ref["batches"], ref["per_batch_acc"], strict=True):
        outputs, batch = _ave_batch(batch_ref)
        single = AVEEvaluator([str(i) for i in range(28)])
        single.update(outputs, batch)
        assert single.compute()["accuracy"] == pytest.approx(float(acc), abs=1e-9)
        pooled.update(outputs, batch)
    # The release's test.sh (batch 1) reports the pooled value; its batch-8 running mean does not.
    assert pooled.compute()["accuracy"] == pytest.approx(ref["pooled_acc"], abs=1e-9)
    assert pooled.compute()["accuracy"] == pytest.approx(ref["reported_mean_acc_batch1"], abs=1e-4)
    assert abs(pooled.compute()["accuracy"] - ref["reported_mean_acc_batch8"]) > 1


# -- HTS-AT front end -------------------------------------------------------------------------------


@pytest.mark.parametrize("front_end", ["computed", "weights"])
def test_htsat_log_mel_and_wav2img_match_the_release(front_end):
    ref = _load("htsat_logmel.pt")
    wave = ref["inputs"]["wave"]  # stored; the generator is checked against it to float drift
    assert_regenerated(_module(HERE / "make_inputs.py", "ave_inputs").htsat_wave(seed=5), wave, atol=1e-6)
    htsat = HTSAT(HTSATConfig(front_end=front_end)).eval()
    bn0 = {k[len("htsat.bn0.") :]: v for k, v in _weights(ref).items()}
    htsat.bn0.load_state_dict(bn0)
    with torch.no_grad():
        log_mel = htsat.compute_log_mel(wave)
        after_bn0 = htsat.log_mel(wave)
        image = htsat.wav2img(ref["outputs"]["after_bn0"])
    want = ref["outputs"]
    # torchlibrosa's float32 STFT-by-convolution and ours agree to a few 1e-4 dB.
    torch.testing.assert_close(log_mel, want["logmel"], rtol=0, atol=2e-3)
    torch.testing.assert_close(after_bn0, want["after_bn0"], rtol=0, atol=2e-3)
    # wav2img resamples (bicubic): 2.7e-5 apart on torch's scalar kernels (tests/fixtures/README.md).
    torch.testing.assert_close(image, want["wav2img"], rtol=0, atol=1e-4)


# -- AVVP parsing scores and loss ------------------------------------------------------------------

TEN = {
    "seg_a": "segment_audio",
    "seg_v": "segment_visual",
    "seg_av": "segment_av",
    "seg_type": "segment_type",
    "seg_event": "segment_event",
    "evt_a": "event_audio",
    "evt_v": "event_visual",
    "evt_av": "event_av",
    "evt_type": "event_type",
    "evt_event": "event_event",
}


@pytest.mark.parametrize("case", [0, 1, 2])
def test_avvp_parsing_scores_match_the_release(case, tmp_path):
    from dgsct_cli.data.avvp import read_avvp_ground_truth

    ref = _load("avvp_metrics.pt")["cases"][case]
    (tmp_path / "a.csv").write_text(ref["csv"]["eval_audio"])
    (tmp_path / "v.csv").write_text(ref["csv"]["eval_visual"])
    gt_audio, gt_visual = read_avvp_ground_truth(tmp_path / "a.csv", tmp_path / "v.csv", list(ref["names"]))
    # Our reader of the eval CSVs gives the release's ground truth ([N, C, T] there).
    assert np.array_equal(gt_audio.transpose(0, 2, 1), ref["gt_a"].numpy())
    assert np.array_equal(gt_visual.transpose(0, 2, 1), ref["gt_v"].numpy())
    x = ref["inputs"]
    scores = parsing_scores(x["global_prob"], x["a_frame_prob"], x["v_frame_prob"], gt_audio, gt_visual)
    for theirs, ours in TEN.items():
        assert scores[ours] == pytest.approx(ref["ten"][theirs], abs=1e-9), ours


def test_avvp_loss_and_gradients_match_the_release():
    ref = _load("avvp_loss.pt")
    x = ref["inputs"]
    outputs = {
        "video_prob": x["global_prob"].clone().requires_grad_(),
        "audio_prob": x["a_prob"].clone().requires_grad_(),
        "visual_prob": x["v_prob"].clone().requires_grad_(),
        "audio_class_logits": x["aud_cls"].clone().requires_grad_(),
        "visual_class_logits": x["vis_cls"].clone().requires_grad_(),
    }
    loss = avvp_loss(outputs, x["target"])
    torch.testing.assert_close(loss, ref["terms"]["loss"], rtol=1e-6, atol=1e-6)
    loss.backward()
    names = {"video_prob": "global_prob", "audio_prob": "a_prob", "visual_prob": "v_prob"}
    names |= {"audio_class_logits": "aud_cls", "visual_class_logits": "vis_cls"}
    for ours, theirs in names.items():  # zero where the clamp was active, as in the release
        torch.testing.assert_close(outputs[ours].grad, ref["grads"][theirs], rtol=1e-5, atol=1e-7)


# -- the whole AVE model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_full_ave_model_from_the_release_layout_matches_the_release():
    """Our model built from a release-layout state dict (deterministic weights) gives the
    release's outputs on the same inputs (full size: about a minute on 2 CPU cores)."""
    from dgsct_cli.convert import load_official_checkpoint

    ref = _load("ave_full.pt")
    state = {}
    for key, shape in ref["weight_shapes"].items():
        state[key] = torch.zeros(shape) if detfill.skip(key) else detfill.fill(key, shape)
    model = load_official_checkpoint("ave", state)
    del state
    audio, frames = detfill.inputs(batch=1)
    with torch.no_grad():
        out = model(frames=frames, audio=audio)
    expected = {
        "event_logits": (1, 28),
        "segment_logits": (1, 10),
        "av_gate": (1, 10),
        "av_score": (1, 28),
        "visual_features": (1, 10, 1536),
        "audio_features": (1, 10, 768),
    }
    assert {key: tuple(out[key].shape) for key in expected} == expected
    assert all(torch.isfinite(out[key]).all() for key in expected)
    want = ref["outputs"]
    features = ref["features"]
    torch.testing.assert_close(out["visual_features"], features["pooled_visual"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out["audio_features"], features["pooled_audio"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out["event_logits"], want["event_scores"], rtol=1e-3, atol=1e-4)
    seg = want["is_event_scores"].squeeze(-1).transpose(0, 1)
    torch.testing.assert_close(out["segment_logits"], seg, rtol=1e-3, atol=1e-4)
