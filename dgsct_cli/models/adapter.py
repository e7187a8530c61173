"""The DG-SCT adapter: one module, used for both directions (audio->visual and visual->audio).

Tokens are kept channels-last (``[N, L, C]``) inside the model because every operation except
the token-axis mixing is a per-token linear map; the release's ``[N, C, L, 1]`` Conv2d layout is
kept only in the parameter *shapes and names* so release checkpoints load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import Annotated, OneOf, Range


@dataclass
class AdapterSettings:
    """Per-task adapter options (the release's per-task variants are settings, not classes).
    Defaults are AVE's."""

    num_tokens: Annotated[int, Range(1)] = 32
    token_init: Annotated[str, OneOf("uniform", "zeros")] = "uniform"  # U[0,1) or zeros
    reduction: Annotated[int, Range(1)] = 8  # bottleneck reduction r
    groups: Annotated[int, Range(1)] = 2  # groups of down_sampler / up_sampler
    use_bn: bool = True
    use_gate: bool = True  # output gate of the visual adapters (false: output added un-gated)
    audio_gate: bool | None = None  # output gate of the audio adapters; None = same as use_gate
    # How the guide tokens reach x's token count: "token_conv" (1x1 conv over tokens, then fc;
    # AVE/AVVP/AVQA/MS3) or "resize" (fc, then bicubic resize of the token grid; AVS-S4).
    guide_projection: Annotated[str, OneOf("token_conv", "resize")] = "token_conv"
    gate_tk: bool = True  # the release's unused `gate_tk` parameter (kept so checkpoints match)
    ln_before: bool = True
    gate_before_ln_post: bool = False  # AVS order: gate * out, then ln_post
    alpha: float = 0.3
    beta: float = 0.05
    # The few-shot variant's per-segment temporal gate: sigmoid(Linear(C -> 1)) of the guide's
    # mean token adds gamma * gate to the modulation (few-shot nets/net_trans.py:534-549).
    temporal_gate: bool = False
    gamma: float = 0.0


class DGSCTAdapter(nn.Module):
    """Cross-modal prompt + channel/spatial attention + bottleneck (release AVE/nets/net_trans.py:433-676, VisualAdapter).

    ``forward(x, y)``: ``x`` are the tokens being adapted ``[N, L, C]``, ``y`` the guiding
    modality's tokens ``[N, L', C']``. Returns ``(out [N, L, C], spatial_map [N, 1, L])``.
    """

    def __init__(
        self,
        channels: int,
        tokens: int,
        guide_channels: int,
        guide_tokens: int,
        settings: AdapterSettings | None = None,
    ) -> None:
        super().__init__()
        s = settings or AdapterSettings()
        self.settings = s
        self.channels, self.tokens = channels, tokens
        self.guide_channels, self.guide_tokens = guide_channels, guide_tokens
        c, d = channels, channels // 2
        hidden = channels // s.reduction
        if c % s.groups or hidden % s.groups:
            raise ValueError(
                f"adapter channels {c} and bottleneck {hidden} must be divisible by groups={s.groups}"
            )

        self.gate = nn.Parameter(torch.zeros(1)) if s.use_gate else None
        tokens_init = (
            torch.rand(s.num_tokens, c) if s.token_init == "uniform" else torch.zeros(s.num_tokens, c)
        )
        self.my_tokens = nn.Parameter(tokens_init)
        self.gate_tk = nn.Parameter(torch.ones(1)) if s.gate_tk else None
        self.gate_av = nn.Parameter(torch.zeros(1))

        # Guide projection: token axis L' -> L (a 1x1 conv over tokens in the release), then C' -> C.
        # The resize variant never runs the token conv (release avs_s4/model/PVT_AVSModel.py:190-197),
        # so it is not built (up to 9.4M parameters per adapter).
        self.conv_adapter = (
            nn.Conv2d(guide_tokens, tokens, kernel_size=1) if s.guide_projection == "token_conv" else None
        )
        self.fc = nn.Linear(guide_channels, c)

        self.fc_affine_audio_1 = nn.Linear(c, c)
        self.fc_affine_video_1 = nn.Linear(c, c)
        self.fc_affine_bottleneck = nn.Linear(c, d)
        self.fc_affine_v_c_att = nn.Linear(d, c)
        self.fc_affine_video_2 = nn.Linear(c, d)
        self.fc_affine_audio_2 = nn.Linear(c, d)
        self.fc_affine_v_s_att = nn.Linear(d, 1)

        self.down_sampler = nn.Conv2d(c, hidden, kernel_size=1, groups=s.groups, bias=False)
        self.up_sampler = nn.Conv2d(hidden, c, kernel_size=1, groups=s.groups, bias=False)
        # BatchNorm1d over [N*L, C] computes exactly the statistics BatchNorm2d computes over
        # [N, C, L, 1], and has the same state-dict keys.
        self.bn1 = nn.BatchNorm1d(hidden) if s.use_bn else None
        self.bn2 = nn.BatchNorm1d(c) if s.use_bn else None
        self.ln_before = nn.LayerNorm(c) if s.ln_before else None
        self.ln_post = nn.LayerNorm(c)
        self.temporal_gated = nn.Sequential(nn.Linear(c, 1), nn.Sigmoid()) if s.temporal_gate else None

    # -- helpers -----------------------------------------------------------------------------
    def project_guide(self, y: torch.Tensor) -> torch.Tensor:
        """Resample the guide ``[N, L', C']`` to ``[N, L, C]`` (token mixing, then channel map).

        With ``guide_projection: resize`` the channel map runs first and the square token grid
        is resized bicubically (AVS-S4's variant; ``conv_adapter`` is then built but unused).

        Both maps are linear, so they commute up to the bias terms; we run the cheaper order.
        conv-first costs L*L'*C' + L*C'*C, fc-first costs L'*C'*C + L*L'*C.
        """
        L, Lg, C, Cg = self.tokens, self.guide_tokens, self.channels, self.guide_channels
        if self.settings.guide_projection == "resize":
            n, side, side_g = y.shape[0], math.isqrt(L), math.isqrt(Lg)
            if side * side != L or side_g * side_g != Lg:
                raise ValueError(
                    f"guide_projection 'resize' needs square token grids, got {Lg} -> {L} tokens"
                )
            grid = self.fc(y).transpose(1, 2).reshape(n, C, side_g, side_g)
            grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
            return grid.flatten(2).transpose(1, 2)
        w_tok = self.conv_adapter.weight.view(self.tokens, self.guide_tokens)
        b_tok = self.conv_adapter.bias
        if L * Lg * Cg + L * Cg * C <= Lg * Cg * C + L * Lg * C:
            mixed = torch.matmul(w_tok, y) + b_tok[:, None]  # [N, L, C']
            return self.fc(mixed)
        projected = F.linear(y, self.fc.weight)  # [N, L', C]
        out = torch.matmul(w_tok, projected)  # [N, L, C]
        # bias terms: conv bias passes through fc's weight; fc bias is added once.
        return out + b_tok[:, None] * self.fc.weight.sum(1) + self.fc.bias

    @staticmethod
    def _grouped_pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """Apply a grouped 1x1 Conv2d to channels-last tokens as one dense matmul."""
        w = conv.weight.flatten(1)  # [out, in/groups]
        if conv.groups > 1:
            w = torch.block_diag(*w.chunk(conv.groups, dim=0))
        return F.linear(x, w)

    @staticmethod
    def _token_bn(x: torch.Tensor, bn: nn.BatchNorm1d | None) -> torch.Tensor:
        if bn is None:
            return x
        n, length, c = x.shape
        return bn(x.reshape(n * length, c)).view(n, length, c)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        guide = self.project_guide(y)  # [N, L, C]

        # 1. learnable-token prompt
        tokens = self.my_tokens.unsqueeze(0).expand(x.shape[0], -1, -1)  # [N, K, C]
        tok_to_guide = torch.softmax(torch.bmm(tokens, guide.transpose(1, 2)), dim=-1)  # over L
        tokens = tokens + torch.bmm(tok_to_guide, guide)  # [N, K, C]
        x_to_tok = torch.softmax(torch.bmm(x, tokens.transpose(1, 2)), dim=-1)  # over K, [N, L, K]
        x = x + self.gate_av * torch.bmm(x_to_tok, tokens)

        # 2. channel attention guided by the other modality
        guide_mean = guide.mean(dim=1, keepdim=True)  # [N, 1, C]
        joint = F.relu(self.fc_affine_audio_1(guide_mean)) * F.relu(self.fc_affine_video_1(x))
        channel = torch.sigmoid(
            self.fc_affine_v_c_att(F.relu(self.fc_affine_bottleneck(joint.mean(dim=1, keepdim=True))))
        )  # [N, 1, C]
        x_channel = x * (channel + 1)

        # 3. spatial attention
        spatial = self.fc_affine_v_s_att(
            F.relu(self.fc_affine_video_2(x_channel)) * F.relu(self.fc_affine_audio_2(guide_mean))
        )  # [N, L, 1]
        spatial_map = torch.softmax(torch.tanh(spatial), dim=1).transpose(1, 2)  # [N, 1, L]

        # 4. the release re-weights x (not x_channel) with both attentions (and the temporal gate)
        factor = s.alpha * channel + s.beta * torch.sigmoid(spatial) + 1 - s.alpha
        if self.temporal_gated is not None:
            factor = factor + s.gamma * self.temporal_gated(guide_mean)  # [N, 1, 1]
        x = x * factor

        # 5. bottleneck
        if self.ln_before is not None:
            x = self.ln_before(x)
        z = F.relu(self._token_bn(self._grouped_pointwise(x, self.down_sampler), self.bn1))
        out = self._token_bn(self._grouped_pointwise(z, self.up_sampler), self.bn2)
        if s.gate_before_ln_post:
            if self.gate is not None:
                out = self.gate * out
            out = self.ln_post(out)
        else:
            out = self.ln_post(out)
            if self.gate is not None:
                out = self.gate * out
        return out, spatial_map
