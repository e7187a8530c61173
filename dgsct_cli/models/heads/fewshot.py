"""The few-shot / zero-shot head: text prompts of the class names matched against the CLIP image
and CLAP audio embeddings of every 1-s segment, plus an audio-visual contrastive branch.

Release: few-shot nets/net_trans.py (``clip_matching`` 773-788, ``clap_matching`` 791-798,
``forward_vit`` 800-818, ``AudioVisualContrastive`` 284-301) and nets/prompt_learner.py
(``ClipAdapter`` 25-37, ``CLAPTextEncoder`` 78-108, ``TextEncoder`` 110-130, ``PromptLearner``
133-282). What the head computes, per segment:

- visual logits ``s_v * norm(0.2 A(v) + 0.8 v) . norm(0.2 A_t(t) + 0.8 t)``, where ``v`` is CLIP's
  image embedding, ``t`` the CLIP text embedding of "<SOS> ctx1..ctx4 <name>." with 4 learned
  context vectors shared by all classes (CoOp), ``A``/``A_t`` the two CLIP-Adapters and
  ``s_v = exp(CLIP logit_scale)`` (from the weights, never a constant 100);
- audio logits ``s_a * norm(a) . norm(T("The sounds of <name>"))``: CLAP's audio embedding against
  its frozen RoBERTa text tower; ``s_a`` is CLAP's ``logit_scale_a`` used raw as the release does
  (``clap_scale: exp`` exponentiates it);
- the fusion: ``2 Lv + 2 La`` (few-shot) or ``(Lv^2 + La^2) / (Lv + La)`` (pre-training and
  zero-shot copies of the release, unguarded as released);
- the contrastive logits ``s_v * mean_t(fc_a1(a)) . mean_t(v)`` (normalised), both directions.

The class-name token ids are not weights (non-persistent buffers), so one set of weights serves any
class list: zero-shot re-targets a pre-trained head with :meth:`FewShotHead.set_classes`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..encoders.tokenizers import clap_tokenize, clip_tokenize, load_roberta_tokenizer
from ..output import EncoderOutput
from .configs import FewShotHeadConfig

__all__ = [
    "BACKGROUND",
    "ClipAdapter",
    "FewShotHead",
    "FewShotHeadConfig",
    "clap_prompts",
    "clip_prompts",
    "fuse_logits",
]

BACKGROUND = "background"


def clip_prompts(class_names: list[str], n_ctx: int) -> list[str]:
    """CLIP prompts: ``n_ctx`` placeholder words, the name with '_' as spaces, a full stop
    (prompt_learner.py:174-178); the placeholders' embeddings are replaced by the context."""
    return [" ".join(["X"] * n_ctx) + " " + name.replace("_", " ") + "." for name in class_names]


def clap_prompts(class_names: list[str], template: str = "The sounds of {}") -> list[str]:
    """CLAP prompts: the raw name (underscores kept) in the template (prompt_learner.py:87)."""
    return [template.format(name) for name in class_names]


def fuse_logits(visual: torch.Tensor, audio: torch.Tensor, rule: str, weights=(2.0, 2.0)) -> torch.Tensor:
    """The event scores from the two logit sets (net_trans.py:815 few-shot; pretrain/nets/
    net_trans.py:809-810 and zero-shot/zero_shot_model.py self-weighted, unguarded: where
    ``Lv + La = 0`` the score is inf or nan, as released)."""
    if rule == "sum":
        return weights[0] * visual + weights[1] * audio
    w_v = visual / (visual + audio)
    return w_v * visual + (1 - w_v) * audio


def _unit(x: torch.Tensor) -> torch.Tensor:
    # x / ||x||, as the release normalises (no epsilon).
    return x / x.norm(dim=-1, keepdim=True)


class ClipAdapter(nn.Module):
    """CLIP-Adapter: Linear (no bias), ReLU, Linear (no bias), ReLU (keys ``fc.0``, ``fc.2``)."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class PromptLearner(nn.Module):
    """CoOp's class-agnostic context: ``ctx [n_ctx, width]`` replaces the placeholder words."""

    def __init__(self, n_ctx: int, width: int, std: float) -> None:
        super().__init__()
        # The release slices "a photo of a" from the token embedding and then overwrites it with
        # N(0, 0.02^2) (prompt_learner.py:149-161), so only the count survives.
        self.ctx = nn.Parameter(torch.empty(n_ctx, width))
        nn.init.normal_(self.ctx, std=std)


