"""HTS-AT (a Swin V1 transformer over a log-mel "image") as an audio tower, on timm's Swin stages.

The log-mel front end is torchaudio's (computed from the config) or, for checkpoints that carry
their own STFT kernels and mel matrix (CLAP, AVS-S4), the kernels read from the file. The
transformer is timm's ``SwinTransformerStage``. HTS-AT puts patch merging at the *end* of stages
1-3 while timm puts it at the *start* of stages 2-4: the math is identical and
:func:`htsat_key_map` moves the keys.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformerStage
from torch import nn

from ..weights import CheckpointError, load_into, load_state_dict_file
from .base import StagedNHWCView, StageGeometry
from .configs import HTSATConfig

log = logging.getLogger(__name__)


class LogMelFrontEnd(nn.Module):
    """Power STFT (Hann, centred, reflect) -> Slaney mel -> dB, as HTS-AT computes it."""

    def __init__(self, cfg: HTSATConfig) -> None:
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


def _stft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary DFT rows times a periodic Hann window, ``[n_fft // 2 + 1, 1, n_fft]``."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft
    real, imag = torch.cos(angle) * window, -torch.sin(angle) * window
    return real.float().unsqueeze(1), imag.float().unsqueeze(1)


class _STFTConvs(nn.Module):
    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        real, imag = _stft_kernels(n_fft)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)


class KernelSpectrogram(nn.Module):
    """Power STFT as two strided 1-D convolutions whose kernels are tensors of the model (the
    release's torchlibrosa layout: ``stft.conv_real.weight``, ``stft.conv_imag.weight``)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.stft = _STFTConvs(n_fft, hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``[N, samples]`` -> power ``[N, 1, frames, bins]`` (centred, reflect padding)."""
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)  # [N, bins, frames]
        return (real**2 + imag**2).transpose(1, 2).unsqueeze(1)


class KernelLogMel(nn.Module):
    """Mel projection by a matrix of the model (``melW`` [bins, mel]) and dB (ref 1, amin 1e-10)."""

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        self.melW = nn.Parameter(self.computed(cfg))

    @staticmethod
    def computed(cfg: HTSATConfig) -> torch.Tensor:
        """The standard Slaney filterbank ``[bins, mel]`` for ``cfg``."""
        return torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1,
            cfg.fmin,
            cfg.fmax,
            cfg.mel_bins,
            cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))


