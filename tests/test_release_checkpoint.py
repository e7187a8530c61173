"""Release checkpoints: strict loading of the published AVE layout, and clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, release_state_dict_from_shapes

from dgsct_cli.convert import detect_release_task, load_official_checkpoint
from dgsct_cli.models.weights import CheckpointError

AVE_SHAPES = FIXTURES / "official_ave_state_dict_shapes.json"


@pytest.fixture(scope="module")
def release_ave_state():
    return release_state_dict_from_shapes(AVE_SHAPES)


def test_release_ave_state_dict_loads_strictly(release_ave_state):
    from dgsct_cli.convert import COMMON_UNUSED_RELEASE_KEYS, map_release_state_dict
    from dgsct_cli.models.heads.ave import AVE_UNUSED_RELEASE_KEYS

    model = load_official_checkpoint("ave", release_ave_state)
    assert not model.training
    # Every parameter/buffer of ours came from the file: compare a few by value.
    own = model.state_dict()
    mapped, dropped = map_release_state_dict(release_ave_state, model, AVE_UNUSED_RELEASE_KEYS)
    assert set(mapped) == set(own)
    for key in ("encoder.vis_adapter_blocks_p1.0.conv_adapter.weight", "head.CMBS.audio_cas.weight"):
        assert torch.equal(own[key], mapped[key])
    assert torch.equal(
        own["encoder.visual.layers.1.downsample.reduction.weight"],
        release_ave_state["swin.layers.0.downsample.reduction.weight"],
    )
    assert torch.equal(
        own["encoder.audio.layers.1.downsample.norm.weight"],
        release_ave_state["htsat.layers.0.downsample.norm.weight"],
    )
    # Dropped keys are exactly those of modules the release never runs.
    import re

    patterns = {**COMMON_UNUSED_RELEASE_KEYS, **AVE_UNUSED_RELEASE_KEYS}
    assert all(any(re.search(p, k) for p in patterns) for k in dropped)
    assert any(k.startswith("adapter_token_downsampler.") for k in dropped)
    assert any(k.startswith("CMBS.AVInter.") for k in dropped)

    # The full-size forward of a model loaded this way is checked against the release's own outputs
    # in tests/test_release_ave_avvp.py::test_full_ave_model_from_the_release_layout_matches_the_release.


def test_release_task_is_detected_by_keys(release_ave_state):
    assert detect_release_task(release_ave_state) == "ave"
    assert detect_release_task({"module." + k: v for k, v in list(release_ave_state.items())[:5]}) is None


def test_release_missing_key_is_listed(release_ave_state):
    broken = dict(release_ave_state)
    broken.pop("temporal_attn.a_fc.weight")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): temporal_attn\.a_fc\.weight"):
        load_official_checkpoint("ave", broken)


def test_release_unexpected_key_is_listed(release_ave_state):
    extra = dict(release_ave_state)
    extra["CMBS.something_new.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): CMBS\.something_new\.weight"):
        load_official_checkpoint("ave", extra)


def test_not_a_release_checkpoint_or_wrong_task(tmp_path):
    path = tmp_path / "random.pt"
    torch.save({"a.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a DG-SCT release checkpoint"):
        load_official_checkpoint("ave", path)
    with pytest.raises(ValueError, match="unknown task 'avqa2'"):
        load_official_checkpoint("avqa2", path)


def test_wrong_task_release_checkpoint_is_refused():
    from dgsct_cli.tasks.base import available_tasks

    if "avvp" not in available_tasks():
        pytest.skip("AVVP task not registered")
    state = release_state_dict_from_shapes(FIXTURES / "official_avvp_state_dict_shapes.json")
    with pytest.raises(CheckpointError, match="this is an AVVP release checkpoint, expected AVE"):
        load_official_checkpoint("ave", state)
