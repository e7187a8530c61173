"""Encoder families: the ``clip-clap`` family from CLIP- and CLAP-layout files, its one-to-one
walker against a hand-written loop, and the ``swinv2-htsat`` maps the new tasks read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgsct_cli.models.adapter import AdapterSettings
from dgsct_cli.models.dgsct import ModelConfig, build_dual_encoder
from dgsct_cli.models.encoders.clap import CLAPAudioConfig, ClipClapTextConfig, clap_towers
from dgsct_cli.models.encoders.clip import CLIPConfig, build_clip
from dgsct_cli.models.encoders.clip_clap import pair_in_order
from dgsct_cli.models.output import EncoderNeeds
from dgsct_cli.models.weights import CheckpointError

TINY_CLIP = dict(img_size=32, patch_size=16, width=64, layers=12, embed_dim=32, text_width=64, text_layers=1,
                 context_length=8, vocab_size=50)  # fmt: skip
TINY_CLAP = dict(n_fft=256, hop_length=320, mel_bins=16, spec_size=64, embed_dim=16, depths=[2, 2, 6, 2],
                 num_heads=[1, 1, 2, 2], window_size=4, time_mask=8, freq_mask=2, projection_dim=24)  # fmt: skip
TINY_ROBERTA = dict(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=20)  # fmt: skip


def _laion_layout(audio: torch.nn.Module, projection, text) -> dict[str, torch.Tensor]:
    """Our CLAP modules' weights in the LAION file layout, with the keys the release drops."""
    state = {}
    for key, value in audio.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":  # HTS-AT merges at the end of a stage
            parts[1] = str(int(parts[1]) - 1)
        state["module.audio_branch." + ".".join(parts)] = value
    state.update({f"module.audio_projection.{k}": v for k, v in projection.state_dict().items()})
    for key, value in text.state_dict().items():
        name = key.replace("roberta.", "text_branch.", 1) if key.startswith("roberta.") else key
        state[f"module.{name}"] = value.reshape(()) if key.startswith("logit_scale") else value
    state["module.text_branch.embeddings.position_ids"] = torch.arange(20)[None]
    state["module.audio_branch.patch_embed.mel_conv2d.weight"] = torch.zeros(16, 1, 4, 12)
    state["module.audio_branch.patch_embed.fusion_model.local_att.0.weight"] = torch.zeros(4, 16, 1, 1)
    state["module.audio_transform.sequential.0.weight"] = torch.zeros(24, 24)
    state["module.audio_branch.head.weight"] = torch.zeros(5, 5)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A CLIP file (OpenAI layout) and a CLAP file (LAION layout) with random weights."""
    folder = tmp_path_factory.mktemp("clip-clap")
    torch.manual_seed(0)
    clip = build_clip(CLIPConfig(**TINY_CLIP))
    clip_state = {
        **clip.state_dict(),
        "input_resolution": torch.tensor(32),
        "context_length": torch.tensor(8),
    }
    torch.save(clip_state, folder / "ViT-B-32.pt")
    audio, projection, text = clap_towers(
        CLAPAudioConfig(**TINY_CLAP), ClipClapTextConfig(roberta=TINY_ROBERTA, projection_dim=24), False
    )
    with torch.no_grad():  # a front end that is not the computed one, to see it is read from the file
        audio.logmel_extractor.melW.mul_(1.5)
    torch.save({"state_dict": _laion_layout(audio, projection, text)}, folder / "clap.pt")
    return {"clip": folder / "ViT-B-32.pt", "clap": folder / "clap.pt", "clip_state": clip.state_dict(),
            "audio": audio.state_dict(), "text": text.state_dict()}  # fmt: skip


def _config(files) -> ModelConfig:
    return ModelConfig(
        family="clip-clap",
        visual=CLIPConfig(**TINY_CLIP, weights=str(files["clip"])),
        audio=CLAPAudioConfig(**TINY_CLAP, weights=str(files["clap"])),
        text=ClipClapTextConfig(roberta=TINY_ROBERTA, projection_dim=24),
        adapter=AdapterSettings(num_tokens=2, temporal_gate=True, gamma=0.05, alpha=0.2),
    )


@pytest.fixture(scope="module")
def encoder(files):
    torch.manual_seed(1)
    enc = build_dual_encoder(_config(files)).eval()
    with torch.no_grad():  # open the adapters' output gates so they change the streams
        for adapters in enc.adapter_modules():
            for a in adapters:
                if a.gate is not None:
                    a.gate.fill_(0.5)
                a.gate_av.fill_(0.3)
    return enc


def test_weights_come_from_the_clip_and_clap_files(files, encoder):
    for key, value in files["clip_state"].items():
        if key.startswith("visual."):
            assert torch.equal(encoder.visual.state_dict()[key[len("visual.") :]], value), key
        else:
            assert torch.equal(encoder.text["clip"].state_dict()[key], value), key
    assert torch.equal(encoder.audio.logmel_extractor.melW, files["audio"]["logmel_extractor.melW"])
    for key, value in files["audio"].items():
        assert torch.equal(encoder.audio.state_dict()[key], value), key
    for key, value in files["text"].items():
        assert torch.equal(encoder.text["clap"].state_dict()[key], value), key
    assert encoder.visual_dim == 32 and encoder.audio_dim == 24


def test_twelve_vit_blocks_pair_one_to_one_with_two_two_six_two(encoder):
    expected = [
        (0, i, s, j)
        for i, (s, j) in enumerate([(s, j) for s, d in enumerate([2, 2, 6, 2]) for j in range(d)])
    ]
    got = [(p.visual_stage, p.visual_block, p.audio_stage, p.audio_block) for p in encoder.pairs]
    assert got == expected and len(encoder.audio_adapter_blocks_p1) == 12
    # Visual adapters see 1 + grid² CLIP tokens; audio adapters the HTS-AT grid of their stage.
    assert [a.tokens for a in encoder.vis_adapter_blocks_p1] == [5] * 12
    assert [a.tokens for a in encoder.audio_adapter_blocks_p1] == [256] * 2 + [64] * 2 + [16] * 6 + [4] * 2
    with pytest.raises(ValueError, match="one-to-one pairing needs as many visual blocks"):
        pair_in_order([12], [2, 2, 6])


def _hand_loop(enc, frames, wave):
    """The release's few-shot walk (few-shot nets/net_trans.py:861-917) written out by hand."""
    vit, htsat = enc.visual, enc.audio
    v = vit._embeds(frames)
    a = htsat.embed(wave)
    flat = [(s, j) for s, stage in enumerate(htsat.layers) for j in range(len(stage.blocks))]
    for i, block in enumerate(vit.transformer.resblocks):
        s, j = flat[i]
        if j == 0 and s > 0:
            a = htsat.layers[s].downsample(a)  # HTS-AT's merging after the previous stage
        n, h, w, c = a.shape
        a = htsat.layers[s].blocks[j](a)
        v = v + block.ls_1(block.attention(q_x=block.ln_1(v)))
        at = a.reshape(n, h * w, c)
        ra, _ = enc.audio_adapter_blocks_p1[i](at, v)
        rv, _ = enc.vis_adapter_blocks_p1[i](v, at)
        v, a = v + rv, a + ra.view(n, h, w, c)
        v_mid = v
        v = v + block.ls_2(block.mlp(block.ln_2(v)))
        at = a.reshape(n, h * w, c)
        ra, _ = enc.audio_adapter_blocks_p2[i](at, v_mid)
        rv, _ = enc.vis_adapter_blocks_p2[i](v_mid, at)
        v, a = v + rv, a + ra.view(n, h, w, c)
    a = htsat.norm(a)
    visual = vit.ln_post(v[:, 0]) @ vit.proj
    audio = enc.audio_projection(a.flatten(1, 2).mean(1))
    return visual, audio


