"""What makes the GPU step cheaper keeps its numbers: Swin-V2's position bias computed once per
weight load, regional compilation, and the profile option of ``dgsct bench``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_inputs, tiny_model_config
from timm.models.swin_transformer_v2 import WindowAttention

from dgsct_cli.factory import create_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("ave", tiny_model_config())
    # timm zero-initialises the res-post-norms (blocks would be identities) and cpb_mlp's output
    # is small at init: make both matter.
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            torch.nn.init.normal_(p, 1.0, 0.2)
        if "cpb_mlp" in name:
            torch.nn.init.normal_(p, 0.0, 0.5)
    return model


def _attentions(model) -> list[WindowAttention]:
    return [m for m in model.encoder.visual.modules() if isinstance(m, WindowAttention)]


def test_position_bias_is_computed_once_per_weight_load_and_equals_timms():
    model = _model().eval()
    frames, audio = tiny_inputs(2)
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    handles = [a.cpb_mlp.register_forward_hook(count) for a in _attentions(model)]
    with torch.no_grad():
        first = model(frames=frames, audio=audio)  # the weights changed since the model was built
        assert calls["n"] == len(_attentions(model))
        second = model(frames=frames, audio=audio)
    assert calls["n"] == len(_attentions(model))  # not again: the weights are the same
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The stored bias is timm's: its own WindowAttention (unfused) on the same weights.
    for attn in _attentions(model):
        n = attn.relative_position_index.shape[0]
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
        timm_bias = 16 * torch.sigmoid(
            table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        )
        assert torch.equal(attn.dgsct_position_bias, timm_bias.detach())
    for h in handles:
        h.remove()


def test_a_weight_load_refreshes_the_position_bias():
    """load_state_dict (and any in-place write) after the first forward: outputs follow the new weights."""
    model, other = _model(0).eval(), _model(1).eval()
    frames, audio = tiny_inputs(2)
    with torch.no_grad():
        model(frames=frames, audio=audio)  # stores model's own biases
        model.load_state_dict(other.state_dict())
        got = model(frames=frames, audio=audio)
        want = other(frames=frames, audio=audio)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    attn = _attentions(model)[0]
    with torch.no_grad():
        attn.cpb_mlp[2].weight.mul_(2.0)
        model(frames=frames, audio=audio)
        expected = 16 * torch.sigmoid(
            attn.cpb_mlp(attn.relative_coords_table)
            .view(-1, attn.num_heads)[attn.relative_position_index.view(-1)]
            .view(attn.relative_position_index.shape[0], attn.relative_position_index.shape[0], -1)
            .permute(2, 0, 1)
        )
    assert torch.equal(attn.dgsct_position_bias, expected)


def test_a_trainable_position_mlp_still_gets_its_gradient():
    model = _model().train()
    attn = _attentions(model)[0]
    for p in attn.cpb_mlp.parameters():
        p.requires_grad_(True)
    frames, audio = tiny_inputs(2)
    model(frames=frames, audio=audio)["event_logits"].sum().backward()
    assert attn.cpb_mlp[0].weight.grad is not None and attn.cpb_mlp[0].weight.grad.abs().sum() > 0


def test_position_bias_is_not_in_state_dicts():
    model = _model()
    assert not [k for k in model.state_dict() if "dgsct_position_bias" in k]


def test_compile_regions_rule():
    from dgsct_cli.runtime import compile_regions_wanted

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_regions_wanted("auto", cuda) and not compile_regions_wanted("auto", cpu)
    assert compile_regions_wanted("on", cpu) and not compile_regions_wanted("off", cuda)
    assert not compile_regions_wanted("on", cuda, whole_model=True)


@pytest.mark.slow
@pytest.mark.parametrize("recompute", ["on"])  # the full-size default; off is the simpler path
def test_regionally_compiled_model_matches_eager_outputs_and_gradients(recompute):
    """Every block, adapter and half block captured by dynamo and AOT autograd on its own, with and
    without activation recompute. The ``aot_eager`` backend runs the captured graphs without code
    generation (inductor's C++ code generation takes tens of minutes on 2 CPU cores; on CUDA the
    default backend generates Triton kernels)."""
    torch._dynamo.reset()
    eager, compiled = _model(), _model()
    compiled.load_state_dict(eager.state_dict())
    eager.encoder.recompute = compiled.encoder.recompute = recompute == "on"
    assert compiled.encoder.compile_regions(backend="aot_eager") > 0
    frames, audio = tiny_inputs(2, seed=5)
    results = []
    for model in (eager, compiled):
        model.train()
        torch.manual_seed(7)
        out = model(frames=frames, audio=audio)
        (out["event_logits"].square().mean() + out["segment_logits"].square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in out.items()}, grads))
    (out_e, grad_e), (out_c, grad_c) = results
    for key in out_e:
        torch.testing.assert_close(out_c[key], out_e[key], rtol=1e-4, atol=1e-5)
    assert set(grad_c) == set(grad_e)
    scale = torch.cat([g.flatten() for g in grad_e.values()]).norm()
    for name in grad_e:
        assert (grad_c[name] - grad_e[name]).norm() <= 1e-4 * grad_e[name].norm() + 1e-6 * scale, name
    torch._dynamo.reset()


def test_bench_profile_writes_a_trace_and_the_top_kernels(tmp_path):
    from dgsct_cli.bench import run_bench
    from dgsct_cli.config import load_recipe

    result = run_bench(
        load_recipe("ave-tiny"), batch_size=1, steps=1, warmup=0, device="cpu", profile_dir=tmp_path / "prof"
    )
    trace = json.loads((tmp_path / "prof" / "trace.json").read_text())
    assert trace.get("traceEvents")
    summary = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert 0 < len(summary["top"]) <= 25
    assert abs(sum(summary["shares"].values()) - 1.0) < 1e-6
    assert summary["shares"]["matmul"] > 0  # a training step of linear layers
    table = (tmp_path / "prof" / "top_kernels.txt").read_text()
    assert "matmul" in table and "%" in table
    assert result["profile"]["matmul_and_attention_share"] == pytest.approx(
        summary["matmul_and_attention_share"]
    )


def test_kernel_names_are_classified():
    from dgsct_cli.profile import classify_kernel

    assert classify_kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert classify_kernel("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn") == "matmul"
    assert classify_kernel("aten::addmm") == "matmul"
    assert classify_kernel("aten::bmm") == "matmul"
    assert classify_kernel("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert classify_kernel("fmha_cutlassF_bf16_aligned_64x64_rf_sm80") == "attention"
    assert classify_kernel("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert classify_kernel("aten::convolution") == "convolution"
    assert (
        classify_kernel("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>")
        == "other"
    )
    assert classify_kernel("aten::layer_norm") == "other"