class HTSAT(nn.Module):
    """HTS-AT trunk: front end, ``bn0``, SpecAugment, wav->image reshape, patch embed, 4 stages."""

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.front_end == "computed":
            self.front_end = LogMelFrontEnd(cfg)
        else:  # the release's names, so its (and CLAP's) STFT kernels and mel matrix load by key
            self.spectrogram_extractor = KernelSpectrogram(cfg.n_fft, cfg.hop_length)
            self.logmel_extractor = KernelLogMel(cfg)
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
        self.norm = nn.LayerNorm(dim) if cfg.final_norm else None

    def compute_log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``[N, samples]`` -> dB log-mel ``[N, 1, frames, mel]``, in fp32 even under autocast
        (dB of a bf16 power spectrum is too coarse)."""
        if self.cfg.front_end == "computed":
            return self.front_end(wave)
        with torch.autocast(wave.device.type, enabled=False):
            return self.logmel_extractor(self.spectrogram_extractor(wave.float()))

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
        x = self.compute_log_mel(wave)
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

    def image_to_time_frequency(self, image: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`wav2img`'s stacking: ``[N, S, S]`` (an image, or a map over it) ->
        ``[N, mel, max_frames]`` (frequency rows, time columns)."""
        cfg = self.cfg
        n = image.shape[0]
        chunks = image.reshape(n, cfg.freq_ratio, cfg.mel_bins, cfg.spec_size)
        return chunks.permute(0, 2, 1, 3).reshape(n, cfg.mel_bins, cfg.freq_ratio * cfg.spec_size)

    def embed(self, wave: torch.Tensor, mix_lambda: torch.Tensor | None = None) -> torch.Tensor:
        """Waveforms ``[N, samples]`` -> patch tokens ``[N, H, W, C]`` ready for stage 1."""
        return self.patch_embed(self.wav2img(self.log_mel(wave, mix_lambda)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Plain HTS-AT features (no adapters): ``[N, H, W, C]`` after the last stage."""
        x = self.embed(wave)
        for stage in self.layers:
            x = stage(x)
        return x if self.norm is None else self.norm(x)


class HTSATView(StagedNHWCView):
    """The walker's view of :class:`HTSAT`: NHWC tokens, merging at the start of stages 2-4."""

    def __init__(self, model: HTSAT) -> None:
        self.model = model
        grid = model.cfg.spec_size // model.cfg.patch_size
        self.geometry = []
        for i, stage in enumerate(model.layers):
            grid = grid // 2 if i > 0 else grid
            self.geometry.append(StageGeometry(stage.blocks[0].dim, grid * grid, len(stage.blocks)))

    def embed(self, wave: torch.Tensor, mix_lambda: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.embed(wave, mix_lambda)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.model.norm is None else self.model.norm(x)


# Keys of published HTS-AT checkpoints with no counterpart in an HTS-AT built from ``cfg``.
_CLASSIFIER = {r"^(tscam_conv|head)\.": "HTS-AT's classification head, not used by DG-SCT"}
_FINAL_NORM = {r"^norm\.": "HTS-AT's final norm, which DG-SCT's core does not use"}
_FRONT_END = {
    r"^(spectrogram_extractor|logmel_extractor)\.": "standard STFT / mel matrices, computed from the config"
}
_BUFFERS = {r"\.(relative_position_index|attn_mask)$": "buffers timm recomputes"}
# The core's HTS-AT (computed front end, no final norm): what AVE and AVVP drop.
HTSAT_UNUSED_KEYS = {**_CLASSIFIER, **_FINAL_NORM, **_FRONT_END, **_BUFFERS}


def htsat_unused_keys(cfg: HTSATConfig) -> dict[str, str]:
    """Published keys an HTS-AT built from ``cfg`` does not use: {regex: reason}."""
    return {
        **_CLASSIFIER,
        **({} if cfg.final_norm else _FINAL_NORM),
        **(_FRONT_END if cfg.front_end == "computed" else {}),
        **_BUFFERS,
    }


def htsat_key_map(key: str, unused: dict[str, str] | None = None) -> str | None:
    """Published HTS-AT key (``sed_model.`` already stripped) -> our key, or None if unused."""
    if any(re.search(p, key) for p in (HTSAT_UNUSED_KEYS if unused is None else unused)):
        return None
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    return key


def convert_htsat_state_dict(
    state: dict[str, torch.Tensor], unused: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Map a published HTS-AT state dict (with or without ``sed_model.``) to :class:`HTSAT` keys."""
    out = {}
    for key, value in state.items():
        key = key[len("sed_model.") :] if key.startswith("sed_model.") else key
        new = htsat_key_map(key, unused)
        if new is not None:
            out[new] = value
    return out


def check_front_end_constants(state: dict[str, torch.Tensor], model: HTSAT, name: str) -> None:
    """Warn when a file's mel matrix is not the standard one a computed front end uses (a
    checkpoint that fine-tuned it, e.g. AVS-S4, needs ``front_end: weights``)."""
    mel = state.get("logmel_extractor.melW")
    if model.cfg.front_end != "computed" or mel is None:
        return
    if tuple(mel.shape) == tuple(model.front_end.mel.fb.shape) and not torch.allclose(
        mel.float(), model.front_end.mel.fb.float(), rtol=1e-3, atol=1e-5
    ):
        log.warning(
            "%s: its mel filterbank differs from the standard Slaney one; the computed one is used "
            "(set model.audio.front_end: weights to use the file's)",
            name,
        )


def create_audio_encoder(cfg: HTSATConfig) -> HTSAT:
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
    check_front_end_constants(stripped, model, name)
    state = convert_htsat_state_dict(stripped, htsat_unused_keys(model.cfg))
    load_into(model, with_front_end(state, model, name), name)


def front_end_keys(model: HTSAT) -> list[str]:
    """Keys of the STFT kernels and mel matrix when the front end is a tensor of the model."""
    return [k for k in model.state_dict() if re.match(r"(spectrogram_extractor|logmel_extractor)\.", k)]


def with_front_end(state: dict[str, torch.Tensor], model: HTSAT, name: str, prefix: str = "") -> dict:
    """``state``, with the model's own (computed) STFT kernels and mel matrix added when a file
    without them is loaded into a ``front_end: weights`` model: such a file means the standard
    front end, which is what they are initialised to."""
    keys = [prefix + k for k in front_end_keys(model)]
    missing = [k for k in keys if k not in state]
    if not missing:
        return state
    if len(missing) < len(keys):
        raise CheckpointError(f"{name}: has only part of the HTS-AT front end (missing {', '.join(missing)})")
    log.info("%s: no STFT kernels or mel matrix in the file; using the computed ones", name)
    real, imag = _stft_kernels(model.cfg.n_fft)
    computed = {
        "spectrogram_extractor.stft.conv_real.weight": real,
        "spectrogram_extractor.stft.conv_imag.weight": imag,
        "logmel_extractor.melW": KernelLogMel.computed(model.cfg),
    }
    return {**state, **{k: computed[k[len(prefix) :]] for k in missing}}
