"""AVE segment accuracy on hand-made cases, and the AVE loss options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dgsct_cli.schema import build_dataclass
from dgsct_cli.tasks.ave import (
    AVE,
    AVEEvaluator,
    AVELossConfig,
    ave_loss,
    segment_accuracy_counts,
    segment_predictions,
)

CLASSES = ["bell", "speech", "bark"]  # background is index 3
BG = len(CLASSES)
ON, OFF = 6.0, -6.0  # segment logits well above / below sigmoid 0.5


def _outputs(segment_logits, event_logits) -> dict[str, torch.Tensor]:
    return {
        "segment_logits": torch.tensor(segment_logits, dtype=torch.float32),
        "event_logits": torch.tensor(event_logits, dtype=torch.float32),
    }


def _batch(segment_labels) -> dict[str, torch.Tensor]:
    return {"segment_labels": torch.tensor(segment_labels, dtype=torch.long)}


def _evaluate(*batches) -> dict:
    ev = AVEEvaluator(CLASSES)
    for outputs, batch in batches:
        ev.update(outputs, batch)
    return ev.compute()


# -- segment_predictions ----------------------------------------------------------------------------


def test_segment_prediction_is_clip_argmax_where_the_segment_is_on_else_background():
    seg = [[ON, OFF, 0.01, -0.01, 0.0, ON, ON, OFF, OFF, ON], [OFF] * 10]
    event = [[0.1, 2.0, 1.9], [5.0, 0.0, 0.0]]
    pred = segment_predictions(*_outputs(seg, event).values())
    assert pred.shape == (2, 10) and pred.dtype == torch.long
    # sigmoid(0) == 0.5 is not > 0.5: background.
    assert pred[0].tolist() == [1, BG, 1, BG, BG, 1, 1, BG, BG, 1]
    # A clip whose segments are all off is all background, whatever its clip class.
    assert pred[1].tolist() == [BG] * 10


def test_event_class_comes_from_the_clip_level_argmax_not_per_segment():
    # Every "on" segment of a clip gets the one clip class, even where the labels disagree.
    outputs = _outputs([[ON] * 10], [[0.0, 0.5, 3.0]])
    labels = [[2] * 6 + [0] * 4]
    assert segment_predictions(*outputs.values())[0].tolist() == [2] * 10
    m = _evaluate((outputs, _batch(labels)))
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["per_class_accuracy"]["bark"] == pytest.approx(100.0)
    assert m["per_class_accuracy"]["bell"] == pytest.approx(0.0)


# -- AVEEvaluator -----------------------------------------------------------------------------------


def test_background_segments_count_right_on_background_labels_and_wrong_on_event_labels():
    # Clip class 1 (speech). Segments 0-5 on, 6-9 off.
    outputs = _outputs([[ON] * 6 + [OFF] * 4], [[0.0, 1.0, 0.0]])
    labels = [[1, 1, 1, 1, BG, BG, BG, BG, BG, 1]]
    # pred: 1 1 1 1 1 1 BG BG BG BG
    # ok:   y y y y n n y  y  y  n   -> 7/10
    m = _evaluate((outputs, _batch(labels)))
    assert m["accuracy"] == pytest.approx(70.0)
    assert m["num_segments"] == 10
    per = m["per_class_accuracy"]
    assert list(per) == ["bell", "speech", "bark", "background"]
    assert per["speech"] == pytest.approx(80.0)  # 4 of 5 speech segments
    assert per["background"] == pytest.approx(60.0)  # 3 of 5 background segments
    assert per["bell"] is None and per["bark"] is None  # no such labels in the split


def test_all_background_clip_predicted_background_is_fully_correct():
    outputs = _outputs([[OFF] * 10], [[9.0, 0.0, 0.0]])
    m = _evaluate((outputs, _batch([[BG] * 10])))
    assert m["accuracy"] == 100.0 and m["per_class_accuracy"]["background"] == 100.0
    # ... and an event clip predicted all-background is fully wrong.
    m = _evaluate((outputs, _batch([[0] * 10])))
    assert m["accuracy"] == 0.0 and m["per_class_accuracy"]["bell"] == 0.0


def test_accuracy_is_pooled_over_the_split_not_a_mean_of_batch_accuracies():
    # Batch 1: one clip, all 10 segments right.  Batch 2: three clips, all 30 wrong.
    b1 = (_outputs([[ON] * 10], [[3.0, 0.0, 0.0]]), _batch([[0] * 10]))
    b2 = (
        _outputs([[ON] * 10] * 3, [[0.0, 3.0, 0.0]] * 3),
        _batch([[2] * 10, [0] * 10, [BG] * 10]),
    )
    m = _evaluate(b1, b2)
    assert m["num_segments"] == 40
    assert m["accuracy"] == pytest.approx(25.0)  # 10 / 40, not (100 + 0) / 2
    per = m["per_class_accuracy"]
    assert per["bell"] == pytest.approx(50.0)  # 10 of the 20 bell segments
    assert per["bark"] == 0.0 and per["background"] == 0.0 and per["speech"] is None
    # Order and batching do not matter.
    assert _evaluate(b2, b1) == m
    joined = (
        {k: torch.cat([b1[0][k], b2[0][k]]) for k in b1[0]},
        {"segment_labels": torch.cat([b1[1]["segment_labels"], b2[1]["segment_labels"]])},
    )
    assert _evaluate(joined) == m


def test_mixed_batch_per_class_accuracy_including_background():
    outputs = _outputs(
        [
            [OFF, OFF, ON, ON, ON, ON, OFF, OFF, OFF, OFF],
            [ON] * 10,
            [OFF] * 5 + [ON] * 5,
        ],
        [[0.0, 0.0, 4.0], [1.0, 0.0, 0.0], [0.0, 2.0, 1.0]],
    )
    labels = [
        [BG, BG, 2, 2, 2, 2, 2, 2, BG, BG],  # 2 bark missed as background -> 8/10
        [0] * 10,  # 10/10
        [BG, BG, BG, BG, BG, BG, 1, 1, 1, 1],  # segment 5 on but background -> 9/10
    ]
    m = _evaluate((outputs, _batch(labels)))
    assert m["accuracy"] == pytest.approx(100 * 27 / 30)
    per = m["per_class_accuracy"]
    assert per["bell"] == 100.0
    assert per["speech"] == 100.0
    assert per["bark"] == pytest.approx(100 * 4 / 6)
    assert per["background"] == pytest.approx(100 * 9 / 10)
    # The training progress bar's counts agree with the evaluator.
    assert segment_accuracy_counts(outputs, _batch(labels)) == (27, 30)


def test_empty_evaluator_and_explicit_background_index():
    m = AVEEvaluator(CLASSES).compute()
    assert m["accuracy"] == 0.0 and m["num_segments"] == 0
    assert all(v is None for v in m["per_class_accuracy"].values())
    ev = AVEEvaluator(CLASSES, background_index=BG)
    ev.update(_outputs([[OFF] * 10], [[1.0, 0.0, 0.0]]), _batch([[BG] * 10]))
    assert ev.compute()["per_class_accuracy"]["background"] == 100.0


def test_evaluator_is_the_registered_ave_task_metric():
    assert (
        isinstance(AVE.make_evaluator(SimpleNamespace(class_names=["a"], background_index=1)), AVEEvaluator)
        and AVE.selection_metric == "accuracy"
    )
    table = AVE.metrics_table(_evaluate((_outputs([[ON] * 10], [[1.0, 0, 0]]), _batch([[0] * 10]))))
    assert table.row_count == len(CLASSES) + 1


# -- loss options -----------------------------------------------------------------------------------


def _loss_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, t, c = 3, 10, len(CLASSES)
    outputs = {
        "segment_logits": torch.randn(b, t, generator=g, requires_grad=True),
        "event_logits": torch.randn(b, c, generator=g, requires_grad=True),
        "av_score": torch.randn(b, c, generator=g, requires_grad=True),
        "av_gate": torch.rand(b, t, generator=g).requires_grad_(True),
    }
    batch = {
        "segment_labels": torch.tensor([[BG] * 3 + [1] * 7, [0] * 10, [BG] * 8 + [2] * 2]),
        "event_label": torch.tensor([[1], [0], [2]]),
    }
    return outputs, batch


def test_gate_loss_release_and_bce_differ_and_are_finite():
    outputs, batch = _loss_inputs()
    release, parts_r = ave_loss(outputs, batch, AVELossConfig(gate_loss="release"))
    bce, parts_b = ave_loss(outputs, batch, AVELossConfig(gate_loss="bce"))
    assert torch.isfinite(release) and torch.isfinite(bce)
    assert not torch.isclose(release, bce)
    # Only the gate term differs; the total is the sum of the four parts.
    assert parts_r["gate"] != pytest.approx(parts_b["gate"])
    for key in ("segment", "event", "av_score"):
        assert parts_r[key] == pytest.approx(parts_b[key])
    assert release.item() == pytest.approx(sum(parts_r.values()), rel=1e-6)
    assert bce.item() == pytest.approx(sum(parts_b.values()), rel=1e-6)

    is_event = (batch["segment_labels"] != BG).float()
    gate = outputs["av_gate"].detach()
    # release: BCE-with-logits applied to what is already a probability (the release's quirk)
    assert parts_r["gate"] == pytest.approx(float(F.binary_cross_entropy_with_logits(gate, is_event)))
    assert parts_b["gate"] == pytest.approx(float(F.binary_cross_entropy(gate, is_event)))
    assert parts_r["segment"] == pytest.approx(
        float(F.binary_cross_entropy_with_logits(outputs["segment_logits"].detach(), is_event))
    )
    assert parts_r["event"] == pytest.approx(
        float(F.cross_entropy(outputs["event_logits"].detach(), batch["event_label"].view(-1)))
    )

    for loss in (release, bce):
        grads = torch.autograd.grad(loss, list(outputs.values()))
        assert all(torch.isfinite(g).all() for g in grads)


def test_bce_gate_loss_stays_finite_on_saturated_gates():
    outputs, batch = _loss_inputs(1)
    with torch.no_grad():
        outputs["av_gate"].copy_((batch["segment_labels"] == BG).float())  # exactly 0/1, all wrong
    loss, parts = ave_loss(outputs, batch, AVELossConfig(gate_loss="bce"))
    assert torch.isfinite(loss) and parts["gate"] > 10
    (grad,) = torch.autograd.grad(loss, outputs["av_gate"])
    assert torch.isfinite(grad).all()


def test_unknown_gate_loss_is_refused():
    with pytest.raises(
        ValueError, match=r"loss\.gate_loss: 'mse' is out of range \(allowed: one of 'release', 'bce'\)"
    ):
        build_dataclass(AVELossConfig, {"gate_loss": "mse"}, "loss")
