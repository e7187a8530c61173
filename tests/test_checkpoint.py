"""Our checkpoint format and the frozen/trainable split."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_inputs, tiny_model_config

from dgsct_cli.checkpoint import load_any_checkpoint, load_checkpoint, save_checkpoint
from dgsct_cli.config import Recipe
from dgsct_cli.models.weights import CheckpointError
from dgsct_cli.tasks.ave import AVELossConfig, ave_loss


def _recipe() -> Recipe:
    return Recipe(task="ave", model=tiny_model_config())


def test_checkpoint_roundtrip_gives_identical_outputs(tiny_model, tmp_path):
    model = tiny_model().eval()
    path = save_checkpoint(model, _recipe(), tmp_path / "model.safetensors", metrics={"accuracy": 12.5})
    loaded, recipe, metrics = load_checkpoint(path)
    assert recipe.task == "ave" and metrics == {"accuracy": 12.5}
    frames, audio = tiny_inputs()
    with torch.no_grad():
        a, b = model(frames=frames, audio=audio), loaded.eval()(frames=frames, audio=audio)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # No temp files left behind by the atomic write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_any_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="run folder without best.safetensors"):
        load_any_checkpoint(tmp_path / "run")


def test_frozen_trainable_split_follows_the_spec(tiny_model):
    model = tiny_model()
    for name, p in model.named_parameters():
        trainable = "adapter_blocks" in name or name.startswith("head.")
        assert p.requires_grad == trainable, name
    counts = model.parameter_counts()
    assert counts["trainable"] == counts["adapters"] + counts["head"]


def test_training_step_changes_only_trainable_weights(tiny_model):
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frames, audio = tiny_inputs()
    batch = {
        "segment_labels": torch.tensor([[28] * 5 + [1] * 5, [2] * 10]),
        "event_label": torch.tensor([[1], [2]]),
    }
    loss, _ = ave_loss(model(frames=frames, audio=audio), batch, AVELossConfig())
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    params = dict(model.named_parameters())
    changed_params = {k for k in changed if k in params}
    assert changed_params and changed_params <= trainable
    # Buffers may change (train-mode BatchNorm statistics), frozen weights never.
    assert all(k not in params or k in trainable for k in changed)
