"""AVS head: the release's ``Pred_endecoder`` after the two encoders (release
AVS/avs_scripts/avs_s4/model/PVT_AVSModel.py:861-965; MS3 is the same code with another gamma).
``decoder: lavish`` is LAVisH's version of it (github GenjiB/LAVISH, avs_s4/model/PVT_AVSModel.py:
481-565): Linear to PVT-v2's widths and ASPP convolutions instead of DG-SCT's projections, no
temporal attention.

Per-stage visual maps -> a Linear per stage and a bicubic resize to PVT-v2's grids (56/28/14/7 at
full size) -> the AVS temporal attention (gates from per-stage LSTM + transformer encoders) ->
TPAVI (audio-visual non-local block, dot mode) at the four stages -> the FPN decoder -> the output
convolutions: mask logits ``[B*T, 1, 32g, 32g]`` (224 x 224 at full size), video-major.

Names follow the release, so release checkpoints map one to one (``head.`` + the release key). The
modules the release builds but never runs are not built (``AVS_UNUSED_RELEASE_KEYS`` lists them
with their reasons).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..output import EncoderNeeds, EncoderOutput
from ..temporal import AudioVisualLSTM, SelfRelation, TemporalConfig
from .configs import NUM_STAGES, AVSHeadConfig, AVSTemporalConfig

__all__ = [
    "AVS_S4_UNUSED_RELEASE_KEYS",
    "AVS_UNUSED_RELEASE_KEYS",
    "AVSHead",
    "AVSHeadConfig",
    "AVSTemporalAttention",
    "AVSTemporalConfig",
    "TPAVI",
]


class AVSTemporalAttention(nn.Module):
    """Four per-stage branches (release ``TemporalAttention``, PVT_AVSModel.py:447-582).

    Branch ``i``: the stage map pooled per frame -> ``v_fc`` -> ReLU -> dropout; an LSTM pair over
    the 5 frames with the audio; transformer encoders; sigmoid gates. Each stage map becomes
    ``x + gamma * g_a * x``; the audio becomes ``a + gamma * mean_i(g_v) * a``. The release also
    runs two cross-attention decoders per branch whose outputs it never uses: not built here.
    """

    def __init__(self, channels: int, audio_dim: int, cfg: AVSTemporalConfig, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma
        d = cfg.d_model
        relation = TemporalConfig(
            d_model=d, heads=cfg.heads, feedforward=cfg.feedforward, dropout=cfg.dropout
        )
        self.v_fc = nn.ModuleList([nn.Linear(channels, channels) for _ in range(NUM_STAGES)])
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        self.video_encoder = nn.ModuleList([SelfRelation(2 * d, relation) for _ in range(NUM_STAGES)])
        self.audio_encoder = nn.ModuleList([SelfRelation(d, relation) for _ in range(NUM_STAGES)])
        self.audio_visual_rnn_layer = nn.ModuleList(
            [AudioVisualLSTM(audio_dim, channels, d) for _ in range(NUM_STAGES)]
        )
        self.audio_gated = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, 1), nn.Sigmoid()) for _ in range(NUM_STAGES)]
        )
        self.video_gated = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, 1), nn.Sigmoid()) for _ in range(NUM_STAGES)]
        )

    def forward(
        self, maps: list[torch.Tensor], audio: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """``maps`` 4 x ``[B*T, C, h, w]``, ``audio [B, T, A]`` -> (gated maps, gated audio
        ``[B*T, A]``, the gates ``[4, B*T]`` of each kind)."""
        b, t = audio.shape[:2]
        gates_a, gates_v = [], []
        for i, x in enumerate(maps):
            pooled = F.adaptive_avg_pool2d(x, 1).flatten(1).view(b, t, -1)
            frames = self.input_dropout(F.relu(self.v_fc[i](pooled)))
            audio_rnn, visual_rnn = self.audio_visual_rnn_layer[i](audio, frames)
            video_memory = self.video_encoder[i](visual_rnn.transpose(0, 1).contiguous())  # [T, B, d]
            audio_memory = self.audio_encoder[i](audio_rnn.transpose(0, 1).contiguous())
            gates_a.append(self.audio_gated[i](audio_memory).transpose(0, 1).reshape(b * t, 1, 1, 1))
            gates_v.append(self.video_gated[i](video_memory).transpose(0, 1).reshape(b * t, 1))
        gamma = self.gamma
        # The release's operation order (PVT_AVSModel.py:574-580), so values match bit for bit.
        maps = [x + g * x * gamma for x, g in zip(maps, gates_a)]
        gate_v = (gates_v[0] + gates_v[1] + gates_v[2] + gates_v[3]) / 4
        flat = audio.reshape(b * t, -1)
        flat = flat + gate_v * flat * gamma
        gates = {
            "audio": torch.cat(gates_a).view(NUM_STAGES, b * t),
            "video": torch.cat(gates_v).view(-1, b * t),
        }
        return maps, flat, gates


class TPAVI(nn.Module):
    """Temporal pixel-wise audio-visual interaction, dot mode (release avs_s4/model/TPAVI.py:6-153).

    ``x [B, C, T, H, W]``, ``audio [B, T, A]``: ``a = align_channel(audio)`` is broadcast over the
    frame's pixels; ``y = (theta(x)^T phi(a) / N) g(x)`` with ``N = T*H*W`` (no softmax),
    ``z = LayerNorm_C(W_z(y) + x)``. Returns ``(z, a [B, T, C])``.

    Dot mode is linear in the attention weights, so the ``N x N`` matrix (15,680 x 15,680 at stage
    1) is never formed: ``(theta^T phi) g = theta^T (phi g)``, and ``phi g`` is a ``C' x C'``
    matrix summed over the frames (``phi`` of the audio is constant over a frame's pixels). The
    result is the same up to float rounding; memory and work drop from O(N^2) to O(N).
    """

    def __init__(self, channels: int, audio_dim: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.inner = inner
        self.align_channel = nn.Linear(audio_dim, channels)
        self.norm_layer = nn.LayerNorm(channels)
        self.g = nn.Conv3d(channels, inner, kernel_size=1)
        self.W_z = nn.Sequential(nn.Conv3d(inner, channels, kernel_size=1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.W_z[1].weight)  # the block starts as LayerNorm(x) (TPAVI.py:62-63)
        nn.init.zeros_(self.W_z[1].bias)
        self.theta = nn.Conv3d(channels, inner, kernel_size=1)
        self.phi = nn.Conv3d(channels, inner, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t, h, w = x.shape
        n, inner = t * h * w, self.inner
        a = self.align_channel(audio)  # [B, T, C]
        theta = self.theta(x).view(b, inner, n).transpose(1, 2)  # [B, N, C']
        g_per_frame = self.g(x).view(b, inner, t, h * w).float().sum(-1)  # [B, C', T]
        phi = F.linear(a, self.phi.weight.view(inner, c), self.phi.bias)  # [B, T, C']: one per frame
        # The sums over all N positions run in fp32 even under bf16 autocast (they are O(N) here).
        with torch.autocast(x.device.type, enabled=False):
            context = torch.bmm(phi.float().transpose(1, 2), g_per_frame.transpose(1, 2))  # [B, C', C']
            y = torch.bmm(theta.float(), context) / n  # [B, N, C']
        y = y.to(theta.dtype).transpose(1, 2).reshape(b, inner, t, h, w)
        z = self.W_z(y) + x
        z = self.norm_layer(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return z, a


class ResidualConvUnit(nn.Module):
    """``ReLU(x) + conv2(ReLU(conv1(ReLU(x))))`` (PVT_AVSModel.py:349-380).

    The release's first ReLU is in place, so the skip path (and the caller's tensor) is ReLU'd.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """``x (+ RCU1(skip))`` -> RCU2 -> x2 bilinear, corners aligned (PVT_AVSModel.py:382-412).
    The deepest block takes no skip input: its ``resConfUnit1`` is not built."""

    def __init__(self, channels: int, skip: bool = True) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels) if skip else None
        self.resConfUnit2 = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ASPPSum(nn.Module):
    """The sum of dilated 3x3 convolutions (LAVisH's ``Classifier_Module``, PVT_AVSModel.py:157-171)."""

    def __init__(self, in_channels: int, out_channels: int, dilations: list[int]) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=d, dilation=d) for d in dilations]
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class _Upsample2x(nn.Module):
    """x2 bilinear, corners not aligned (the release's ``Interpolate`` inside ``output_conv``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class AVSHead(nn.Module):
    """Encoder output (per-stage visual maps, pooled audio ``[B, T, Ca]``) -> mask logits.

    Returns ``mask_logits [B*T, 1, 32g, 32g]`` (video-major: row ``b*T + t``),
    ``feature_map_{i} [B*T, C, 8g/2^i, ...]`` (the TPAVI outputs after the FPN's ReLU, which the
    release returns and MS3's AVM loss reads) and ``tpavi_audio_{i} [B, T, C]`` (TPAVI's aligned
    audio), for the stages ``i = 0..3``.
    """

    encoder_needs = EncoderNeeds(visual_stages=True)

    def __init__(self, visual_dim: int, audio_dim: int, cfg: AVSHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AVSHeadConfig()
        self.cfg = cfg
        dims = cfg.stage_dims or [visual_dim // 2 ** (NUM_STAGES - 1 - i) for i in range(NUM_STAGES)]
        self.stage_dims = list(dims)
        self.sizes = [cfg.grid * 2 ** (NUM_STAGES - 1 - i) for i in range(NUM_STAGES)]
        c = cfg.channels
        self.audio_linear = nn.Linear(audio_dim, cfg.audio_dim)
        if cfg.decoder == "lavish":  # LAVisH's names (PVT_AVSModel.py:305-319)
            for i, (dim, pvt) in enumerate(zip(dims, cfg.pvt_dims, strict=True)):
                setattr(self, f"x{i + 1}_linear", nn.Linear(dim, pvt))
                setattr(self, f"conv{i + 1}", ASPPSum(pvt, c, cfg.aspp_dilations))
            self.temporal_attn = None
        else:
            for i, dim in enumerate(dims):
                setattr(self, f"x{i + 1}_linear_", nn.Linear(dim, c))
            self.temporal_attn = AVSTemporalAttention(c, cfg.audio_dim, cfg.temporal, cfg.gamma)
        for i in range(NUM_STAGES):
            setattr(self, f"tpavi_b{i + 1}", TPAVI(c, cfg.audio_dim))
        self.path4 = FeatureFusionBlock(c, skip=False)
        self.path3 = FeatureFusionBlock(c)
        self.path2 = FeatureFusionBlock(c)
        self.path1 = FeatureFusionBlock(c)
        h0, h1 = cfg.output_hidden
        self.output_conv = nn.Sequential(
            nn.Conv2d(c, h0, kernel_size=3, padding=1),
            _Upsample2x(),
            nn.Conv2d(h0, h1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(h1, 1, kernel_size=1),
        )

    def project_stages(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """Token maps ``[N, L_i, C_i]`` (square grids, row-major) -> ``[N, C, s_i, s_i]``:
        Linear C_i -> C on the grid, then bicubic resize (PVT_AVSModel.py:892-916); LAVisH's
        decoder: Linear to the PVT width, bicubic resize, then the ASPP sum (LAVisH 518-531)."""
        lavish = self.cfg.decoder == "lavish"
        if len(stages) != NUM_STAGES:
            raise ValueError(f"the AVS head needs {NUM_STAGES} visual stage maps, got {len(stages)}")
        out = []
        for i, (tokens, size) in enumerate(zip(stages, self.sizes)):
            n, length, dim = tokens.shape
            side = math.isqrt(length)
            if side * side != length or dim != self.stage_dims[i]:
                raise ValueError(
                    f"visual stage {i + 1}: expected a square token grid of width {self.stage_dims[i]}, "
                    f"got {length} tokens of width {dim} (set model.head.stage_dims for this encoder)"
                )
            grid = getattr(self, f"x{i + 1}_linear" if lavish else f"x{i + 1}_linear_")(
                tokens.view(n, side, side, dim)
            )
            grid = F.interpolate(
                grid.permute(0, 3, 1, 2), size=(size, size), mode="bicubic", align_corners=False
            )
            out.append(getattr(self, f"conv{i + 1}")(grid) if lavish else grid)
        return out

    def decode(
        self, stages: list[torch.Tensor], pooled_audio: torch.Tensor, trace: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """Everything after the encoders; ``trace`` (a dict) collects intermediates for tests."""
        b, t = pooled_audio.shape[:2]
        audio = self.audio_linear(pooled_audio)  # [B, T, A]
        maps = self.project_stages(stages)
        if trace is not None:
            trace.update(audio_linear_out=audio, ta_in_maps=maps)
        if self.temporal_attn is None:  # LAVisH's decoder: straight to TPAVI
            audio_bt = audio
            if trace is not None:
                trace.update(tpavi_z=[])
        else:
            maps, audio_flat, gates = self.temporal_attn(maps, audio)
            audio_bt = audio_flat.view(b, t, -1)
            if trace is not None:
                trace.update(ta_out_maps=maps, ta_out_audio=audio_flat, gates=gates, tpavi_z=[])
        out: dict[str, torch.Tensor] = {}
        relu_maps = []
        for i, x in enumerate(maps):
            c, h, w = x.shape[1:]
            video = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # [B, C, T, H, W]
            z, a = getattr(self, f"tpavi_b{i + 1}")(video, audio_bt)
            if trace is not None:
                trace["tpavi_z"].append(z)
            z = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            # The FPN's in-place ReLU rewrites the release's returned maps: they are ReLU(z).
            relu_maps.append(F.relu(z))
            out[f"feature_map_{i}"] = relu_maps[-1]
            out[f"tpavi_audio_{i}"] = a
        p4 = self.path4(relu_maps[3])
        p3 = self.path3(p4, relu_maps[2])
        p2 = self.path2(p3, relu_maps[1])
        p1 = self.path1(p2, relu_maps[0])
        if trace is not None:
            trace.update(fpn={"path4": p4, "path3": p3, "path2": p2, "path1": p1})
        out["mask_logits"] = self.output_conv(p1)
        return out

    def forward(self, features: EncoderOutput, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        if features.visual_stages is None:
            raise ValueError("the AVS head needs the per-stage visual maps (EncoderNeeds.visual_stages)")
        b, t = features.audio.shape[:2]
        if torch.is_grad_enabled() or self.training or b == 1:
            return self.decode(features.visual_stages, features.audio)
        # Inference: videos are independent after the encoders (BatchNorm uses its running
        # statistics), so decode one at a time; the 112/224-pixel decoder maps then exist for
        # 5 frames at once, not 5B (full size, batch 2: peak RSS 2.9 -> 2.6 GiB).
        parts = [
            self.decode([s[i * t : (i + 1) * t] for s in features.visual_stages], features.audio[i : i + 1])
            for i in range(b)
        ]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# Release keys (``model.module.state_dict()`` of Pred_endecoder) of modules the release builds but
# never runs, each with the reason (measured: reflab state_dict_shapes_{s4,ms3}.json).
AVS_UNUSED_RELEASE_KEYS = {
    r"^encoder_backbone\.": "PVT-v2-b5, built and loaded but never called (DG-SCT's Swin-V2 replaces it)",
    r"^conv[1-4]\.": "ASPP heads (Classifier_Module) of the PVT decoder, never called",
    r"^x[1-4]_linear\.": "projections to PVT-v2's widths, never called (x*_linear_ are used)",
    r"^path4\.resConfUnit1\.": "path4 is called with one input, so its first residual unit never runs",
    r"^temporal_attn\.\w+\.\d+\.(encoder_layer|decoder_layer)\.": "template layers the encoders copy",
    r"^temporal_attn\.(audio|video)_decoder\.": "cross-attention decoders whose outputs are never used",
    r"^(audio|vis)_adapter_blocks_p[12]\.\d+\.ln_before\.": "adapter LayerNorm the AVS adapters never call",
    r"^(audio|vis)_adapter_blocks_p[12]\.\d+\.temporal_gated\.": "adapter temporal gate whose output is unused",
}
# S4's adapters project the guide by fc + resize (PVT_AVSModel.py:190-197): the token conv is unused.
AVS_S4_UNUSED_RELEASE_KEYS = {
    **AVS_UNUSED_RELEASE_KEYS,
    r"^(audio|vis)_adapter_blocks_p[12]\.\d+\.conv_adapter\.": "token conv of the adapters, unused by S4's resize projection",
}
