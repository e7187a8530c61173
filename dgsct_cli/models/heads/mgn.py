"""MGN (multi-modal grouping network) head for AVVP, as the DG-SCT release uses it.

Release: AVVP/nets/mgn.py:422-508 and 720-763 (model), AVVP/main.py:39-72 (loss). The head consumes the DG-SCT pooled features
(visual [B,T,1536], audio [B,T,768]) plus the R(2+1)D features [B,T,512] and predicts video-level and
segment-level probabilities for C classes.

Parameter names equal the release's state-dict keys (model prefix removed), so release weights load
by name after dropping the keys in `MGN_UNUSED_RELEASE_KEYS`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp  # Linear-GELU-Linear (fc1/fc2 keys), stochastic depth
from torch import nn

from ..output import EncoderOutput
from ..temporal import SelfRelation, TemporalConfig

AssignMode = Literal["soft", "hard"]

# Release keys (no prefix) of modules this head does not build, as {regex: reason} like the other
# heads' tables (the converter drops matching keys by name). Iterating gives the regex strings.
MGN_UNUSED_RELEASE_KEYS_GATED_AUDIO: dict[str, str] = {
    r"^temporal_attn\.(audio|video)_encoder\.encoder_layer\.": "template layer nn.TransformerEncoder copies",
}
MGN_UNUSED_RELEASE_KEYS: dict[str, str] = {
    **MGN_UNUSED_RELEASE_KEYS_GATED_AUDIO,
    # The visual temporal branch only gates the audio output, which MGN discards (release mgn.py:726, x1 unused): it never
    # changes an output and gets no gradient. `MGNHead(gated_audio=True)` builds it.
    r"^temporal_attn\.audio_visual_rnn_layer\.visual_rnn\.": "visual LSTM feeding only the discarded audio gate",
    r"^temporal_attn\.video_encoder\.": "visual encoder feeding only the discarded audio gate",
    r"^temporal_attn\.video_gated\.": "gate of the audio output that MGN discards",
}


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; softmax over keys, scale head_dim^-1/2."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = self.num_heads
        out = F.scaled_dot_product_attention(_split_heads(q, h), _split_heads(k, h), _split_heads(v, h))
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    """Multi-head attention from queries to separate keys/values (separate q/k/v projections)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        h = self.num_heads
        q = _split_heads(self.q_proj(query), h)
        k = _split_heads(self.k_proj(key), h)
        v = _split_heads(self.v_proj(key), h)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class AttnBlock(nn.Module):
    """Pre-norm transformer block: z + DP(MHA(LN z)), then z + DP(MLP(LN z))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttnBlock(nn.Module):
    """Post-norm cross-attention block: no norm on q/k, residual attention, pre-norm MLP, final LN."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, key)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


