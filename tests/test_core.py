"""The model core: adapter parity with the release, encoders' weight loading, front end, pairing."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import FIXTURES, tiny_inputs, tiny_model_config

from dgsct_cli.models.adapter import AdapterSettings, DGSCTAdapter
from dgsct_cli.models.encoders.htsat import HTSAT, LogMelFrontEnd, load_htsat_weights
from dgsct_cli.models.encoders.htsat import HTSATConfig as AudioConfig
from dgsct_cli.models.encoders.swinv2 import SwinV2Config as VisualConfig
from dgsct_cli.models.encoders.swinv2 import create_visual_encoder
from dgsct_cli.models.encoders.swinv2_htsat import pair_by_depth_ratio as pair_blocks
from dgsct_cli.models.weights import CheckpointError
from dgsct_cli.schema import build_dataclass


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("order", ["auto", "conv_first", "fc_first"])
def test_adapter_reproduces_release_fixture(order, monkeypatch):
    fx = torch.load(FIXTURES / "official_adapter_small.pt", weights_only=True)
    c = fx["config"]
    settings = AdapterSettings(
        num_tokens=c["num_tk"], reduction=c["reduction_factor"], groups=c["num_conv_group"]
    )
    adapter = DGSCTAdapter(c["linear_out"], c["conv_dim_out"], c["linear_in"], c["conv_dim_in"], settings)
    adapter.load_state_dict(fx["state_dict"], strict=True)
    adapter.eval()
    if order != "auto":
        # Both evaluation orders of the guide projection must give the release's numbers.
        real = DGSCTAdapter.project_guide

        def forced(self, y):
            w = self.conv_adapter.weight.view(self.tokens, self.guide_tokens)
            if order == "conv_first":
                return self.fc(torch.matmul(w, y) + self.conv_adapter.bias[:, None])
            out = torch.matmul(w, torch.nn.functional.linear(y, self.fc.weight))
            return out + self.conv_adapter.bias[:, None] * self.fc.weight.sum(1) + self.fc.bias

        monkeypatch.setattr(DGSCTAdapter, "project_guide", forced)
        assert DGSCTAdapter.project_guide is not real
    # The release's layout is [N, C, L, 1]; ours is channels-last [N, L, C].
    x = fx["x"].squeeze(-1).transpose(1, 2)
    y = fx["other"].squeeze(-1).transpose(1, 2)
    with torch.no_grad():
        out, spatial = adapter(x, y)
    assert _rel(out.transpose(1, 2).unsqueeze(-1), fx["output"]) < 1e-5
    assert _rel(spatial, fx["spatial_attention"]) < 1e-5


def test_adapter_settings_variants_build_and_run():
    x, y = torch.randn(2, 16, 32), torch.randn(2, 9, 24)
    for s in [
        AdapterSettings(),
        AdapterSettings(
            num_tokens=2, token_init="zeros", groups=4, use_bn=False, use_gate=False, gate_tk=False
        ),
        AdapterSettings(ln_before=False, gate_before_ln_post=True, alpha=0.2, beta=0.1),
    ]:
        a = DGSCTAdapter(32, 16, 24, 9, s)
        out, spatial = a(x, y)
        assert out.shape == (2, 16, 32) and spatial.shape == (2, 1, 16)
        assert torch.allclose(spatial.sum(-1), torch.ones(2, 1))
    assert "gate" not in dict(DGSCTAdapter(32, 16, 24, 9, AdapterSettings(use_gate=False)).named_parameters())
    with pytest.raises(ValueError, match=r"model\.adapter\.token_init: 'normal' is out of range"):
        build_dataclass(AdapterSettings, {"token_init": "normal"}, "model.adapter")


def test_block_pairing_follows_stage_depths():
    pairs = pair_blocks([2, 2, 18, 2], [2, 2, 6, 2])
    assert len(pairs) == 12
    stage3 = [(p.visual_block, p.audio_block) for p in pairs if p.visual_stage == 2]
    assert stage3 == [(2, 0), (5, 1), (8, 2), (11, 3), (14, 4), (17, 5)]
    assert [(p.visual_block, p.audio_block) for p in pairs if p.visual_stage == 0] == [(0, 0), (1, 1)]
    # The deeper encoder may also be the audio one.
    assert [(p.visual_block, p.audio_block) for p in pair_blocks([1], [2])] == [(0, 1)]
    with pytest.raises(ValueError, match="cannot be paired"):
        pair_blocks([2, 2, 5, 2], [2, 2, 2, 2])


# -- log-mel front end -------------------------------------------------------------------------


def _slaney_hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    return torch.where(
        f < min_log_hz, f / f_sp, min_log_hz / f_sp + torch.log(f.clamp(min=1e-9) / min_log_hz) / logstep
    )


def _slaney_mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m < min_log_mel, m * f_sp, min_log_hz * torch.exp(logstep * (m - min_log_mel)))


def _reference_log_mel(wave: torch.Tensor, sr=32000, n_fft=1024, hop=320, n_mels=64, fmin=50.0, fmax=14000.0):
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        wave.double(), n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = spec.abs() ** 2  # [N, freq, T]
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _slaney_mel_to_hz(
        torch.linspace(
            float(_slaney_hz_to_mel(torch.tensor(fmin))),
            float(_slaney_hz_to_mel(torch.tensor(fmax))),
            n_mels + 2,
        ).double()
    )
    fb = torch.zeros(n_fft // 2 + 1, n_mels, dtype=torch.float64)
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        fb[:, m] = torch.clamp(torch.minimum(rising, falling), min=0) * (2.0 / (hi - lo))
    mel = torch.einsum("nft,fm->ntm", power, fb)
    return 10 * torch.log10(mel.clamp(min=1e-10))


def test_log_mel_front_end_matches_independent_reference():
    torch.manual_seed(0)
    t = torch.arange(32000 * 2) / 32000
    wave = torch.stack([torch.sin(2 * math.pi * 440 * t) * 0.5, torch.randn_like(t) * 0.1])
    ours = LogMelFrontEnd(AudioConfig())(wave).squeeze(1).double()  # [N, T, mel]
    ref = _reference_log_mel(wave)
    assert ours.shape == ref.shape == (2, 201, 64)
    assert _rel(ours, ref) < 1e-4


def test_wav2img_stacks_time_chunks_on_frequency():
    cfg = AudioConfig()
    enc = HTSAT(cfg)
    x = torch.arange(1024 * 64, dtype=torch.float32).view(1, 1, 1024, 64)  # [N, 1, T, F]
    img = enc.wav2img(x)
    assert img.shape == (1, 1, 256, 256)
    # row = chunk * 64 + mel bin, column = time within the chunk
    chunk, mel, col = 2, 5, 7
    assert img[0, 0, chunk * 64 + mel, col] == x[0, 0, chunk * 256 + col, mel]


# -- encoder weight files in their published layouts ----------------------------------------------


def _tiny_audio_cfg() -> AudioConfig:
    return tiny_model_config().audio


def _to_htsat_release_layout(state: dict[str, torch.Tensor], num_stages: int) -> dict[str, torch.Tensor]:
    """Our HTSAT keys -> HTS-AT's own layout (merge at the end of a stage) plus its extra keys."""
    out = {}
    for k, v in state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
    out["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024)
    out["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(513, 1, 1024)
    out["tscam_conv.weight"] = torch.randn(527, 256, 2, 3)
    out["head.weight"] = torch.randn(527, 527)
    out["norm.weight"] = torch.ones(256)
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return out


def test_htsat_lightning_checkpoint_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    source = HTSAT(_tiny_audio_cfg()).eval()
    for p in source.bn0.parameters():
        torch.nn.init.normal_(p)
    ckpt = {
        "state_dict": {
            f"sed_model.{k}": v for k, v in _to_htsat_release_layout(source.state_dict(), 4).items()
        }
    }
    ckpt["epoch"] = 3
    path = tmp_path / "HTSAT_AudioSet_Saved_1.ckpt"
    torch.save(ckpt, path)

    torch.manual_seed(1)
    loaded = HTSAT(_tiny_audio_cfg()).eval()
    load_htsat_weights(loaded, path)
    wave = torch.randn(2, 64000) * 0.1
    with torch.no_grad():
        assert torch.allclose(loaded(wave), source(wave), atol=1e-6)

    broken = dict(ckpt["state_dict"])
    broken.pop("sed_model.layers.1.blocks.0.mlp.fc1.weight")
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        load_htsat_weights(HTSAT(_tiny_audio_cfg()), path)


def test_full_htsat_keys_cover_release_htsat_keys():
    import json

    from dgsct_cli.models.encoders.htsat import convert_htsat_state_dict

    shapes = json.loads((FIXTURES / "official_ave_state_dict_shapes.json").read_text())
    release = {k[len("htsat.") :]: torch.empty(0) for k in shapes if k.startswith("htsat.")}
    ours = HTSAT(AudioConfig()).state_dict()
    mapped = convert_htsat_state_dict(release)
    assert set(mapped) == set(ours)
    for k in ours:
        assert tuple(shapes[f"htsat.{_back(k)}"]) == tuple(ours[k].shape), k


def _back(key: str) -> str:
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    return f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else key


@pytest.mark.parametrize("layout", ["timm_safetensors", "timm_bin", "original_pth"])
def test_swin_v2_checkpoint_layouts_load_and_match(tmp_path, layout):
    from safetensors.torch import save_file

    cfg = tiny_model_config().visual
    torch.manual_seed(0)
    source = create_visual_encoder(cfg).eval()
    for name, p in source.named_parameters():
        if "norm" in name and name.endswith("weight"):
            # timm zero-initialises the res-post-norms; non-zero values make every block count.
            torch.nn.init.normal_(p, 1.0, 0.2)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["head.fc.weight"] = torch.randn(5, source.num_features)  # a classifier the trunk drops
    state["head.fc.bias"] = torch.zeros(5)
    if layout == "timm_safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    elif layout == "timm_bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    else:
        # The original release layout: patch merging at the end of a stage, a plain `head`.
        old = {}
        for k, v in state.items():
            m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k
            old[k.replace("head.fc.", "head.")] = v
        path = tmp_path / "swinv2_original.pth"
        torch.save({"model": old}, path)

    torch.manual_seed(1)
    loaded = create_visual_encoder(VisualConfig(**{**cfg.__dict__, "weights": str(path)})).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_features(x), source.forward_features(x), atol=1e-6)


def test_visual_weights_file_errors(tmp_path):
    cfg = tiny_model_config().visual
    with pytest.raises(CheckpointError, match="file not found"):
        create_visual_encoder(VisualConfig(**{**cfg.__dict__, "weights": str(tmp_path / "nope.pth")}))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(
        CheckpointError, match="not a checkpoint we can read safely: not a readable torch checkpoint"
    ):
        create_visual_encoder(VisualConfig(**{**cfg.__dict__, "weights": str(bad)}))


# -- the AVE model's call ------------------------------------------------------------------------


def test_tiny_ave_model_outputs(tiny_model):
    model = tiny_model().train()
    frames, audio = tiny_inputs()
    out = model(frames=frames, audio=audio)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes["event_logits"] == (2, 28) and shapes["segment_logits"] == (2, 10)
    assert shapes["av_gate"] == (2, 10) and shapes["av_score"] == (2, 28)
    assert shapes["visual_features"][:2] == (2, 10) and shapes["audio_features"][:2] == (2, 10)
    assert ((out["av_gate"] >= 0) & (out["av_gate"] <= 1)).all()


def test_bad_inputs_say_what_was_expected(tiny_model):
    model = tiny_model().eval()
    frames, audio = tiny_inputs(1)
    with pytest.raises(ValueError, match=r"frames: expected \[B, 10, 3, 64, 64\], got \[1, 10, 3, 32, 32\]"):
        model(frames=torch.randn(1, 10, 3, 32, 32), audio=audio)
    with pytest.raises(ValueError, match=r"audio: expected \[B, 10, samples\].*got \[1, 8, 64000\]"):
        model(frames=frames, audio=audio[:, :8])
    too_long = model.cfg.audio.max_samples + 1
    with pytest.raises(
        ValueError, match=rf"audio: {too_long} samples per segment is longer than the front end"
    ):
        model(frames=frames, audio=torch.zeros(1, 10, too_long))


def test_guide_resize_projection_is_fc_then_bicubic_grid_resize():
    adapter = DGSCTAdapter(32, 16, 24, 4, AdapterSettings(guide_projection="resize"))
    y = torch.randn(2, 4, 24)
    grid = adapter.fc(y).transpose(1, 2).reshape(2, 32, 2, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(adapter.project_guide(y), expected.flatten(2).transpose(1, 2), atol=1e-6)
    with pytest.raises(ValueError, match="square token grids"):
        DGSCTAdapter(32, 15, 24, 4, AdapterSettings(guide_projection="resize")).project_guide(y)


def test_audio_adapters_can_drop_their_gate_alone(tiny_model):
    import dataclasses

    from dgsct_cli.factory import create_model

    cfg = tiny_model_config()
    cfg.adapter = dataclasses.replace(cfg.adapter, audio_gate=False)  # AVQA/AVS: un-gated audio adapters
    model = create_model("ave", cfg)
    assert all(a.gate is None for a in model.encoder.audio_adapter_blocks_p1)
    assert all(a.gate is not None for a in model.encoder.vis_adapter_blocks_p2)
    frames, audio = tiny_inputs(1)
    assert torch.isfinite(model.eval()(frames=frames, audio=audio)["event_logits"]).all()
