"""Swin Transformer V2 (timm) as a visual tower, loaded from a local checkpoint file."""

from __future__ import annotations

import logging
import math
import re
import types
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2, WindowAttention, checkpoint_filter_fn
from torch import nn

from ..weights import load_into, load_state_dict_file
from .base import StagedNHWCView, StageGeometry
from .configs import SwinV2Config

log = logging.getLogger(__name__)


class SwinV2View(StagedNHWCView):
    """The walker's view of a timm Swin-V2: NHWC tokens, patch merging at the start of stages
    2-4 (timm's layout; the release's older timm merged at the end of stages 1-3: same maths)."""

    def __init__(self, model: SwinTransformerV2) -> None:
        self.model = model
        self.geometry = [
            StageGeometry(s.blocks[0].dim, s.output_resolution[0] * s.output_resolution[1], len(s.blocks))
            for s in model.layers
        ]

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        refresh_position_biases(self.model)  # eager, before any compiled block reads them
        return self.model.patch_embed(frames)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)


def create_visual_encoder(cfg: SwinV2Config) -> SwinTransformerV2:
    """Build the Swin-V2 trunk without its classifier and load weights from a local file.

    Without a file the weights are random and a warning says so; the hub is only used when the
    recipe asks for it with ``weights: hub``.
    """
    from_hub = cfg.weights == "hub"
    model = timm.create_model(
        cfg.name,
        pretrained=from_hub,
        num_classes=0,
        img_size=cfg.img_size,
        drop_path_rate=cfg.drop_path_rate,
        **cfg.args,
    )
    if not isinstance(model, SwinTransformerV2):
        raise ValueError(f"model.visual.name: {cfg.name!r} is not a Swin Transformer V2 model")
    for module in model.modules():
        if isinstance(module, WindowAttention):
            # timm < 1.0.31 divides a one-token window's coordinates by (window - 1) = 0: NaN in
            # the table, NaN features (a tiny model whose last stage is 1x1). Later timm writes 0.
            module.relative_coords_table.nan_to_num_(0.0)
    if cfg.fused_attention:
        use_fused_attention(model)
    if from_hub:
        return model
    if cfg.weights is None:
        log.warning("model.visual.weights is not set: the Swin-V2 encoder is randomly initialised")
        return model
    load_swin_weights(model, cfg.weights)
    return model


