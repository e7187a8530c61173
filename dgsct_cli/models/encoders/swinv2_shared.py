"""The ``swinv2-shared`` family: ONE Swin-V2 for both modalities, audio as a spectrogram image
(LAVisH, CVPR 2023: github GenjiB/LAVISH, ``AVE/nets/net_trans.py`` ``forward_swin``).

The audio tower is LAVisH's front end in front of the same Swin-V2 (no weights of its own): each
segment's waveform becomes a Kaldi log-mel filterbank (``AVE/dataloader.py:128-197``: 192 mel bins,
25 ms Hanning frames every 5.2 ms, HTK-compatible, no energy, no dither), normalised with LAVisH's
AVE statistics as ``(fbank - mean) / (2 * std)``, cut or zero-padded to 192 frames; the
``[frames, mel]`` image is repeated over the three colour channels and patch-embedded by the Swin.
Every block is paired with itself: a pair runs the attention half on both modalities with the p1
adapters, then the MLP half with the p2 adapters (net_trans.py:372-400). Both token maps go through
the Swin's final norm and are pooled by their mean (411-412).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchaudio
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .base import EncoderFamily, StagedNHWCView, TowerSet, register_family
from .clip_clap import pair_in_order
from .configs import SpectrogramImageConfig, SwinV2Config
from .swinv2 import SwinV2View, create_visual_encoder
from .swinv2_htsat import _attn_half, _mlp_half, pool_mean, pool_with_maps

if TYPE_CHECKING:
    from ..dual import DualEncoder


class SpectrogramImage(nn.Module):
    """Waveforms ``[N, samples]`` -> LAVisH's normalised log-mel image ``[N, 3, frames, mel]``."""

    def __init__(self, cfg: SpectrogramImageConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def check_length(self, samples: int) -> None:
        need = int(self.cfg.sample_rate * self.cfg.frame_length_ms / 1000)
        if samples < need:
            raise ValueError(
                f"audio: {samples} samples per segment is shorter than one {self.cfg.frame_length_ms:g} ms "
                f"frame ({need} samples at {self.cfg.sample_rate} Hz); expected 1 s per segment"
            )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        images = []
        with torch.autocast(wave.device.type, enabled=False), torch.no_grad():
            for segment in wave.float():
                # The release removes the clip's mean first (dataloader.py:132); Kaldi's per-frame
                # DC removal makes that a no-op up to rounding.
                segment = segment - segment.mean()
                fbank = torchaudio.compliance.kaldi.fbank(
                    segment[None],
                    htk_compat=True,
                    sample_frequency=cfg.sample_rate,
                    use_energy=False,
                    window_type=cfg.window,
                    num_mel_bins=cfg.mel_bins,
                    dither=0.0,
                    frame_length=cfg.frame_length_ms,
                    frame_shift=cfg.frame_shift_ms,
                )
                fbank = (fbank - cfg.norm_mean) / (cfg.norm_std * 2)
                # Cut or zero-pad the (normalised) frames to the image height (dataloader.py:183-192).
                fbank = F.pad(fbank, (0, 0, 0, max(0, cfg.frames - fbank.shape[0])))[: cfg.frames]
                images.append(fbank)
        return torch.stack(images)[:, None].expand(-1, 3, -1, -1)


class SharedAudioTower(nn.Module):
    """The audio side of the shared Swin: its front end only. The Swin itself is the visual tower
    (held here without registering it, so its weights appear once in a state dict)."""

    def __init__(self, cfg: SpectrogramImageConfig, swin: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.front_end = SpectrogramImage(cfg)
        self._swin = (swin,)  # a tuple: not a submodule

    @property
    def swin(self) -> nn.Module:
        return self._swin[0]

    def check_length(self, samples: int) -> None:
        self.front_end.check_length(samples)

    def embed(self, wave: torch.Tensor, mix_lambda: torch.Tensor | None = None) -> torch.Tensor:
        image = self.front_end(wave).to(self.swin.patch_embed.proj.weight.dtype)
        if self.training and mix_lambda is not None:  # the HTS-AT towers' log-mel mixup, on the image
            lam = mix_lambda.to(image.dtype).view(-1, 1, 1, 1)
            image = lam * image + (1 - lam) * image.flip(0)
        return self.swin.patch_embed(image)


class SharedAudioView(StagedNHWCView):
    """The walker's view of the audio side: the visual Swin's stages over the spectrogram tokens."""

    def __init__(self, tower: SharedAudioTower, visual_view: SwinV2View) -> None:
        self.tower = tower
        self.model = tower.swin
        self.geometry = list(visual_view.geometry)
        self._visual_view = visual_view

    def embed(self, wave: torch.Tensor, mix_lambda: torch.Tensor | None = None) -> torch.Tensor:
        return self.tower.embed(wave, mix_lambda)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self._visual_view.finish(x)


def paired_step(
    enc: DualEncoder, i: int, v_block: nn.Module, a_block: nn.Module, v: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One Swin block on both modalities (LAVisH net_trans.py:375-397): p1 adapters from the same
    (v, a), the attention half on each, p2 adapters, the MLP half on each."""
    n, h, w, c = v.shape
    vt, at = v.reshape(n, h * w, c), a.reshape(n, h * w, c)
    ra, _ = enc.adapt("audio_p1", i, at, vt)
    rv, _ = enc.adapt("visual_p1", i, vt, at)
    v = v + enc.run(lambda x: _attn_half(v_block, x), v) + rv.view(n, h, w, c)
    a = a + enc.run(lambda x: _attn_half(a_block, x), a) + ra.view(n, h, w, c)
    vt, at = v.reshape(n, h * w, c), a.reshape(n, h * w, c)
    ra, map_a = enc.adapt("audio_p2", i, at, vt)
    rv, map_v = enc.adapt("visual_p2", i, vt, at)
    v = v + enc.run(lambda x: _mlp_half(v_block, x), v) + rv.view(n, h, w, c)
    a = a + enc.run(lambda x: _mlp_half(a_block, x), a) + ra.view(n, h, w, c)
    return v, a, map_v, map_a


def build(visual: SwinV2Config, audio: SpectrogramImageConfig, text: None, load_weights: bool) -> TowerSet:
    if visual.img_size != audio.mel_bins or visual.img_size != audio.frames:
        raise ValueError(
            f"model.audio: the spectrogram image ({audio.frames} frames x {audio.mel_bins} mel bins) must "
            f"be the shared Swin's input size (model.visual.img_size {visual.img_size})"
        )
    if not load_weights:
        visual = replace(visual, weights=None)
    swin = create_visual_encoder(visual)
    audio_tower = SharedAudioTower(audio, swin)
    visual_view = SwinV2View(swin)
    return TowerSet(
        visual=swin,
        audio=audio_tower,
        visual_view=visual_view,
        audio_view=SharedAudioView(audio_tower, visual_view),
    )


SWINV2_SHARED = register_family(
    EncoderFamily(
        name="swinv2-shared",
        description="one Swin-V2-L (ImageNet-22k, 192 px) for frames and 16 kHz log-mel images (LAVisH)",
        visual_config=SwinV2Config,
        audio_config=SpectrogramImageConfig,
        build=build,
        pair_blocks=pair_in_order,
        paired_step=paired_step,
        pool=pool_with_maps,
        pool_plain=pool_mean,
        normalization=lambda cfg: (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        recompute_auto_blocks=24,
    )
)
