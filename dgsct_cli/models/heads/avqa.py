"""AVQA heads (MUSIC-AVQA): the release's spatial-temporal grounding network (ST-AVQA "AVST").

Two heads share the audio MLP, the audio-guided spatial grounding and the match head:

- :class:`GroundingHead`, stage 1 (AVQA/grounding_gen/nets_grd_gen.py:39-202): does the
  segment's audio match this frame or another video's frame? No adapters, no question.
- :class:`AVSTHead`, stage 2 (AVQA/net_grd_avst/net_avst.py:264-626, ``AVQA_Fusion_Net``
  without the encoders): the question LSTM, spatial grounding of every segment (and of the
  negative frames), question-guided temporal attention, fusion and the answer.

Parameter names are the release's (``fc_a1``, ``fc_gl``, ``fc1``..``fc4``, ``question_encoder``,
``attn_v``...), so release checkpoints map one to one and stage 1's weights carry over to stage 2
by name. Widths follow the encoders: ``D`` = the visual token width (1536 for Swin-V2-L), the
audio input = HTS-AT's width (768).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..output import EncoderNeeds, EncoderOutput

__all__ = [
    "AVQA_UNUSED_RELEASE_KEYS",
    "AVSTHead",
    "GroundingHead",
    "Grounded",
    "QuestionEncoder",
    "interleave_pairs",
    "match_labels",
]

# Modules AVQA_Fusion_Net builds but never runs (net_avst.py:276-277, 292; the forward at 416-626
# reads neither): dropped by name when a release checkpoint is read.
AVQA_UNUSED_RELEASE_KEYS = {
    r"^fc_a[12]_pure\.": "audio MLP copy (fc_a1_pure/fc_a2_pure) the release builds and fills from stage 1 but never runs",
    r"^norm3\.": "LayerNorm the release builds but never runs",
}


def match_labels(count: int, device: torch.device) -> torch.Tensor:
    """1, 0, 1, 0, ... (``count`` labels, class 1 = matched), made on ``device`` (no host copy)."""
    return 1 - torch.arange(count, device=device) % 2


def interleave_pairs(positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match logits ``[N, 2]`` of the positive and negative pairs -> ``[2N, 2]`` in the order
    positive 0, negative 0, positive 1, ... with labels 1, 0, 1, 0, ... (class 1 = matched;
    AVQA/net_grd_avst/main_avst.py:67-81 ``batch_organize``). Gradients flow to both inputs."""
    logits = torch.stack([positive, negative], dim=1).flatten(0, 1)
    return logits, match_labels(logits.shape[0], logits.device)


class QuestionEncoder(nn.Module):
    """Word embedding -> tanh -> one-layer LSTM over all positions (pads included, no packing) ->
    ``fc(tanh([h_T ; c_T]))`` (net_avst.py:238-261)."""

    def __init__(
        self, vocab_size: int, embed_dim: int, hidden_dim: int, out_dim: int, forget_bias: float = 0.0
    ) -> None:
        super().__init__()
        self.word2vec = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers=1)
        self.fc = nn.Linear(2 * hidden_dim, out_dim)
        if forget_bias:
            # Initialisation only (PyTorch's gate order i, f, g, o): a positive forget bias keeps
            # the question in the state across the trailing <pad> steps, which a small model with
            # few steps otherwise forgets (the release keeps PyTorch's default, 0).
            with torch.no_grad():
                self.lstm.bias_ih_l0[hidden_dim : 2 * hidden_dim] += forget_bias

    def forward(self, question: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.word2vec(question)).transpose(0, 1)  # [L, B, E], time first
        _, (hidden, cell) = self.lstm(x)  # [1, B, H] each
        state = torch.cat([hidden, cell], dim=2).transpose(0, 1).flatten(1)  # [B, 2H]
        return self.fc(torch.tanh(state))


class Grounded(NamedTuple):
    """One audio-guided spatial grounding: ``features`` ``[N, D]`` (fc_gl's output) and what led
    to it: the raw map's mean ``pooled``, the cosine ``similarity`` ``[N, L]`` of each normalised
    token with the normalised audio, its softmax ``attention`` and the ``attended`` tokens."""

    features: torch.Tensor
    pooled: torch.Tensor
    similarity: torch.Tensor
    attention: torch.Tensor
    attended: torch.Tensor


