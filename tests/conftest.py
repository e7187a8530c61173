"""Shared test helpers: where the fixtures are, tiny models, release-layout state dicts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "release"
DATA = REPO / "tests" / "fixtures" / "data"  # real annotation files (no media)


@pytest.fixture(autouse=True)
def _quiet_random_init_warnings():
    logging.getLogger("dgsct_cli.models.encoders").setLevel(logging.ERROR)
    yield


def release_state_dict_from_shapes(shapes_file: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the release's keys and shapes (sane BatchNorm statistics)."""
    shapes = json.loads(shapes_file.read_text())
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked") or key.endswith("relative_position_index"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


@pytest.fixture
def tiny_model():
    from dgsct_cli.models.factory import create_model, tiny_model_config

    def make(task: str = "ave", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        cfg = tiny_model_config()
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return create_model(task, cfg)

    return make


def tiny_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 10, 3, 64, 64, generator=g), torch.randn(batch, 10, 64000, generator=g) * 0.1
