"""Temporal attention over the 10 segments (release AVE/nets/net_trans.py:182-253), used by the AVE head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads.configs import TemporalConfig


class AudioVisualLSTM(nn.Module):
    """Bidirectional single-layer LSTMs, batch first (release name ``audio_visual_rnn_layer``)."""

    def __init__(self, audio_dim: int, visual_dim: int, d_model: int) -> None:
        super().__init__()
        self.audio_rnn = nn.LSTM(audio_dim, d_model // 2, batch_first=True, bidirectional=True)
        self.visual_rnn = nn.LSTM(visual_dim, d_model, batch_first=True, bidirectional=True)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_rnn(audio)[0], self.visual_rnn(visual)[0]


class SelfRelation(nn.Module):
    """Linear projection + post-norm transformer encoder layers (time-first)."""

    def __init__(self, input_dim: int, cfg: TemporalConfig, num_layers: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.feedforward, cfg.dropout)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.affine_matrix = nn.Linear(input_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.affine_matrix(x))


class MemoryDecoderLayer(nn.Module):
    """Attend from the query to ``[memory; query]`` along time, then feed-forward (post-norm)."""

    def __init__(self, cfg: TemporalConfig) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(cfg.d_model, cfg.heads, dropout=cfg.dropout)
        self.linear1 = nn.Linear(cfg.d_model, cfg.feedforward)
        self.linear2 = nn.Linear(cfg.feedforward, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory = torch.cat([memory, query], dim=0)
        x = self.norm1(
            query + self.dropout1(self.multihead_attn(query, memory, memory, need_weights=False)[0])
        )
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ff))


class _Layers(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class CrossRelation(nn.Module):
    """Linear projection + one memory decoder layer (release name ``*_decoder``)."""

    def __init__(self, input_dim: int, cfg: TemporalConfig) -> None:
        super().__init__()
        self.decoder = _Layers([MemoryDecoderLayer(cfg)])
        self.affine_matrix = nn.Linear(input_dim, cfg.d_model)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.affine_matrix(query)
        for layer in self.decoder.layers:
            x = layer(x, memory)
        return x


class TemporalAttention(nn.Module):
    """Inputs ``visual [B, T, Cv]``, ``audio [B, T, Ca]``; outputs time-first ``[T, B, d]`` streams."""

    def __init__(self, visual_dim: int, audio_dim: int, cfg: TemporalConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TemporalConfig()
        self.cfg = cfg
        d = cfg.d_model
        self.v_fc = nn.Linear(visual_dim, cfg.visual_proj)
        self.a_fc = nn.Linear(audio_dim, cfg.audio_proj)
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        self.audio_visual_rnn_layer = AudioVisualLSTM(cfg.audio_proj, cfg.visual_proj, d)
        self.video_encoder = SelfRelation(2 * d, cfg)
        self.audio_encoder = SelfRelation(d, cfg)
        self.audio_decoder = CrossRelation(d, cfg)
        self.video_decoder = CrossRelation(2 * d, cfg)
        self.audio_gated = nn.Sequential(nn.Linear(d, 1), nn.Sigmoid())
        self.video_gated = nn.Sequential(nn.Linear(d, 1), nn.Sigmoid())

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        audio = self.a_fc(audio)
        visual = self.input_dropout(F.relu(self.v_fc(visual)))
        audio_rnn, visual_rnn = self.audio_visual_rnn_layer(audio, visual)
        audio_rnn, visual_rnn = audio_rnn.transpose(0, 1), visual_rnn.transpose(0, 1)  # time first
        video_memory = self.video_encoder(visual_rnn)
        audio_query = self.audio_decoder(audio_rnn, video_memory)
        audio_memory = self.audio_encoder(audio_rnn)
        video_query = self.video_decoder(visual_rnn, audio_memory)
        gate_a = self.audio_gated(audio_memory)  # [T, B, 1]
        gate_v = self.video_gated(video_memory)
        scale = self.cfg.gate_scale
        return {
            "video": video_query * (1 + scale * gate_a),
            "audio": audio_query * (1 + scale * gate_v),
            "av_gate": gate_a * gate_v,
        }