class _AudioVisualGrounding(nn.Module):
    """What both stages share: ``fc_a1``/``fc_a2`` (audio -> D), the grounding's ``fc_gl`` and the
    match head ``fc1``..``fc4`` (2D -> h1 -> h2 -> h3 -> 2)."""

    def __init__(
        self, visual_dim: int, audio_dim: int, match_hidden: tuple[int, ...] = (512, 256, 128)
    ) -> None:
        super().__init__()
        if len(match_hidden) != 3:
            raise ValueError(f"match_hidden must list 3 widths (fc1..fc3), got {list(match_hidden)}")
        d = visual_dim
        self.fc_a1 = nn.Linear(audio_dim, d)
        self.fc_a2 = nn.Linear(d, d)
        self.fc_gl = nn.Linear(2 * d, d)
        h1, h2, h3 = match_hidden
        self.fc1 = nn.Linear(2 * d, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, h3)
        self.fc4 = nn.Linear(h3, 2)

    def audio_mlp(self, audio: torch.Tensor) -> torch.Tensor:
        """``fc_a2(relu(fc_a1(audio)))`` (net_avst.py:526-527)."""
        return self.fc_a2(F.relu(self.fc_a1(audio)))

    def ground(self, tokens: torch.Tensor, audio: torch.Tensor) -> Grounded:
        """Audio-guided spatial grounding of the token maps ``[N, L, D]`` by ``audio [N, D]``
        (net_avst.py:533-556): the mean of the raw tokens, and the normalised tokens weighted by
        the softmax of their cosine with the audio, joined by ``fc_gl(tanh([.;.]))``."""
        pooled = tokens.mean(dim=1)
        unit = F.normalize(tokens, dim=2)
        similarity = torch.bmm(unit, F.normalize(audio, dim=1).unsqueeze(-1)).squeeze(-1)  # [N, L]
        attention = torch.softmax(similarity, dim=-1)
        attended = torch.bmm(attention.unsqueeze(1), unit).squeeze(1)
        features = self.fc_gl(torch.tanh(torch.cat([pooled, attended], dim=-1)))
        return Grounded(features, pooled, similarity, attention, attended)

    def match_features(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = torch.cat([audio, visual], dim=-1)
        return F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))

    def match(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Match logits ``[N, 2]`` (class 1 = the audio and the grounded frame belong together)."""
        return self.fc4(self.match_features(audio, visual))


class GroundingHead(_AudioVisualGrounding):
    """Stage 1: ``forward(features, negative_frames)`` with the plain encoders' mean-pooled audio
    ``features.audio [B, T, Ca]``, the positive frames' token maps ``features.visual_tokens``
    ``[B*T, L, D]`` and the negatives' ``[B*T, L, D]``. Returns ``match_logits`` ``[2*B*T, 2]``
    (rows positive 0, negative 0, ...: nets_grd_gen.py:150-153) and the two halves."""

    encoder_needs = EncoderNeeds(visual_tokens=True, plain_visual_inputs=("negative_frames",))

    def forward(self, features: EncoderOutput, negative_frames: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        audio = self.audio_mlp(features.audio.flatten(0, 1))  # [B*T, D]
        positive = self.match(audio, self.ground(features.visual_tokens, audio).features)
        negative = self.match(audio, self.ground(negative_frames, audio).features)
        logits, _ = interleave_pairs(positive, negative)
        return {"match_logits": logits, "match_logits_positive": positive, "match_logits_negative": negative}


class AVSTHead(_AudioVisualGrounding):
    """Stage 2 (``AVQA_Fusion_Net``): ``forward(features, question, negative_frames=None)``.

    Reads ``features.visual_tokens`` ``[B*T, L, D]`` (Swin's final normalised map, adapters
    inside), ``features.audio`` ``[B, T, Ca]`` (HTS-AT tokens pooled by the last audio p2 map, no
    final norm) and ``question`` ``[B, 14]`` word ids; ``negative_frames`` are the plain visual
    pass's token maps ``[B*T, L, D]`` of the negative frames. Returns ``answer_logits`` ``[B, A]``,
    ``match_logits_positive`` ``[B*T, 2]`` (row b*T + t) and, with negatives,
    ``match_logits_negative`` ``[B*T, 2]``.
    """

    encoder_needs = EncoderNeeds(visual_tokens=True, plain_visual_inputs=("negative_frames",))

    def __init__(
        self,
        visual_dim: int,
        audio_dim: int,
        num_answers: int,
        vocab_size: int,
        match_hidden: tuple[int, ...] = (512, 256, 128),
        question_embed: int | None = None,
        question_hidden: int | None = None,
        attention_heads: int = 4,
        dropout: float = 0.1,
        forget_bias: float = 0.0,
    ) -> None:
        super().__init__(visual_dim, audio_dim, match_hidden)
        d = visual_dim
        self.question_encoder = QuestionEncoder(
            vocab_size, question_embed or d, question_hidden or d, d, forget_bias=forget_bias
        )
        self.attn_v = nn.MultiheadAttention(d, attention_heads, dropout=dropout)
        self.linear11, self.linear12 = nn.Linear(d, d), nn.Linear(d, d)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d)
        self.attn_a = nn.MultiheadAttention(d, attention_heads, dropout=dropout)
        self.linear21, self.linear22 = nn.Linear(d, d), nn.Linear(d, d)
        self.dropout3, self.dropout4 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d)
        self.fc_fusion = nn.Linear(2 * d, d)
        self.fc_ans = nn.Linear(d, num_answers)
        self.vocab_size = vocab_size

    def visual_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """The visual token maps the head grounds (DG-SCT: Swin's own)."""
        return tokens

    def temporal(self, question: torch.Tensor, seq: torch.Tensor, visual: bool) -> torch.Tensor:
        """Question-guided attention over the T segments ``seq [B, T, D]`` -> ``[B, D]``
        (net_avst.py:599-615): attention, then ``norm(x + drop(lin2(drop(relu(lin1(x))))))``."""
        if visual:
            attn, lin1, lin2, drop_a, drop_b, norm = (
                self.attn_v, self.linear11, self.linear12, self.dropout1, self.dropout2, self.norm1
            )  # fmt: skip
        else:
            attn, lin1, lin2, drop_a, drop_b, norm = (
                self.attn_a, self.linear21, self.linear22, self.dropout3, self.dropout4, self.norm2
            )  # fmt: skip
        kv = seq.transpose(0, 1)  # [T, B, D], time first as the release's MultiheadAttention
        x = attn(question.unsqueeze(0), kv, kv, need_weights=False)[0].squeeze(0)
        return norm(x + drop_b(lin2(drop_a(F.relu(lin1(x))))))

    def forward(
        self,
        features: EncoderOutput,
        question: torch.Tensor,
        negative_frames: torch.Tensor | None = None,
        **_,
    ) -> dict[str, torch.Tensor]:
        if features.visual_tokens is None:
            raise ValueError("the AVQA head needs the final visual token maps (EncoderNeeds.visual_tokens)")
        b, t = features.audio.shape[:2]
        q = self.question_encoder(question)  # [B, D]
        audio = self.audio_mlp(features.audio)  # [B, T, D]
        flat = audio.flatten(0, 1)
        visual = self.ground(self.visual_map(features.visual_tokens), flat).features  # [B*T, D]
        out = {"match_logits_positive": self.match(flat, visual)}
        if negative_frames is not None:
            negative = self.ground(self.visual_map(negative_frames), flat).features
            out["match_logits_negative"] = self.match(flat, negative)
        visual = visual.view(b, t, -1)
        v = self.temporal(q, visual, visual=True) + visual.mean(dim=1)
        a = self.temporal(q, audio, visual=False) + audio.mean(dim=1)
        fused = self.fc_fusion(torch.tanh(torch.cat([a, v], dim=-1)))
        out["answer_logits"] = self.fc_ans(torch.tanh(fused * q))
        return out


class LAVisHAVSTHead(AVSTHead):
    """LAVisH's stage-2 head (github GenjiB/LAVISH, AVQA/net_grd_avst/net_avst.py:204-489): the
    network above at width ``d`` (512), after LAVisH's projections of the shared Swin's normed
    tokens: ``yb_fc_v`` on the visual token maps (positive and negative frames) and ``yb_fc_a`` on
    the audio tokens (applied here to their mean: the same, the map is linear), then
    ``fc_a2(relu(.))`` (LAVisH runs no ``fc_a1``, net_avst.py:389-390)."""

    def __init__(
        self, visual_dim: int, audio_dim: int, num_answers: int, vocab_size: int, width: int = 512, **kw
    ):
        super().__init__(width, width, num_answers, vocab_size, **kw)
        del self.fc_a1  # built by LAVisH, never run
        self.yb_fc_v = nn.Linear(visual_dim, width)
        self.yb_fc_a = nn.Linear(audio_dim, width)

    def visual_map(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.yb_fc_v(tokens)

    def audio_mlp(self, audio: torch.Tensor) -> torch.Tensor:
        return self.fc_a2(F.relu(self.yb_fc_a(audio)))