def _fused_window_attention(
    self: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Swin-V2 cosine window attention through ``scaled_dot_product_attention`` (exact).

    softmax(cos(q, k) * scale + bias + mask) v == SDPA(normalize(q) * scale, normalize(k), v,
    attn_mask=bias + mask, scale=1): the logit scale moves onto q, the bias and the shift mask
    become the additive mask, so the fused kernel never materialises intermediate copies.
    """
    windows, n, c = x.shape
    bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
    qkv = F.linear(x, self.qkv.weight, bias).reshape(windows, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
    q = F.normalize(q, dim=-1) * scale
    k = F.normalize(k, dim=-1)
    if self.cpb_mlp[0].weight.requires_grad:
        # A trainable MLP: recomputed every call, so its gradient flows and an optimiser step
        # (fused Adam does not bump version counters) is never missed.
        attn_bias = compute_position_bias(self)
    else:
        if self.dgsct_position_bias is None:  # a block run on its own, before the tower's embed
            refresh_position_biases(self)
        attn_bias = self.dgsct_position_bias
    attn_bias = attn_bias.to(q.dtype)  # [heads, n, n]
    if mask is not None:
        nw = mask.shape[0]
        attn_bias = attn_bias.unsqueeze(0) + mask.unsqueeze(1).to(q.dtype)  # [nW, heads, n, n]
        q, k, v = (t.view(windows // nw, nw, self.num_heads, n, -1) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=0.0, scale=1.0)
    out = out.reshape(windows, self.num_heads, n, -1).transpose(1, 2).reshape(windows, n, c)
    return self.proj_drop(self.proj(out))


def compute_position_bias(attn: WindowAttention) -> torch.Tensor:
    """Swin-V2's continuous relative-position bias ``[heads, n, n]``: 16 sigmoid(MLP(table)),
    gathered by relative position (timm's WindowAttention computes the same in every forward)."""
    n = attn.relative_position_index.shape[0]
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
    rel = table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    return 16 * torch.sigmoid(rel)


def _bias_key(attn: WindowAttention) -> tuple:
    # In-place writes (load_state_dict, copy_) bump a tensor's version; a move to another device
    # or a replaced parameter changes its storage: either makes the stored bias stale.
    tensors = (*attn.cpb_mlp.parameters(), attn.relative_coords_table, attn.relative_position_index)
    return tuple((t._version, t.data_ptr(), t.device) for t in tensors)


@torch.no_grad()
def refresh_position_biases(model: nn.Module) -> None:
    """Recompute the stored position bias of every fused window attention whose weights changed.

    The bias depends on the weights only, not on the input, and DG-SCT never trains the Swin-V2
    tower: computing it once per weight load instead of in every block of every step saves an MLP
    and a gather per block (timm recomputes them each forward). It is computed in fp32 (under
    bf16 autocast timm's would be bf16). Called eagerly at the start of the tower's forward, so
    compiled blocks only read a tensor.
    """
    for module in model.modules():
        if (
            isinstance(module, WindowAttention)
            and hasattr(module, "dgsct_position_bias")
            and not module.cpb_mlp[0].weight.requires_grad
        ):
            key = _bias_key(module)
            if module.__dict__.get("_dgsct_bias_key") != key:
                with torch.autocast(module.relative_coords_table.device.type, enabled=False):
                    bias = compute_position_bias(module).float()
                # A plain attribute, not a buffer: out of state dicts, and not broadcast by DDP
                # every step (a move to another device is caught by the key instead).
                module.dgsct_position_bias = bias
                module.__dict__["_dgsct_bias_key"] = _bias_key(module)


def use_fused_attention(model: SwinTransformerV2) -> None:
    """Route every window attention of ``model`` through :func:`_fused_window_attention`, with its
    position bias computed once per weight load (:func:`refresh_position_biases`)."""
    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.forward = types.MethodType(_fused_window_attention, module)
            module.dgsct_position_bias = None
    refresh_position_biases(model)


# timm's filter guesses whether a file is in timm's stage numbering, and the guess changed between
# versions: timm 1.0.17-1.0.28 renumber unless "head.fc.weight" is present (so a headless timm file
# was renumbered wrongly), later versions when "layers.0.downsample.reduction.weight" is. We decide
# by the latter ourselves and give timm a placeholder head key, so every version agrees.
_TIMM_NATIVE_SIGN = "head.fc.weight"


def filter_timm_layout(state: dict[str, torch.Tensor], model: SwinTransformerV2) -> dict[str, torch.Tensor]:
    """timm's Swin-V2 checkpoint filter (drops recomputed buffers, resizes the patch embedding and
    the position tables) on a state already in timm's numbering, never renumbering it."""
    state = {**state, _TIMM_NATIVE_SIGN: torch.empty(0)} if _TIMM_NATIVE_SIGN not in state else state
    return {k: v for k, v in checkpoint_filter_fn(state, model).items() if k != _TIMM_NATIVE_SIGN}


def to_timm_numbering(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout (Microsoft) Swin-V2 state, which merges patches at the end of a stage, in
    timm's numbering (merging at the start of the next); a timm/HF state is returned as it is."""
    if "layers.0.downsample.reduction.weight" not in state:
        return state
    shifted = {}
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        shifted[key.replace("head.", "head.fc.", 1) if key.startswith("head.") else key] = value
    return shifted


def load_swin_weights(model: SwinTransformerV2, path: str | Path | dict[str, torch.Tensor]) -> None:
    """Load a timm/HF or original-layout Swin-V2 checkpoint (renumbered to timm's stages here)."""
    state = load_state_dict_file(path) if not isinstance(path, dict) else path
    state = filter_timm_layout(to_timm_numbering(state), model)
    # The classifier is not part of the trunk DG-SCT uses.
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_into(model, state, str(path) if not isinstance(path, dict) else "Swin-V2 state dict")