class AudioVisualContrastive(nn.Module):
    """``fc_a1`` on the audio embedding; both modalities averaged over segments and normalised."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc_a1 = nn.Linear(dim, dim)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, scale: torch.Tensor):
        """``visual``/``audio`` ``[B, T, D]`` -> (audio->image, image->audio) logits ``[B, B]``."""
        a = _unit(self.fc_a1(audio).mean(1))
        v = _unit(visual.mean(1))
        return scale * a @ v.t(), scale * v @ a.t()


# Optimizer steps taken in this process. The fused Adam step (and the foreach one) updates
# parameters in place without bumping their version counters, so the text-feature cache cannot
# rely on them: every step of any optimizer invalidates it.
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class FewShotHead(nn.Module):
    """``forward(features)`` -> ``event_logits``, ``visual_logits``, ``audio_logits`` ``[B, T, C]``
    and ``logits_audio_image``/``logits_image_audio`` ``[B, B]``.

    The text towers live in the encoder (``encoder.text['clip']``, ``encoder.text['clap']``); the
    model binds them here once built (:meth:`bind_encoder`), without owning them.
    """

    def __init__(
        self, dim: int, text_width: int, cfg: FewShotHeadConfig, tokenizer: str | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer_source = tokenizer
        self.prompt_learner = PromptLearner(cfg.n_ctx, text_width, cfg.ctx_std)
        self.clip_adapter = ClipAdapter(dim, cfg.adapter_reduction)
        self.clip_adapter_text = ClipAdapter(dim, cfg.adapter_reduction)
        self.audio_visual_contrastive_learner = AudioVisualContrastive(dim)
        self._towers: tuple[nn.Module, nn.Module] | None = None
        self._text_cache: dict[str, tuple[tuple, torch.Tensor]] = {}
        self.class_names: list[str] = []
        self.register_buffer("clip_tokens", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("clap_input_ids", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("clap_attention_mask", torch.zeros(0, 1, dtype=torch.long), persistent=False)

    # -- set-up ------------------------------------------------------------------------------------
    def bind_encoder(self, encoder: nn.Module) -> None:
        """Use the encoder's CLIP and CLAP text towers (kept in a tuple: not our submodules)."""
        if encoder.text is None or "clip" not in encoder.text or "clap" not in encoder.text:
            raise ValueError("the few-shot head needs the clip-clap family (CLIP and CLAP text towers)")
        clip_text, clap_text = encoder.text["clip"], encoder.text["clap"]
        self._towers = (clip_text, clap_text)
        width = clip_text.token_embedding.weight.shape[1]
        if self.prompt_learner.ctx.shape[1] != width:
            raise ValueError(
                f"prompt context width {self.prompt_learner.ctx.shape[1]} != CLIP text width {width}"
            )
        names = list(self.cfg.class_names)
        if names:
            self.set_classes(names, self.cfg.background)

    def train(self, mode: bool = True) -> FewShotHead:
        self._text_cache.clear()  # entering or leaving training: never reuse features across it
        return super().train(mode)

    @property
    def towers(self) -> tuple[nn.Module, nn.Module]:
        if self._towers is None:
            raise RuntimeError("the few-shot head is not bound to an encoder (DGSCTModel binds it)")
        return self._towers

    def text_classes(self, names: list[str], background: bool) -> list[str]:
        return [*names, BACKGROUND] if background else list(names)

    def set_classes(self, names: list[str], background: bool) -> None:
        """Build the prompts of ``names`` (+ background): CLIP token ids now, CLAP ids when the
        tokenizer is configured (else at the first forward, where a missing one is an error)."""
        clip_text, _ = self.towers
        self.class_names = self.text_classes(names, background)
        self.cfg.class_names, self.cfg.background = list(names), background
        device = self.clip_adapter.fc[0].weight.device
        context = clip_text.positional_embedding.shape[0]
        self.clip_tokens = clip_tokenize(clip_prompts(self.class_names, self.cfg.n_ctx), context).to(device)
        self.clap_input_ids = torch.zeros(0, 1, dtype=torch.long, device=device)
        self.clap_attention_mask = torch.zeros(0, 1, dtype=torch.long, device=device)
        if self.tokenizer_source is not None:
            self._tokenize_clap()

    def _tokenize_clap(self) -> None:
        _, clap_text = self.towers
        tok = load_roberta_tokenizer(self.tokenizer_source, clap_text.roberta.config.vocab_size)
        tokens = clap_tokenize(
            clap_prompts(self.class_names, self.cfg.clap_template), tok, self.cfg.clap_max_length
        )
        device = self.clip_tokens.device
        self.clap_input_ids = tokens.input_ids.to(device)
        self.clap_attention_mask = tokens.attention_mask.to(device)

    def set_clap_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Use these CLAP token ids (e.g. ids made by another tokenizer, for comparisons)."""
        if input_ids.shape[0] != len(self.class_names):
            raise ValueError(f"{input_ids.shape[0]} CLAP prompts for {len(self.class_names)} classes")
        self.clap_input_ids = input_ids.to(self.clip_tokens.device)
        self.clap_attention_mask = attention_mask.to(self.clip_tokens.device)

    @property
    def num_text_classes(self) -> int:
        return len(self.class_names)

    # -- text side ---------------------------------------------------------------------------------
    def clip_scale(self) -> torch.Tensor:
        return self.towers[0].logit_scale.exp()

    def clap_scale(self) -> torch.Tensor:
        s = self.towers[1].logit_scale_a
        return s.exp() if self.cfg.clap_scale == "exp" else s

    def _cached(self, name: str, tensors: list[torch.Tensor], compute) -> torch.Tensor:
        """``compute()``, reused while none of ``tensors`` changed (their storage and in-place
        version), no optimizer stepped and the module kept its train/eval mode, and no gradient
        flows into them: the text features of an evaluation pass are the same for every batch,
        and so are a frozen text tower's in eval mode."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return compute()
        key = (_OPTIMIZER_STEPS[0], *((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors))
        hit = self._text_cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._text_cache[name] = (key, value)
        return value

    def clip_text_features(self) -> torch.Tensor:
        """The CLIP text tower on the learned prompts: ``[C, D]`` (EOT feature @ projection)."""
        clip = self.towers[0]
        return self._cached(
            "clip", [self.clip_tokens, self.prompt_learner.ctx, *clip.parameters()], self._clip_text
        )

    def _clip_text(self) -> torch.Tensor:
        clip, tokens = self.towers[0], self.clip_tokens
        if tokens.shape[0] == 0:
            raise RuntimeError("the few-shot head has no classes (set_classes)")
        embedded = clip.token_embedding(tokens)  # the frozen prefix/suffix, recomputed
        n = self.cfg.n_ctx
        ctx = self.prompt_learner.ctx.to(embedded.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + n :]], dim=1)
        x = x + clip.positional_embedding.to(x.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)  # batch-first, causal mask
        x = clip.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ clip.text_projection

    def clap_text_features(self) -> torch.Tensor:
        """CLAP's RoBERTa pooler output -> text projection: ``[C, D]`` (dropout in train mode, as
        released: the text tower follows the encoders' train/eval mode)."""
        if self.clap_input_ids.shape[0] == 0:
            self._tokenize_clap()
        clap = self.towers[1]

        def compute() -> torch.Tensor:
            return clap(self.clap_input_ids, self.clap_attention_mask)

        if clap.training:  # dropout: a new draw every forward, as released
            return compute()
        return self._cached(
            "clap", [self.clap_input_ids, self.clap_attention_mask, *clap.parameters()], compute
        )

    # -- forward -------------------------------------------------------------------------------------
    def visual_logits(self, visual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        r = self.cfg.adapter_ratio
        v = _unit(r * self.clip_adapter(visual) + (1 - r) * visual)
        t = self.clip_text_features()
        t = _unit(r * self.clip_adapter_text(t) + (1 - r) * t)
        return scale * v @ t.t()

    def audio_logits(self, audio: torch.Tensor) -> torch.Tensor:
        t = _unit(self.clap_text_features())
        return self.clap_scale() * _unit(audio) @ t.t()

    def forward(self, features: EncoderOutput, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        v, a = features.visual, features.audio  # [B, T, D] each
        scale = self.clip_scale()
        lv = self.visual_logits(v, scale)
        la = self.audio_logits(a)
        ai, ia = self.audio_visual_contrastive_learner(v, a, scale)
        return {
            "event_logits": fuse_logits(lv, la, self.cfg.fusion, self.cfg.fusion_weights),
            "visual_logits": lv,
            "audio_logits": la,
            "logits_audio_image": ai,
            "logits_image_audio": ia,
        }
