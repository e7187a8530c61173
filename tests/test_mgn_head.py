"""MGN head for AVVP (tasks-release.md §A.3-A.4): release key names, grouping modes, shapes, loss."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dgsct_cli.models.heads.mgn import (
    MGN_UNUSED_RELEASE_KEYS,
    MGN_UNUSED_RELEASE_KEYS_GATED_AUDIO,
    AssignAttention,
    GroupingBlock,
    MGNHead,
    ModalityTrans,
    avvp_loss,
    straight_through_one_hot,
)

SHAPES = Path(__file__).resolve().parent / "fixtures" / "release" / "official_avvp_state_dict_shapes.json"
TINY = dict(visual_dim=64, audio_dim=32, st_dim=16, dim=32, temporal_dim=16, temporal_ff_dim=32)


def _release_head_shapes(drop: dict[str, str]) -> dict[str, list[int]]:
    shapes = json.loads(SHAPES.read_text())
    encoder = ("swin.", "htsat.", "adapter_token_downsampler")
    return {
        k: v
        for k, v in shapes.items()
        if not (k.startswith(encoder) or "adapter_blocks" in k) and not any(re.search(p, k) for p in drop)
    }


@pytest.fixture(scope="module")
def default_head() -> MGNHead:
    torch.manual_seed(0)
    return MGNHead().eval()


@pytest.fixture(scope="module")
def gated_head() -> MGNHead:
    torch.manual_seed(0)
    return MGNHead(gated_audio=True).eval()


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_matches_release_head_keys(default_head: MGNHead, gated_head: MGNHead) -> None:
    assert _shapes(default_head) == _release_head_shapes(MGN_UNUSED_RELEASE_KEYS)
    # The opt-in gated audio path builds the visual temporal branch under the release names too.
    assert _shapes(gated_head) == _release_head_shapes(MGN_UNUSED_RELEASE_KEYS_GATED_AUDIO)


def test_unused_patterns_only_match_head_keys_that_exist() -> None:
    keys = _release_head_shapes({})
    for pattern in MGN_UNUSED_RELEASE_KEYS:
        assert any(re.search(pattern, k) for k in keys), pattern


def test_parameter_counts_match_spec(gated_head: MGNHead) -> None:
    # §A.3.5 counts, computed on the release classes (they include the dead visual temporal branch).
    head = gated_head
    count = {
        n: sum(p.numel() for p in getattr(head, n).parameters())
        for n in ("audio_cug", "visual_cug", "av_mcg")
    }
    assert count == {"audio_cug": 1_393_571, "visual_cug": 995_161, "av_mcg": 1_589_977}
    assert sum(p.numel() for p in head.temporal_attn.parameters()) == 811_522
    assert sum(p.numel() for p in head.parameters()) == 5_193_971


def test_init_tokens_zero_and_head_linears_trunc_normal(default_head: MGNHead) -> None:
    head = default_head
    assert torch.count_nonzero(head.audio_token) == 0 and torch.count_nonzero(head.visual_token) == 0
    assert torch.count_nonzero(head.fc_v.bias) == 0
    assert head.fc_v.weight.std().item() == pytest.approx(0.02, rel=0.1)
    ln = head.av_mcg.grouping.norm_new_x
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)
    # The temporal attention is built after the init, so it keeps PyTorch's defaults (nonzero biases).
    assert torch.count_nonzero(head.temporal_attn.audio_gated[0].bias) == 1


def test_straight_through_is_exactly_one_hot_and_passes_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 25, 10, requires_grad=True)
    y = straight_through_one_hot(logits.softmax(dim=-2), dim=-2)
    assert torch.all((y == 0) | (y == 1))
    assert torch.all(y.sum(dim=-2) == 1)
    assert torch.equal(y.argmax(dim=-2), logits.argmax(dim=-2))
    (y * torch.randn_like(y)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("hard", "gumbel", "training", "one_hot"),
    [
        (False, False, True, False),  # soft
        (True, False, False, True),  # hard straight-through argmax
        (True, True, True, True),  # hard Gumbel (training)
        (True, True, False, True),  # Gumbel is training-only: plain hard argmax in eval
        (False, True, True, False),  # soft Gumbel
    ],
)
def test_assign_attention_modes(hard: bool, gumbel: bool, training: bool, one_hot: bool) -> None:
    torch.manual_seed(0)
    assign = AssignAttention(16, hard=hard, gumbel=gumbel).train(training)
    query = torch.randn(3, 5, 16, requires_grad=True)  # 5 groups
    key = torch.randn(3, 7, 16)  # 7 tokens
    out, maps = assign(query, key)
    assert out.shape == (3, 5, 16)
    assert maps["hard"].shape == maps["soft"].shape == (3, 5, 7)
    # Normalised over the GROUP axis: every token's assignment sums to 1.
    torch.testing.assert_close(maps["hard"].sum(dim=-2), torch.ones(3, 7))
    assert bool(torch.all((maps["hard"] == 0) | (maps["hard"] == 1))) == one_hot
    # The "soft" map is 1 + a softmax over tokens, so each group row sums to 1 + 1 and lies in (1, 2).
    torch.testing.assert_close(maps["soft"].sum(dim=-1), torch.full((3, 5), 1.0 + 7.0))
    assert torch.all(maps["soft"] > 1) and torch.all(maps["soft"] < 2)
    out.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    if hard and not (gumbel and training):
        raw = assign.q_proj(query) @ assign.k_proj(key).transpose(-2, -1)
        assert torch.equal(maps["hard"].argmax(dim=-2), raw.argmax(dim=-2))


def test_gumbel_assignment_is_random_in_training() -> None:
    assign = AssignAttention(16, hard=True, gumbel=True).train()
    query, key = torch.randn(4, 25, 16), torch.randn(4, 10, 16)
    torch.manual_seed(1)
    a = assign(query, key)[1]["hard"]
    torch.manual_seed(2)
    b = assign(query, key)[1]["hard"]
    assert not torch.equal(a, b)
    assign.eval()
    assert torch.equal(assign(query, key)[1]["hard"], assign(query, key)[1]["hard"])


def test_grouping_block_shapes_and_hard_gradient() -> None:
    block = GroupingBlock(32, 8, num_group_token=6, num_output_group=4, hard=True)
    x = torch.randn(2, 10, 32, requires_grad=True)
    groups = torch.randn(2, 6, 32, requires_grad=True)
    out, maps = block(x, groups)
    assert out.shape == (2, 4, 32) and maps["hard"].shape == (2, 4, 10)
    out.sum().backward()
    # The straight-through assignment still lets gradient reach the assignment logits (q/k projections).
    assert block.assign.q_proj.weight.grad.abs().sum() > 0
    assert block.assign.k_proj.weight.grad.abs().sum() > 0


def test_modality_trans_with_han() -> None:
    mt = ModalityTrans(
        32, depth=2, num_group_token=5, num_output_group=5, use_han=True, num_segments=10
    ).eval()
    assert mt.han_encoder is not None and mt.han_encoder.assign.hard and mt.han_encoder.assign.gumbel
    assert not mt.grouping.assign.hard
    x, other = torch.randn(2, 10, 32), torch.randn(2, 10, 32)
    out, maps = mt(x, torch.zeros(5, 32), x_other=other)
    assert out.shape == (2, 5, 32) and maps["soft"].shape == (2, 5, 10)
    # HAN changes the result (the other modality is used).
    assert not torch.allclose(out, mt(x, torch.zeros(5, 32))[0])


def _inputs(b: int, visual_dim: int, audio_dim: int, st_dim: int) -> tuple[torch.Tensor, ...]:
    return torch.randn(b, 10, visual_dim), torch.randn(b, 10, audio_dim), torch.randn(b, 10, st_dim)


def _check_outputs(out: dict[str, torch.Tensor], b: int, c: int = 25) -> None:
    assert out["video_prob"].shape == out["audio_prob"].shape == out["visual_prob"].shape == (b, c)
    assert out["audio_frame_prob"].shape == out["visual_frame_prob"].shape == (b, 10, c)
    assert out["audio_class_logits"].shape == out["visual_class_logits"].shape == (c, c)
    for k in ("video_prob", "audio_prob", "visual_prob"):
        assert torch.all((out[k] > 0) & (out[k] < 1)), k
    # Frame probability = video-level modality probability times a map in (1, 2).
    ratio = out["audio_frame_prob"] / out["audio_prob"].unsqueeze(1)
    assert torch.all((ratio > 1) & (ratio < 2))


@pytest.mark.parametrize("gated_audio", [False, True])
def test_forward_and_loss_tiny(gated_audio: bool) -> None:
    torch.manual_seed(0)
    head = MGNHead(**TINY, num_classes=7, gated_audio=gated_audio).train()
    out = head.predict(*_inputs(3, 64, 32, 16))
    _check_outputs(out, 3, c=7)
    labels = torch.zeros(3, 7)
    labels[0, 1] = labels[1, 2] = labels[2, 3] = labels[2, 6] = 1
    loss = avvp_loss(out, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # fc_cls sees only the zero-initialised tokens, so at step 0 only its bias gets gradient.
    assert head.fc_cls.bias.grad.abs().sum() > 0
    assert head.audio_token.grad.abs().sum() > 0 and head.visual_token.grad.abs().sum() > 0
    assert head.temporal_attn.audio_gated[0].weight.grad.abs().sum() > 0
    # Every built parameter receives gradient (nothing dead was built).
    dead = [n for n, p in head.named_parameters() if p.grad is None]
    assert dead == []


def test_default_size_forward(default_head: MGNHead) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        out = default_head.predict(*_inputs(2, 1536, 768, 512))
    _check_outputs(out, 2)


@pytest.mark.parametrize("gated_audio", [False, True])
def test_audio_grouping_input_follows_release_quirk(gated_audio: bool) -> None:
    torch.manual_seed(0)
    head = MGNHead(**TINY, gated_audio=gated_audio).eval()
    visual, audio, video_st = _inputs(2, 64, 32, 16)
    seen: list[torch.Tensor] = []
    head.audio_cug.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        head.predict(visual, audio, video_st)
        ungated = head.fc_a(audio)
    # Release (E.4): the audio grouping receives the ungated fc_a output; gated_audio feeds audio'.
    assert torch.equal(seen[0], ungated) != gated_audio


def test_loss_targets_and_clamp() -> None:
    c = 4
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    probs = torch.tensor([[1.0, 0.0, 0.3, 0.7]], requires_grad=True)  # exact 0/1 must not give inf
    out = {
        "video_prob": probs,
        "audio_prob": probs,
        "visual_prob": probs,
        "audio_class_logits": torch.eye(c, requires_grad=True),
        "visual_class_logits": torch.eye(c),
    }
    loss = avvp_loss(out, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(probs.grad).all()
    eps = 1e-7
    p = probs.detach().clamp(eps, 1 - eps)
    bce = torch.nn.functional.binary_cross_entropy
    ce = torch.nn.functional.cross_entropy(torch.eye(c), torch.arange(c))
    expected = 2 * bce(p, labels) + bce(p, 0.9 * labels + 0.05) + 2 * ce
    torch.testing.assert_close(loss.detach(), expected)
    expected_s = 2 * bce(p, labels) + bce(p, 0.8 * labels + 0.1) + 2 * ce
    torch.testing.assert_close(avvp_loss(out, labels, visual_smoothing=0.2).detach(), expected_s)
