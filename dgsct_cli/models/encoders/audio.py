"""Audio encoder: HTS-AT (a Swin V1 transformer over a log-mel "image") on timm's Swin stages.

The log-mel front end is torchaudio's; the transformer is timm's ``SwinTransformerStage``. HTS-AT
puts patch merging at the *end* of stages 1-3 while timm puts it at the *start* of stages 2-4: the
math is identical and :func:`htsat_key_map` moves the keys.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformerStage
from torch import nn

from ..weights import CheckpointError, load_into, load_state_dict_file

log = logging.getLogger(__name__)


@dataclass
class AudioConfig:
    """Recipe section ``model.audio`` (defaults: HTS-AT AudioSet, spec dgsct-core.md section 1)."""

    weights: str | None = None  # HTSAT_AudioSet_Saved_1.ckpt (Lightning) or our own file
    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 320
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    spec_size: int = 256
    patch_size: int = 4
    embed_dim: int = 96
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    window_size: int = 8
    drop_path_rate: float = 0.1
    spec_augment: bool = True  # SpecAugment in training (time 64 x2, freq 8 x2)
    time_mask: int = 64
    freq_mask: int = 8

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have the same length")
        if self.spec_size % self.mel_bins:
            raise ValueError(f"spec_size ({self.spec_size}) must be a multiple of mel_bins ({self.mel_bins})")

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def max_frames(self) -> int:
        """STFT frames the time axis is resized to (1024 for HTS-AT)."""
        return self.spec_size * self.freq_ratio

    @property
    def max_samples(self) -> int:
        """Longest waveform (samples) whose centred STFT has at most ``max_frames`` frames."""
        return (self.max_frames - 1) * self.hop_length + self.hop_length - 1


class LogMelFrontEnd(nn.Module):
    """Power STFT (Hann, centred, reflect) -> Slaney mel -> dB, as HTS-AT computes it."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=True, pad_mode="reflect", power=2.0
        )
        self.mel = torchaudio.transforms.MelScale(
            n_mels=cfg.mel_bins,
            sample_rate=cfg.sample_rate,
            f_min=cfg.fmin,
            f_max=cfg.fmax,
            n_stft=cfg.n_fft // 2 + 1,
            norm="slaney",
            mel_scale="slaney",
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
        # The window and filterbank are fixed functions of the config, not weights: keep them out
        # of state dicts so checkpoints hold only learned values.
        for module, name in ((self.spectrogram, "window"), (self.mel, "fb")):
            buf = getattr(module, name)
            delattr(module, name)
            module.register_buffer(name, buf, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``[N, samples]`` -> ``[N, 1, frames, mel_bins]``."""
        # The STFT runs in fp32 even under autocast: dB of a bf16 power spectrum is too coarse.
        with torch.autocast(wave.device.type, enabled=False):
            spec = self.mel(self.spectrogram(wave.float()))
            return self.to_db(spec).transpose(1, 2).unsqueeze(1)


class HTSAT(nn.Module):
    """HTS-AT trunk: front end, ``bn0``, SpecAugment, wav->image reshape, patch embed, 4 stages."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.front_end = LogMelFrontEnd(cfg)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        self.time_masking = torchaudio.transforms.TimeMasking(cfg.time_mask, iid_masks=True)
        self.freq_masking = torchaudio.transforms.FrequencyMasking(cfg.freq_mask, iid_masks=True)
        self.patch_embed = PatchEmbed(
            img_size=cfg.spec_size,
            patch_size=cfg.patch_size,
            in_chans=1,
            embed_dim=cfg.embed_dim,
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
        )
        grid = cfg.spec_size // cfg.patch_size
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        stages, dim, start = [], cfg.embed_dim, 0
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            out_dim = cfg.embed_dim * 2**i
            stage = SwinTransformerStage(
                dim=dim,
                out_dim=out_dim,
                input_resolution=(grid, grid),
                depth=depth,
                downsample=i > 0,
                num_heads=heads,
                window_size=cfg.window_size,
                drop_path=rates[start : start + depth],
            )
            for block in stage.blocks:
                # SDPA is exact here (plain softmax attention with an additive bias/mask).
                block.attn.fused_attn = True
            stages.append(stage)
            grid = grid // 2 if i > 0 else grid
            dim, start = out_dim, start + depth
        self.layers = nn.ModuleList(stages)

    def check_length(self, samples: int) -> None:
        if samples > self.cfg.max_samples:
            raise ValueError(
                f"audio: {samples} samples per segment is longer than the front end accepts "
                f"(at most {self.cfg.max_samples} samples = {self.cfg.max_frames} STFT frames at hop "
                f"{self.cfg.hop_length}); expected each 1-s segment tiled to 10 s (320000 samples at 32 kHz)"
            )

    def log_mel(self, wave: torch.Tensor, mix_lambda: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms ``[N, samples]`` -> normalised log-mel ``[N, 1, frames, mel]`` (with augmentation)."""
        self.check_length(wave.shape[-1])
        x = self.front_end(wave)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # bn0 normalises each mel bin
        if self.training and self.cfg.spec_augment:
            # [N, 1, T, F] -> [N, 1, F, T], the (freq, time) order torchaudio's masks expect.
            x = x.transpose(2, 3)
            x = self.time_masking(self.time_masking(self.freq_masking(self.freq_masking(x))))
            x = x.transpose(2, 3)
        if self.training and mix_lambda is not None:
            lam = mix_lambda.to(x.dtype).view(-1, 1, 1, 1)
            x = lam * x + (1 - lam) * x.flip(0)
        return x

    def wav2img(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, T, F]`` -> ``[N, 1, S, S]``: time resized to ``S*ratio``, chunks stacked on freq."""
        cfg = self.cfg
        n, _, frames, mel = x.shape
        if frames < cfg.max_frames:
            x = F.interpolate(x, (cfg.max_frames, mel), mode="bicubic", align_corners=True)
        x = x.transpose(2, 3)  # [N, 1, F, T]
        x = x.reshape(n, 1, mel, cfg.freq_ratio, cfg.spec_size).transpose(2, 3)
        return x.reshape(n, 1, cfg.spec_size, cfg.spec_size)

    def embed(self, wave: torch.Tensor, mix_lambda: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms ``[N, samples]`` -> patch tokens ``[N, H, W, C]`` ready for stage 1."""
        return self.patch_embed(self.wav2img(self.log_mel(wave, mix_lambda)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Plain HTS-AT features (no adapters): ``[N, H, W, C]`` after the last stage."""
        x = self.embed(wave)
        for stage in self.layers:
            x = stage(x)
        return x


# Keys of the published HTS-AT checkpoint that have no counterpart here, with the reason.
HTSAT_UNUSED_KEYS = {
    r"^(norm|tscam_conv|head)\.": "HTS-AT's classification head, not used by DG-SCT",
    r"^(spectrogram_extractor|logmel_extractor)\.": "fixed STFT / mel matrices, recomputed by torchaudio",
    r"\.(relative_position_index|attn_mask)$": "buffers timm recomputes",
}


def htsat_key_map(key: str) -> str | None:
    """Published HTS-AT key (``sed_model.`` already stripped) -> our key, or None if unused."""
    if any(re.search(p, key) for p in HTSAT_UNUSED_KEYS):
        return None
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    return key


def convert_htsat_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a published HTS-AT state dict (with or without ``sed_model.``) to :class:`HTSAT` keys."""
    out = {}
    for key, value in state.items():
        key = key[len("sed_model.") :] if key.startswith("sed_model.") else key
        new = htsat_key_map(key)
        if new is not None:
            out[new] = value
    return out


def check_front_end_constants(state: dict[str, torch.Tensor], front_end: LogMelFrontEnd, name: str) -> None:
    """Warn when a checkpoint's STFT/mel matrices are not the standard ones torchaudio computes.

    Our front end is fixed; a checkpoint that fine-tuned them (AVS-S4) cannot be represented.
    """
    mel = state.get("logmel_extractor.melW")
    if mel is not None and tuple(mel.shape) == tuple(front_end.mel.fb.shape):
        if not torch.allclose(mel.float(), front_end.mel.fb.float(), rtol=1e-3, atol=1e-5):
            log.warning("%s: its mel filterbank differs from the standard Slaney one; ours is used", name)


def create_audio_encoder(cfg: AudioConfig) -> HTSAT:
    model = HTSAT(cfg)
    if cfg.weights is None:
        log.warning("model.audio.weights is not set: the HTS-AT encoder is randomly initialised")
        return model
    load_htsat_weights(model, cfg.weights)
    return model


def load_htsat_weights(model: HTSAT, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load ``HTSAT_AudioSet_Saved_1.ckpt`` (Lightning, keys ``sed_model.*``) or a plain state dict."""
    name = str(source) if not isinstance(source, dict) else "HTS-AT state dict"
    raw = load_state_dict_file(source) if not isinstance(source, dict) else source
    stripped = {k[len("sed_model.") :] if k.startswith("sed_model.") else k: v for k, v in raw.items()}
    if not any(k.startswith("layers.") for k in stripped):
        raise CheckpointError(f"{name}: no HTS-AT 'layers.*' weights found (is this an HTS-AT checkpoint?)")
    check_front_end_constants(stripped, model.front_end, name)
    load_into(model, convert_htsat_state_dict(stripped), name)
