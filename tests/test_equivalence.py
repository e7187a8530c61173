"""Every speed/memory optimisation keeps the plain path's fp32 outputs and gradients (1e-4 rel)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_inputs, tiny_model_config

from dgsct_cli.factory import create_model
from dgsct_cli.models.adapter import DGSCTAdapter
from dgsct_cli.tasks.ave import AVELossConfig, ave_loss


def _release_order_projection(self, y):
    """The release's evaluation order: token mixing first, then the channel map."""
    w = self.conv_adapter.weight.view(self.tokens, self.guide_tokens)
    return self.fc(torch.matmul(w, y) + self.conv_adapter.bias[:, None])


def _build(optimised: bool, recompute: str, state=None):
    cfg = tiny_model_config()
    cfg.recompute = recompute
    cfg.visual = dataclasses.replace(cfg.visual, fused_attention=optimised)
    torch.manual_seed(0)
    model = create_model("ave", cfg)
    if not optimised:
        for m in model.encoder.audio.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    if state is None:
        # timm zero-initialises Swin-V2's res-post-norms, which would make its blocks identities.
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                torch.nn.init.normal_(p, 1.0, 0.2)
        for p in model.parameters():
            if p.requires_grad and p.dim() == 1 and p.numel() == 1:
                torch.nn.init.constant_(p, 0.5)  # open the adapters' gates so they matter
    else:
        model.load_state_dict(state)
    return model


def _step(model, monkeypatch=None):
    model.train()
    frames, audio = tiny_inputs(2, seed=3)
    batch = {
        "segment_labels": torch.tensor([[28] * 4 + [3] * 6, [5] * 10]),
        "event_label": torch.tensor([[3], [5]]),
    }
    torch.manual_seed(123)
    out = model(frames=frames, audio=audio)
    loss, _ = ave_loss(out, batch, AVELossConfig())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("recompute", ["off", "on"])
def test_optimised_paths_match_the_plain_path(recompute, monkeypatch):
    reference = _build(optimised=False, recompute="off")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    with monkeypatch.context() as m:
        m.setattr(DGSCTAdapter, "project_guide", _release_order_projection)
        ref_out, ref_grads = _step(reference)

    model = _build(optimised=True, recompute=recompute, state=state)
    assert model.encoder.recompute == (recompute == "on")
    out, grads = _step(model)
    for key in ref_out:
        assert _rel(out[key], ref_out[key]) < 1e-4, key
    assert set(grads) == set(ref_grads)
    # Gradients that are analytically zero (a bias right before a train-mode BatchNorm) are pure
    # rounding noise, so each parameter's error is measured against the whole gradient's scale.
    scale = torch.cat([g.flatten() for g in ref_grads.values()]).norm()
    bad = {
        k: (float((grads[k] - ref_grads[k]).norm()), float(ref_grads[k].norm()))
        for k in grads
        if (grads[k] - ref_grads[k]).norm() > 1e-4 * ref_grads[k].norm() + 1e-6 * scale
    }
    assert not bad, bad
    # Recompute must not update the adapters' BatchNorm statistics a second time.
    after = model.state_dict()
    ref_after = reference.state_dict()
    for key in after:
        if key.endswith("running_mean") and "adapter" in key:
            assert _rel(after[key], ref_after[key]) < 1e-4, key
