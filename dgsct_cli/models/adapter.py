"""The DG-SCT adapter: one module, used for both directions (audio->visual and visual->audio).

``AdapterSettings`` (:mod:`.adapter_settings`) is the recipe section ``model.adapter`` of every
adapter kind (``kind``: ``dgsct``, ``lavish`` or ``none``; the kinds are a registry in
:mod:`.adapter_kinds`).

Tokens are kept channels-last (``[N, L, C]``) inside the model because every operation except
the token-axis mixing is a per-token linear map; the release's ``[N, C, L, 1]`` Conv2d layout is
kept only in the parameter *shapes and names* so release checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_settings import AdapterSettings


def build_guide_projection(adapter: nn.Module, s: AdapterSettings) -> None:
    """The guide projection's modules, under the release's names: ``conv_adapter`` (the 1x1 conv
    over tokens, L' -> L) and ``fc`` (C' -> C). ``resize`` never runs the token conv (release
    avs_s4/model/PVT_AVSModel.py:190-197), so it is not built (up to 9.4M parameters per adapter);
    ``linear`` builds ``fc`` only, and nothing when the widths are equal."""
    c, cg = adapter.channels, adapter.guide_channels
    adapter.conv_adapter = (
        nn.Conv2d(adapter.guide_tokens, adapter.tokens, kernel_size=1)
        if s.guide_projection == "token_conv"
        else None
    )
    adapter.fc = None if s.guide_projection == "linear" and c == cg else nn.Linear(cg, c)


def project_guide(adapter: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Resample the guide ``[N, L', C']`` to ``[N, L, C]`` (token mixing, then channel map).

    With ``guide_projection: resize`` the channel map runs first and the square token grid is
    resized bicubically (AVS-S4's variant); with ``linear`` only the channel map runs (``[N, L', C]``).

    Both maps are linear, so they commute up to the bias terms; we run the cheaper order.
    conv-first costs L*L'*C' + L*C'*C, fc-first costs L'*C'*C + L*L'*C.
    """
    s = adapter.settings
    L, Lg, C, Cg = adapter.tokens, adapter.guide_tokens, adapter.channels, adapter.guide_channels
    if s.guide_projection == "linear":
        return y if adapter.fc is None else adapter.fc(y)
    if s.guide_projection == "resize":
        n, side, side_g = y.shape[0], math.isqrt(L), math.isqrt(Lg)
        if side * side != L or side_g * side_g != Lg:
            raise ValueError(f"guide_projection 'resize' needs square token grids, got {Lg} -> {L} tokens")
        grid = adapter.fc(y).transpose(1, 2).reshape(n, C, side_g, side_g)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)
    w_tok = adapter.conv_adapter.weight.view(L, Lg)
    b_tok = adapter.conv_adapter.bias
    if L * Lg * Cg + L * Cg * C <= Lg * Cg * C + L * Lg * C:
        mixed = torch.matmul(w_tok, y) + b_tok[:, None]  # [N, L, C']
        return adapter.fc(mixed)
    projected = F.linear(y, adapter.fc.weight)  # [N, L', C]
    out = torch.matmul(w_tok, projected)  # [N, L, C]
    # bias terms: conv bias passes through fc's weight; fc bias is added once.
    return out + b_tok[:, None] * adapter.fc.weight.sum(1) + adapter.fc.bias


def gate_and_norm(adapter: nn.Module, out: torch.Tensor, s: AdapterSettings) -> torch.Tensor:
    """The bottleneck's output through ``ln_post`` and the output gate, in the variant's order."""
    if s.gate_before_ln_post and adapter.gate is not None:
        out = adapter.gate * out
    if adapter.ln_post is not None:
        out = adapter.ln_post(out)
    if not s.gate_before_ln_post and adapter.gate is not None:
        out = adapter.gate * out
    return out


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

        build_guide_projection(self, s)

        # The guided attention paths; a path the recipe leaves out (model.adapter.guidance) is not built.
        if s.runs("channel"):
            self.fc_affine_audio_1 = nn.Linear(c, c)
            self.fc_affine_video_1 = nn.Linear(c, c)
            self.fc_affine_bottleneck = nn.Linear(c, d)
            self.fc_affine_v_c_att = nn.Linear(d, c)
        if s.runs("spatial"):
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
        self.ln_post = nn.LayerNorm(c) if s.ln_post else None
        self.temporal_gated = (
            nn.Sequential(nn.Linear(c, 1), nn.Sigmoid()) if s.temporal_gate and s.runs("temporal") else None
        )

    # -- helpers -----------------------------------------------------------------------------
    def project_guide(self, y: torch.Tensor) -> torch.Tensor:
        """The guide ``[N, L', C']`` at x's width (and, except for ``linear``, x's token count)."""
        return project_guide(self, y)

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
        channel = None
        x_channel = x
        if s.runs("channel"):
            joint = F.relu(self.fc_affine_audio_1(guide_mean)) * F.relu(self.fc_affine_video_1(x))
            channel = torch.sigmoid(
                self.fc_affine_v_c_att(F.relu(self.fc_affine_bottleneck(joint.mean(dim=1, keepdim=True))))
            )  # [N, 1, C]
            x_channel = x * (channel + 1)

        # 3. spatial attention (without it the map is uniform: pooling by it is the token mean)
        spatial = None
        if s.runs("spatial"):
            spatial = self.fc_affine_v_s_att(
                F.relu(self.fc_affine_video_2(x_channel)) * F.relu(self.fc_affine_audio_2(guide_mean))
            )  # [N, L, 1]
            spatial_map = torch.softmax(torch.tanh(spatial), dim=1).transpose(1, 2)  # [N, 1, L]
        else:
            spatial_map = x.new_full((x.shape[0], 1, x.shape[1]), 1.0 / x.shape[1])

        # 4. the release re-weights x (not x_channel) with both attentions (and the temporal gate)
        terms = []
        if channel is not None:
            terms.append(s.alpha * channel)
        if spatial is not None:
            terms.append(s.beta * torch.sigmoid(spatial))
        if terms:
            factor = terms[0]
            for term in terms[1:]:
                factor = factor + term
            factor = factor + 1 - s.alpha
        else:
            factor = x.new_full((1, 1, 1), 1 - s.alpha)
        if self.temporal_gated is not None:
            factor = factor + s.gamma * self.temporal_gated(guide_mean)  # [N, 1, 1]
        x = x * factor

        # 5. bottleneck
        if self.ln_before is not None:
            x = self.ln_before(x)
        z = F.relu(self._token_bn(self._grouped_pointwise(x, self.down_sampler), self.bn1))
        out = self._token_bn(self._grouped_pointwise(z, self.up_sampler), self.bn2)
        return gate_and_norm(self, out, s), spatial_map
