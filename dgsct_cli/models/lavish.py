"""The LAVisH adapter (Lin et al., "Vision Transformers are Parameter-Efficient Audio-Visual
Learners", CVPR 2023): latent tokens that gather the other modality, then a bottleneck.

Behaviour of LAVisH's released ``VisualAdapter`` with ``is_multimodal`` (github GenjiB/LAVISH,
commit 97722b0, ``AVE/nets/net_trans.py:36-190``), channels-last here as in our DG-SCT adapter:

1. ``T = my_tokens`` ``[K, C]``; ``T = T + softmax_L'(T Y^T) Y`` (the tokens gather the guide);
2. ``x = x + gate_av * softmax_K(x T^T) T`` (x reads the tokens);
3. ``ln_before``; ``relu(bn1(down_sampler(x)))``; ``bn2(up_sampler(.))``; ``ln_post``; ``gate``.

LAVisH's two encoders are one Swin-V2 (same width on both sides); where the guide is narrower or
wider (LAVisH* on Swin-V2 + HTS-AT) it is first mapped to x's width by ``fc`` (``guide_projection:
linear``) or by DG-SCT's token conv + ``fc`` (``token_conv``). Parameter names follow the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import AdapterSettings, DGSCTAdapter, build_guide_projection, gate_and_norm, project_guide

__all__ = ["LAVisHAdapter"]


class LAVisHAdapter(nn.Module):
    """``forward(x [N, L, C], y [N, L', C'])`` -> ``(out [N, L, C], None)``: LAVisH computes no
    attention map, so a family pools its tokens by their mean (as LAVisH does)."""

    def __init__(
        self,
        channels: int,
        tokens: int,
        guide_channels: int,
        guide_tokens: int,
        settings: AdapterSettings | None = None,
    ) -> None:
        super().__init__()
        s = settings or AdapterSettings(kind="lavish", guide_projection="linear", num_tokens=2)
        self.settings = s
        self.channels, self.tokens = channels, tokens
        self.guide_channels, self.guide_tokens = guide_channels, guide_tokens
        hidden = channels // s.reduction
        if channels % s.groups or hidden % s.groups:
            raise ValueError(
                f"adapter channels {channels} and bottleneck {hidden} must be divisible by groups={s.groups}"
            )
        # Creation order as in the release (gate, my_tokens, gate_av, down/up, bn, ln).
        self.gate = nn.Parameter(torch.zeros(1)) if s.use_gate else None
        tokens_init = (
            torch.rand(s.num_tokens, channels)
            if s.token_init == "uniform"
            else torch.zeros(s.num_tokens, channels)
        )
        self.my_tokens = nn.Parameter(tokens_init)
        self.gate_av = nn.Parameter(torch.zeros(1))
        build_guide_projection(self, s)
        self.down_sampler = nn.Conv2d(channels, hidden, kernel_size=1, groups=s.groups, bias=False)
        self.up_sampler = nn.Conv2d(hidden, channels, kernel_size=1, groups=s.groups, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden) if s.use_bn else None
        self.bn2 = nn.BatchNorm1d(channels) if s.use_bn else None
        self.ln_before = nn.LayerNorm(channels) if s.ln_before else None
        self.ln_post = nn.LayerNorm(channels) if s.ln_post else None

    def project_guide(self, y: torch.Tensor) -> torch.Tensor:
        return project_guide(self, y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        guide = self.project_guide(y)  # [N, L' (or L), C]
        tokens = self.my_tokens.unsqueeze(0).expand(x.shape[0], -1, -1)  # [N, K, C]
        tok_to_guide = torch.softmax(torch.bmm(tokens, guide.transpose(1, 2)), dim=-1)  # over L'
        tokens = tokens + torch.bmm(tok_to_guide, guide)
        x_to_tok = torch.softmax(torch.bmm(x, tokens.transpose(1, 2)), dim=-1)  # over K
        x = x + self.gate_av * torch.bmm(x_to_tok, tokens)
        if self.ln_before is not None:
            x = self.ln_before(x)
        z = DGSCTAdapter._grouped_pointwise(x, self.down_sampler)
        z = F.relu(DGSCTAdapter._token_bn(z, self.bn1))
        out = DGSCTAdapter._token_bn(DGSCTAdapter._grouped_pointwise(z, self.up_sampler), self.bn2)
        return gate_and_norm(self, out, self.settings), None
