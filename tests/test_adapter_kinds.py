"""Adapter kinds (``model.adapter.kind``: dgsct, lavish, none) and DG-SCT's guidance ablations
(``model.adapter.guidance``): the default is today's model exactly, and leaving a path out removes
exactly that path."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import REPO, tiny_inputs, tiny_model_config

from dgsct_cli.config import load_recipe
from dgsct_cli.factory import create_model
from dgsct_cli.models.adapter import AdapterSettings, DGSCTAdapter
from dgsct_cli.models.adapter_kinds import ADAPTER_KINDS, get_adapter_kind
from dgsct_cli.models.lavish import LAVisHAdapter
from dgsct_cli.models.output import EncoderNeeds
from dgsct_cli.schema import RecipeError

PRE = REPO / "tests" / "fixtures" / "guidance" / "pre_guidance.pt"


def _tiny(seed: int = 0, **adapter) -> torch.nn.Module:
    cfg = tiny_model_config("ave")
    for key, value in adapter.items():
        setattr(cfg.adapter, key, value)
    cfg.adapter = AdapterSettings(**vars(cfg.adapter))  # re-checked as a recipe would be
    torch.manual_seed(seed)
    return create_model("ave", cfg).eval()


def _gates(model: torch.nn.Module, value: float) -> None:
    """Open the zero-initialised gates so that the adapters change the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".gate", ".gate_av")):
                p.fill_(value)


def _run(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    frames, audio = tiny_inputs(batch=1)
    with torch.no_grad():
        return model(frames=frames, audio=audio)


# -- the registry ----------------------------------------------------------------------------------


def test_the_registry_names_the_three_kinds_and_refuses_others():
    assert {"dgsct", "lavish", "none"} <= set(ADAPTER_KINDS)
    assert get_adapter_kind("none").build is None
    with pytest.raises(RecipeError, match="unknown adapter kind 'lora'; available: dgsct, lavish, none"):
        load_recipe("ave-tiny", ["model.adapter.kind=lora"])


def test_the_walker_builds_the_recipes_kind():
    assert isinstance(_tiny().encoder.vis_adapter_blocks_p1[0], DGSCTAdapter)
    lavish = _tiny(kind="lavish", guide_projection="linear", num_tokens=2)
    adapters = [m for lst in lavish.encoder.adapter_modules() for m in lst]
    assert adapters and all(isinstance(m, LAVisHAdapter) for m in adapters)
    # LAVisH computes no attention map: the pooled features are token means.
    frames, audio = tiny_inputs(batch=1)
    _gates(lavish, 0.5)
    with torch.no_grad():
        feats = lavish.encode(frames, audio, needs=EncoderNeeds(visual_tokens=True))
    assert feats.visual_map is None and feats.audio_map is None
    torch.testing.assert_close(feats.visual.flatten(0, 1), feats.visual_tokens.mean(1))
    # guide_projection linear: no token conv; no fc where the widths are equal (the tiny towers).
    a0 = lavish.encoder.vis_adapter_blocks_p1[0]
    assert a0.conv_adapter is None and a0.fc is None
    wide = LAVisHAdapter(64, 16, 32, 9, AdapterSettings(kind="lavish", guide_projection="linear"))
    assert wide.conv_adapter is None and (wide.fc.in_features, wide.fc.out_features) == (32, 64)


def test_kind_none_is_the_frozen_baseline_and_use_adapters_false_means_it():
    none = _tiny(kind="none")
    assert none.encoder.pairs == [] and not any(True for _ in none.encoder.adapter_modules()[0])
    trainable = [n for n, p in none.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    # Pooled features are the frozen towers' token means: the same numbers as the DG-SCT model's
    # encoders run without their adapters.
    torch.manual_seed(0)
    dgsct = _tiny()
    frames, audio = tiny_inputs(batch=1)
    with torch.no_grad():
        plain = dgsct.encode(frames, audio, use_adapters=False)
        base = none.encode(frames, audio)
    torch.testing.assert_close(base.visual, plain.visual)
    torch.testing.assert_close(base.audio, plain.audio)
    # The two spellings agree, old recipes keep working, and contradictions are refused.
    assert load_recipe("ave-tiny", ["model.use_adapters=false"]).model.adapter.kind == "none"
    assert not load_recipe("ave-tiny", ["model.adapter.kind=none"]).model.use_adapters
    stage1 = load_recipe("avqa-grounding-tiny").model
    assert stage1.adapter.kind == "none" and not stage1.use_adapters
    with pytest.raises(RecipeError, match="use_adapters: false contradicts adapter.kind: lavish"):
        load_recipe("ave-tiny", ["model.use_adapters=false", "model.adapter.kind=lavish"])


# -- guidance ablations ----------------------------------------------------------------------------


def test_the_default_guidance_is_todays_model_bit_for_bit():
    """All three paths (in any order) build and compute exactly what the model computed before
    ``guidance`` existed: bit for bit in one process, and against the numbers the code before
    this change wrote (tests/fixtures/guidance/pre_guidance.pt, tolerance for other machines)."""
    default = _tiny()
    explicit = _tiny(guidance=["spatial", "channel", "temporal"])
    shuffled = _tiny(guidance=["temporal", "channel", "spatial"])
    for model in (default, explicit, shuffled):
        _gates(model, 0.5)
    want = _run(default)
    for model in (explicit, shuffled):
        got = _run(model)
        assert all(torch.equal(got[k], want[k]) for k in want)
    pre = torch.load(PRE, weights_only=True)
    for key, value in pre["tiny_ave"].items():
        torch.testing.assert_close(want[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["default", "ms3", "s4", "fewshot"])
def test_the_default_guidance_adapter_matches_the_code_before_it(name):
    pre = torch.load(PRE, weights_only=True)
    case = pre["adapters"][name]
    torch.manual_seed(3)
    adapter = DGSCTAdapter(32, 16, 24, 9, AdapterSettings(**case["settings"])).eval()
    with torch.no_grad():
        for n, p in adapter.named_parameters():
            if n in ("gate", "gate_av"):
                p.fill_(0.7)
        out, spatial_map = adapter(pre["inputs"]["x"], pre["inputs"]["y"])
    torch.testing.assert_close(out, case["out"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spatial_map, case["map"], rtol=1e-5, atol=1e-6)


# The last linear of each path; pinning its output to -1e4 makes that path's sigmoid exactly 0
# (and the spatial softmax uniform): what "removed" means, computed by the full adapter.
_PINNED = {
    "channel": "fc_affine_v_c_att",
    "spatial": "fc_affine_v_s_att",
    "temporal": "temporal_gated.0",
}
_BUILT = {
    "channel": ("fc_affine_audio_1", "fc_affine_video_1", "fc_affine_bottleneck", "fc_affine_v_c_att"),
    "spatial": ("fc_affine_video_2", "fc_affine_audio_2", "fc_affine_v_s_att"),
    "temporal": ("temporal_gated",),
}


def _pin(module: torch.nn.Module, path: str) -> None:
    linear = module.get_submodule(_PINNED[path])
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-1e4)


@pytest.mark.parametrize("removed", [["channel"], ["spatial"], ["temporal"], ["channel", "spatial"]])
def test_leaving_a_path_out_removes_exactly_that_path(removed):
    """The ablated adapter does not build the path's modules and computes what the full adapter
    computes with that path's attention held at zero (one adapter, the few-shot variant with all
    three paths, in eval and train mode)."""
    settings = dict(num_tokens=3, temporal_gate=True, gamma=0.05, alpha=0.2)
    full = DGSCTAdapter(32, 16, 24, 9, AdapterSettings(**settings))
    kept = [p for p in ("spatial", "channel", "temporal") if p not in removed]
    ablated = DGSCTAdapter(32, 16, 24, 9, AdapterSettings(guidance=kept, **settings))
    names = {n.split(".")[0] for n, _ in ablated.named_parameters()}
    for path in ("spatial", "channel", "temporal"):
        built = {m.split(".")[0] for m in _BUILT[path]}
        assert (built <= names) == (path in kept), path
    with torch.no_grad():
        for _, p in full.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if k in ablated.state_dict()})
    for path in removed:
        _pin(full, path)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 16, 32, generator=g), torch.randn(6, 9, 24, generator=g)
    for train in (False, True):
        full.train(train)
        ablated.train(train)
        want, want_map = full(x, y)
        got, got_map = ablated(x, y)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_map, want_map, rtol=1e-6, atol=1e-7)
    # Without the pin the full adapter computes something else: the path did matter.
    unpinned = DGSCTAdapter(32, 16, 24, 9, AdapterSettings(**settings)).eval()
    unpinned.load_state_dict(copy.deepcopy(full.state_dict()))
    for path in removed:
        linear = unpinned.get_submodule(_PINNED[path])
        with torch.no_grad():
            linear.weight.normal_(0, 0.3)
            linear.bias.zero_()
    ablated.eval()
    assert (unpinned(x, y)[0] - ablated(x, y)[0]).abs().max() > 1e-6