def test_walker_equals_the_hand_written_loop(encoder):
    g = torch.Generator().manual_seed(2)
    frames, wave = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 32000, generator=g) * 0.1
    with torch.no_grad():
        out = encoder(frames, wave)
        visual, audio = _hand_loop(encoder, frames, wave)
    assert out.visual.shape == (3, 32) and out.audio.shape == (3, 24)
    torch.testing.assert_close(out.visual, visual, rtol=0, atol=0)
    torch.testing.assert_close(out.audio, audio, rtol=0, atol=0)
    # The adapters matter: without them the features are CLIP's and CLAP's own.
    with torch.no_grad():
        plain = encoder(frames, wave, use_adapters=False)
    assert not torch.allclose(plain.visual, out.visual)


def test_clap_file_errors_name_the_file(tmp_path, files):
    cfg = _config(files)
    cfg.audio.weights = str(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing.pt: CLAP weights file not found"):
        build_dual_encoder(cfg)
    torch.save({"state_dict": {"module.other.weight": torch.zeros(1)}}, tmp_path / "notclap.pt")
    cfg.audio.weights = str(tmp_path / "notclap.pt")
    with pytest.raises(CheckpointError, match="not a LAION CLAP file"):
        build_dual_encoder(cfg)


def test_swinv2_stage_maps_and_tokens_at_192_px_full_size():
    """AVS reads the four stage maps, AVQA the final token map: their shapes with the full-size
    Swin-V2-L at 192 px (beside a tiny audio tower, to keep the test light)."""
    from conftest import tiny_model_config

    cfg = ModelConfig(audio=tiny_model_config().audio)
    torch.manual_seed(0)
    enc = build_dual_encoder(cfg, load_weights=False).eval()
    assert [(g.tokens, g.channels) for g in enc.views[0].geometry] == [
        (2304, 192),
        (576, 384),
        (144, 768),
        (36, 1536),
    ]
    frames, wave = torch.randn(1, 3, 192, 192), torch.randn(1, 32000) * 0.1
    with torch.no_grad():
        o = enc(frames, wave, needs=EncoderNeeds(visual_stages=True, visual_tokens=True))
        plain = enc.encode_plain_visual(frames)
        nothing = enc(frames, wave)
    assert [tuple(t.shape) for t in o.visual_stages] == [
        (1, 2304, 192),
        (1, 576, 384),
        (1, 144, 768),
        (1, 36, 1536),
    ]
    assert tuple(o.visual_tokens.shape) == (1, 36, 1536) and tuple(plain.shape) == (1, 36, 1536)
    assert tuple(o.visual.shape) == (1, 1536)
    # The last stage's map is taken after the final norm: it is the token map.
    torch.testing.assert_close(o.visual_stages[-1], o.visual_tokens)
    # What no head asks for is not kept.
    assert nothing.visual_stages is None and nothing.visual_tokens is None
