"""AVVP release checkpoints: the published MGN_Net.pt layout loads strictly and runs."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, release_state_dict_from_shapes

from dgsct_cli.convert import detect_release_task, load_official_checkpoint, map_release_state_dict
from dgsct_cli.models.weights import CheckpointError
from dgsct_cli.tasks.base import get_task

AVVP_SHAPES = FIXTURES / "official_avvp_state_dict_shapes.json"


@pytest.fixture(scope="module")
def release_avvp_state():
    return release_state_dict_from_shapes(AVVP_SHAPES)


@pytest.mark.slow
def test_release_avvp_state_dict_loads_strictly_and_runs(release_avvp_state):
    assert detect_release_task(release_avvp_state) == "avvp"
    model = load_official_checkpoint("avvp", release_avvp_state)
    mapped, dropped = map_release_state_dict(release_avvp_state, model, get_task("avvp").release.unused_keys)
    assert set(mapped) == set(model.state_dict())
    assert torch.equal(
        model.state_dict()["head.av_mcg.grouping.norm_x.weight"],
        release_avvp_state["av_mcg.grouping.norm_x.weight"],
    )
    # Only modules the release never runs are dropped.
    assert any(".fc_caption." in k for k in dropped) and any(".temporal_gated." in k for k in dropped)
    assert not any(k.startswith(("fc_prob", "av_mcg", "audio_cug", "visual_cug")) for k in dropped)
    with torch.no_grad():
        out = model(
            frames=torch.randn(1, 10, 3, 192, 192),
            audio=torch.randn(1, 10, 320000) * 0.1,
            video_st=torch.randn(1, 10, 512),
        )
    shapes = {
        "video_prob": (1, 25),
        "audio_prob": (1, 25),
        "visual_prob": (1, 25),
        "audio_frame_prob": (1, 10, 25),
        "visual_frame_prob": (1, 10, 25),
        "audio_class_logits": (25, 25),
        "visual_class_logits": (25, 25),
    }
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key]).all(), key
    for key in ("video_prob", "audio_prob", "visual_prob"):
        assert ((out[key] > 0) & (out[key] < 1)).all()


def test_avvp_release_refused_as_ave_and_missing_keys_listed(release_avvp_state):
    with pytest.raises(CheckpointError, match="this is an AVVP release checkpoint, expected AVE"):
        load_official_checkpoint("ave", release_avvp_state)
    broken = dict(release_avvp_state)
    broken.pop("fc_prob_v.weight")
    with pytest.raises(CheckpointError, match=r"missing key\(s\): fc_prob_v\.weight"):
        load_official_checkpoint("avvp", broken)