def test_a_spatial_ablation_pools_by_the_token_mean_in_the_whole_model():
    model = _tiny(guidance=["channel", "temporal"])
    assert not any("fc_affine_v_s_att" in n for n, _ in model.named_parameters())
    _gates(model, 0.5)
    frames, audio = tiny_inputs(batch=1)
    with torch.no_grad():
        feats = model.encode(frames, audio)
    lv = feats.visual_map.shape[-1]
    torch.testing.assert_close(feats.visual_map, torch.full_like(feats.visual_map, 1.0 / lv))


def test_guidance_settings_that_change_nothing_or_do_not_apply_are_refused():
    with pytest.raises(RecipeError, match="leaving out 'temporal' needs adapters with a temporal path"):
        load_recipe("ave-tiny", ["model.adapter.guidance=[spatial,channel]"])
    with pytest.raises(RecipeError, match="the 'lavish' adapter kind has none"):
        load_recipe("ave-tiny", ["model.adapter.kind=lavish", "model.adapter.guidance=[channel]"])
    with pytest.raises(RecipeError, match=r"model.adapter.guidance: 'spatail' is out of range"):
        load_recipe("ave-tiny", ["model.adapter.guidance=[spatail]"])
    with pytest.raises(RecipeError, match="names a path twice"):
        load_recipe("fewshot-ave", ["model.adapter.guidance=[channel,channel]"])
    # The few-shot adapters have a temporal gate: leaving it out is a real ablation.
    r = load_recipe("fewshot-ave", ["model.adapter.guidance=[spatial,channel]"])
    assert r.model.adapter.guidance == ["spatial", "channel"]