def straight_through_one_hot(y_soft: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot of argmax along `dim` in the forward pass, gradient of `y_soft` in the backward pass.

    Written as y_hard + (y_soft - y_soft.detach()) so the forward values are exactly 0/1 (the
    usual y_hard - y_soft.detach() + y_soft can be off by one ulp).
    """
    index = y_soft.argmax(dim=dim, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard + (y_soft - y_soft.detach())


def gumbel_softmax(logits: torch.Tensor, dim: int, hard: bool, tau: float = 1.0) -> torch.Tensor:
    """softmax((logits + Gumbel(0,1)) / tau) along `dim`, straight-through one-hot when `hard`."""
    gumbels = -torch.empty_like(logits).exponential_().log()
    y_soft = ((logits + gumbels) / tau).softmax(dim=dim)
    return straight_through_one_hot(y_soft, dim) if hard else y_soft


class AssignAttention(nn.Module):
    """Single-head assignment of L input tokens to S groups, normalised over the GROUP axis.

    Modes: soft (softmax over groups), hard (straight-through one-hot argmax over groups), and with
    `gumbel` Gumbel-softmax noise in training only (hard or soft according to `hard`).
    """

    def __init__(
        self, dim: int, hard: bool = False, gumbel: bool = False, tau: float = 1.0, assign_eps: float = 1.0
    ) -> None:
        super().__init__()
        self.hard, self.gumbel, self.tau, self.assign_eps = hard, gumbel, tau, assign_eps
        self.scale = dim**-0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def assignment(self, raw: torch.Tensor, group_soft: torch.Tensor | None = None) -> torch.Tensor:
        """Assignment matrix [B, S, L] from the raw logits [B, S, L] (groups on dim -2);
        ``group_soft`` is ``raw.softmax(dim=-2)`` when the caller has it already."""
        if self.gumbel and self.training:
            return gumbel_softmax(raw, dim=-2, hard=self.hard, tau=self.tau)
        group_soft = raw.softmax(dim=-2) if group_soft is None else group_soft
        return straight_through_one_hot(group_soft, dim=-2) if self.hard else group_soft

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """query: groups [B, S, C]; key: tokens [B, L, C]. Returns ([B, S, C], maps [B, S, L])."""
        raw = self.q_proj(query) @ self.k_proj(key).transpose(-2, -1) * self.scale
        group_soft = raw.softmax(dim=-2)
        attn = self.assignment(raw, group_soft)
        # Release quirk (AVVP/nets/grouping.py:140-141): the "soft" map is 1 + a softmax over tokens of the group-softmax.
        soft = 1.0 + group_soft.softmax(dim=-1)
        maps = {"hard": attn, "soft": soft}
        # Each group's weights are normalised by (their sum over tokens + eps) before pooling values.
        attn = attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps)
        return self.proj(attn @ self.v_proj(key)), maps


class GroupingBlock(nn.Module):
    """Groups L tokens x into S_out output tokens seeded by S group tokens (GroupViT-style)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_group_token: int,
        num_output_group: int,
        mlp_ratio: float = 4.0,
        hard: bool = False,
        gumbel: bool = False,
    ) -> None:
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        # Token-mixing MLP acts on the group axis; its hidden width is dim/2 (64 at dim 128).
        self.mlp_inter = Mlp(num_group_token, dim // 2, num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio)
        self.assign = AssignAttention(dim, hard=hard, gumbel=gumbel)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, group_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x [B, L, C], group_tokens [B, S, C] -> ([B, S_out, C], assignment maps [B, S_out, L])."""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        projected = self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2)
        projected = self.pre_assign_attn(self.norm_post_tokens(projected), x)
        out, maps = self.assign(projected, x)
        out = out + projected
        return out + self.mlp_channels(self.norm_new_x(out)), maps


class ModalityTrans(nn.Module):
    """Joint transformer over [x ; group tokens], optional HAN cross-modal block, then grouping."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        num_group_token: int = 25,
        num_output_group: int = 25,
        assign: AssignMode = "soft",
        use_han: bool = False,
        num_segments: int = 10,
    ) -> None:
        super().__init__()
        hard = assign == "hard"
        self.blocks = nn.ModuleList(AttnBlock(dim, num_heads, mlp_ratio, drop_path) for _ in range(depth))
        # The release gives HAN the opposite mode: hard Gumbel assignment when the grouping is soft.
        self.han_encoder = (
            GroupingBlock(
                dim, num_heads, num_segments, num_segments, mlp_ratio, hard=not hard, gumbel=not hard
            )
            if use_han
            else None
        )
        self.grouping = GroupingBlock(
            dim, num_heads, num_group_token, num_output_group, mlp_ratio, hard=hard, gumbel=hard
        )

    def forward(
        self, x: torch.Tensor, group_tokens: torch.Tensor, x_other: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x [B, L, C]; group_tokens [S, C] or [B, S, C]; x_other [B, L', C] for HAN."""
        if group_tokens.dim() == 2:
            group_tokens = group_tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
        num_tokens = x.shape[1]
        z = torch.cat([x, group_tokens], dim=1)
        for blk in self.blocks:
            z = blk(z)
        x_attn, group_tokens = z[:, :num_tokens], z[:, num_tokens:]
        if self.han_encoder is not None and x_other is not None:
            # HAN (release AVVP/nets/grouping.py:764): this modality's tokens are HAN's x (keys and
            # values, the tokens assigned); the other modality's tokens are its group tokens.
            x_attn, _ = self.han_encoder(x_attn, x_other)
        return self.grouping(x_attn, group_tokens)


class _RNNPair(nn.Module):
    """Holds the BiLSTMs so parameter names follow the release (`audio_visual_rnn_layer.*`)."""

    def __init__(self, dim: int, hidden: int, with_visual: bool) -> None:
        super().__init__()
        self.audio_rnn = nn.LSTM(dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.visual_rnn = (
            nn.LSTM(dim, hidden, num_layers=1, batch_first=True, bidirectional=True) if with_visual else None
        )


class AVVPTemporalAttention(nn.Module):
    """The AVVP temporal gate: BiLSTMs, transformer encoders and sigmoid gates (cross-modal).

    video' = video + scale * g_a * video, with g_a from the audio encoder; audio' = audio + scale *
    g_v * audio, with g_v from the visual encoder. With `gated_audio=False` (release behaviour) the
    audio output is discarded by MGN, so the visual branch is not built and `audio` is returned as is.
    """

    def __init__(
        self,
        dim: int = 128,
        d_model: int = 64,
        num_heads: int = 4,
        ff_dim: int = 1024,
        scale: float = 0.05,
        gated_audio: bool = False,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.gated_audio = gated_audio
        # Same encoder as the AVE temporal attention (Linear + 2 post-norm layers, ReLU, dropout 0.1),
        # at the AVVP widths; it runs time-first.
        cfg = TemporalConfig(d_model=d_model, heads=num_heads, feedforward=ff_dim)
        self.audio_visual_rnn_layer = _RNNPair(dim, d_model, with_visual=gated_audio)
        self.audio_encoder = SelfRelation(2 * d_model, cfg)
        self.audio_gated = nn.Sequential(nn.Linear(d_model, 1), nn.Sigmoid())
        if gated_audio:
            self.video_encoder = SelfRelation(2 * d_model, cfg)
            self.video_gated = nn.Sequential(nn.Linear(d_model, 1), nn.Sigmoid())

    @staticmethod
    def _gate(rnn: nn.LSTM, encoder: nn.Module, gate: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """[B, T, dim] -> sigmoid gate [B, T, 1]; the encoder runs time-first, as in the release."""
        return gate(encoder(rnn(x)[0].transpose(0, 1))).transpose(0, 1)

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio, video [B, T, dim] -> (video', audio'), both [B, T, dim]."""
        rnn = self.audio_visual_rnn_layer
        g_a = self._gate(rnn.audio_rnn, self.audio_encoder, self.audio_gated, audio)
        if self.gated_audio:
            g_v = self._gate(rnn.visual_rnn, self.video_encoder, self.video_gated, video)
            audio = audio + g_v * audio * self.scale
        return video + g_a * video * self.scale, audio


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MGNHead(nn.Module):
    """MGN head of the DG-SCT AVVP model (release AVVP/nets/mgn.py:422-508, 720-763)."""

    def __init__(
        self,
        visual_dim: int = 1536,
        audio_dim: int = 768,
        st_dim: int = 512,
        dim: int = 128,
        num_classes: int = 25,
        num_segments: int = 10,
        temporal_dim: int = 64,
        temporal_heads: int = 4,
        temporal_ff_dim: int = 1024,
        temporal_scale: float = 0.05,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        unimodal_depth: int = 3,
        crossmodal_depth: int = 6,
        unimodal_assign: AssignMode = "soft",
        crossmodal_assign: AssignMode = "soft",
        gated_audio: bool = False,
    ) -> None:
        super().__init__()
        self.gated_audio = gated_audio
        self.fc_a = nn.Linear(audio_dim, dim)
        self.fc_v = nn.Linear(visual_dim, dim)
        self.fc_st = nn.Linear(st_dim, dim)
        self.fc_fusion = nn.Linear(2 * dim, dim)
        self.audio_token = nn.Parameter(torch.zeros(num_classes, dim))
        self.visual_token = nn.Parameter(torch.zeros(num_classes, dim))
        common = dict(
            dim=dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path=drop_path,
            num_group_token=num_classes,
            num_output_group=num_classes,
            num_segments=num_segments,
        )
        self.audio_cug = ModalityTrans(depth=unimodal_depth, assign=unimodal_assign, use_han=True, **common)
        self.visual_cug = ModalityTrans(depth=unimodal_depth, assign=unimodal_assign, **common)
        self.av_mcg = ModalityTrans(depth=crossmodal_depth, assign=crossmodal_assign, **common)
        self.fc_prob = nn.Linear(dim, 1)
        self.fc_prob_a = nn.Linear(dim, 1)
        self.fc_prob_v = nn.Linear(dim, 1)
        self.fc_cls = nn.Linear(dim, num_classes)
        # The release re-initialises only the head's own Linear/LayerNorm layers: it applies the init
        # before the temporal attention exists, which therefore keeps PyTorch's default init.
        self.apply(_init_weights)
        self.temporal_attn = AVVPTemporalAttention(
            dim, temporal_dim, temporal_heads, temporal_ff_dim, temporal_scale, gated_audio
        )

    def forward(self, features: EncoderOutput, video_st: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled visual [B,T,visual_dim] and audio [B,T,audio_dim], video_st [B,T,st_dim] ->
        predictions."""
        return self.predict(features.visual, features.audio, video_st)

    def predict(
        self, visual: torch.Tensor, audio: torch.Tensor, video_st: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The head on plain tensors (the release's ``MGN_Net`` head call ``head(f_a, f_v, st)``)."""
        x1_0 = self.fc_a(audio)
        vid_s = self.fc_v(visual)
        vid_s, x1_gated = self.temporal_attn(x1_0, vid_s)
        # Release quirk (AVVP/nets/mgn.py:726-737): the audio grouping gets the ungated x1_0 unless gated_audio is set.
        x1_in = x1_gated if self.gated_audio else x1_0
        x2_0 = self.fc_fusion(torch.cat([vid_s, self.fc_st(video_st)], dim=-1))

        x2, attn_v = self.visual_cug(x2_0, self.visual_token)
        x1, attn_a = self.audio_cug(x1_in, self.audio_token, x_other=x2_0)
        x, _ = self.av_mcg(x1, x2)

        video_prob = torch.sigmoid(self.fc_prob(x)).squeeze(-1)
        audio_prob = torch.sigmoid(self.fc_prob_a(x1)).squeeze(-1)
        visual_prob = torch.sigmoid(self.fc_prob_v(x2)).squeeze(-1)
        # Frame maps are [B, C, T] and lie in (1, 2), so frame "probabilities" can exceed 1 (as released).
        audio_frame_prob = audio_prob.unsqueeze(1) * attn_a["soft"].transpose(1, 2)
        visual_frame_prob = visual_prob.unsqueeze(1) * attn_v["soft"].transpose(1, 2)
        return {
            "video_prob": video_prob,
            "audio_prob": audio_prob,
            "visual_prob": visual_prob,
            "audio_frame_prob": audio_frame_prob,
            "visual_frame_prob": visual_frame_prob,
            "audio_class_logits": self.fc_cls(self.audio_token),
            "visual_class_logits": self.fc_cls(self.visual_token),
        }


def avvp_loss(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, visual_smoothing: float = 0.1
) -> torch.Tensor:
    """Weakly supervised AVVP loss (release AVVP/main.py:39-72) from `MGNHead` outputs and multi-hot video labels [B, C].

    BCE(video, y) + BCE(audio, y) + BCE(visual, (1-s) y + s/2) + CE(class tokens -> own class) for
    both modalities, equal weights, mean reductions.
    """
    eps = 1e-7
    # Out-of-place clamp: same values and gradients as the release's in-place clamp_, but safe on the graph.
    video_prob, audio_prob, visual_prob = (
        outputs[k].clamp(eps, 1 - eps) for k in ("video_prob", "audio_prob", "visual_prob")
    )
    labels = labels.to(video_prob.dtype)
    visual_target = (1.0 - visual_smoothing) * labels + visual_smoothing / 2
    aud_cls, vis_cls = outputs["audio_class_logits"], outputs["visual_class_logits"]
    token_target = torch.arange(aud_cls.shape[0], device=aud_cls.device)
    return (
        F.binary_cross_entropy(video_prob, labels)
        + F.binary_cross_entropy(audio_prob, labels)
        + F.binary_cross_entropy(visual_prob, visual_target)
        + F.cross_entropy(aud_cls, token_target)
        + F.cross_entropy(vis_cls, token_target)
    )
