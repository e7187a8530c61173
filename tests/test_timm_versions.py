"""What changed under us between the timm versions the project allows (1.0.17 on; the suite was
run with 1.0.17 and the newest): behaviour we rely on is pinned down here."""

from __future__ import annotations

import torch

from dgsct_cli.models.encoders.swinv2 import (
    SwinV2Config,
    create_visual_encoder,
    filter_timm_layout,
    load_swin_weights,
    to_timm_numbering,
)


def _tiny_swin(fused: bool = True):
    cfg = SwinV2Config(
        name="swinv2_tiny_window8_256",
        img_size=32,
        args={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4},
        fused_attention=fused,
    )
    torch.manual_seed(0)
    return create_visual_encoder(cfg)


def test_a_one_token_last_stage_gives_finite_features():
    """timm < 1.0.31 fills a one-token window's coordinate table with NaN (0 / 0)."""
    for fused in (True, False):
        model = _tiny_swin(fused).eval()
        with torch.no_grad():
            out = model.forward_features(torch.randn(2, 3, 32, 32))
        assert torch.isfinite(out).all(), fused


def test_timm_and_original_layouts_load_the_same_weights():
    """A headless timm-layout file is never renumbered (timm 1.0.17-1.0.28 guessed otherwise); an
    original (Microsoft) layout file, merging patches at the end of a stage, is."""
    model = _tiny_swin()
    own = {k: v for k, v in model.state_dict().items() if "relative_position_index" not in k}
    assert set(filter_timm_layout(own, model)) <= set(own)
    original = {}
    for key, value in own.items():
        for n in (1, 2, 3):
            key = key.replace(f"layers.{n}.downsample", f"layers.{n - 1}.downsample")
        original[key] = value
    assert "layers.0.downsample.reduction.weight" in original
    assert set(to_timm_numbering(original)) == set(own)
    for state in (own, original):
        fresh = _tiny_swin()
        torch.nn.init.zeros_(fresh.layers[1].downsample.reduction.weight)
        load_swin_weights(fresh, dict(state))
        for key, value in own.items():
            assert torch.equal(fresh.state_dict()[key], value), key
