"""AVS metrics against the release's own mask_iou / Eval_Fmeasure (tests/fixtures/release/avs/metrics.pt),
to float drift (METRIC_TOL), and the test.py batching (groups of 4 videos in CSV order, whatever the loader's batch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import EXCERPTS, assert_regenerated, excerpt

from dgsct_cli.tasks.avs import AVSEvaluator
from dgsct_cli.tasks.avs_metrics import f_measure, f_measure_curve, mask_iou, thresholds

HERE = Path(__file__).resolve().parent / "fixtures" / "release" / "avs"
# Means of per-frame ratios: their last bits depend on the CPU's summation order (measured drift and
# the choice in tests/fixtures/README.md). One pixel more or less in a 224 x 224 frame moves a
# frame's IoU by >= 2e-5 and a split's mean by >= 4e-7.
METRIC_TOL = {"rtol": 1e-6, "atol": 1e-8}


def _close(got, want) -> None:
    got = torch.as_tensor(got, dtype=torch.float64)
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=torch.float64), **METRIC_TOL)


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(HERE / "metrics.pt", weights_only=True)["s4"]


def make_inputs():
    spec = importlib.util.spec_from_file_location("avs_make_inputs", HERE / "make_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def split(ref):
    gt, logits = make_inputs().split_inputs(seed=2024)
    assert_regenerated(excerpt(gt), EXCERPTS["avs/metrics.pt:gt"])
    assert_regenerated(excerpt(logits), EXCERPTS["avs/metrics.pt:logits"])
    return gt, logits


def test_thresholds_are_the_release_ones(ref):
    th = thresholds()
    _close(th, ref["thresholds_cpu"])
    assert th[-1].item() == 1.0


@pytest.mark.parametrize(
    "case",
    [
        "all_empty_pred",
        "all_empty_gt",
        "perfect",
        "partial_overlap",
        "random_logits",
        "edge_values",
        "single_nonempty_frame",
        "all_empty_gt_all_empty_pred",
    ],
)
def test_hand_made_batches_match_the_release(ref, case):
    c = ref["hand"][case]
    logits, gt = c["pred_logits"], c["gt"].float()
    iou = mask_iou(logits, gt)
    assert iou.dtype == torch.float32
    _close(iou, c["miou"])
    _close(f_measure(logits, gt), c["F"])
    curve = f_measure_curve(logits, gt)
    if curve is None:  # no frame with a mask: F = 0
        assert c["F"] == 0.0
    else:
        _close(curve, c["F_curve"])
    per_frame = torch.stack([mask_iou(logits[i : i + 1], gt[i : i + 1]) for i in range(len(gt))])
    _close(per_frame, c["per_frame_iou"])


def test_empty_truth_scores_the_pixels_left_empty():
    gt = torch.zeros(1, 4, 4)
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0  # 2 of 16 pixels wrongly predicted
    assert mask_iou(logits, gt).item() == pytest.approx(14 / 16, abs=1e-6)
    assert f_measure(logits, gt) == 0.0  # no frame with a mask: left out of F, the batch scores 0


def _feed(evaluator: AVSEvaluator, gt: torch.Tensor, logits: torch.Tensor, batch: int) -> dict:
    videos = gt.shape[0] // 5
    for start in range(0, videos, batch):
        stop = min(start + batch, videos)
        masks = gt[start * 5 : stop * 5].view(stop - start, 5, *gt.shape[-2:])
        out = {"mask_logits": logits[start * 5 : stop * 5].unsqueeze(1)}
        evaluator.update(out, {"masks": masks, "mask_valid": torch.ones(stop - start, 5)})
    return evaluator.compute()


@pytest.mark.parametrize("loader_batch", [1, 3, 4])
def test_split_is_scored_in_batches_of_four_videos_whatever_the_loader(ref, split, loader_batch):
    gt, logits = split
    bs4 = ref["split_test_bs4"]
    evaluator = AVSEvaluator()
    metrics = _feed(evaluator, gt, logits, loader_batch)
    _close([b["miou"] for b in evaluator.per_batch], bs4["batch_miou"])
    _close([b["fscore"] for b in evaluator.per_batch], bs4["batch_F"])
    assert bs4["final_miou_item"] == bs4["final_miou_f32"].item()
    _close(metrics["miou_fraction"], bs4["final_miou_item"])
    _close(metrics["fscore_fraction"], bs4["final_F"])
    # Batch 3 holds video 8 alone, whose masks are all empty: F = 0, and it still counts.
    assert evaluator.per_batch[-1]["fscore"] == 0.0 and metrics["num_batches"] == 3
    assert metrics["miou"] == pytest.approx(100 * bs4["final_miou_item"])
    assert metrics["fscore"] == pytest.approx(100 * bs4["final_F"])


def test_train_time_validation_grouping_one_video(ref, split):
    gt, logits = split
    bs1 = ref["split_val_bs1"]
    metrics = _feed(AVSEvaluator(videos_per_batch=1), gt, logits, 2)
    _close(metrics["miou_fraction"], bs1["final_miou_item"])
    _close(metrics["fscore_fraction"], bs1["final_F"])


def test_a_split_with_first_frame_masks_only_is_refused():
    evaluator = AVSEvaluator()
    batch = {"masks": torch.zeros(1, 5, 8, 8), "mask_valid": torch.tensor([[1, 0, 0, 0, 0]])}
    with pytest.raises(ValueError, match="first frame's .*use val or test"):
        evaluator.update({"mask_logits": torch.zeros(5, 1, 8, 8)}, batch)


def test_mismatched_shapes_are_reported():
    with pytest.raises(ValueError, match=r"same shape \[N, H, W\]"):
        mask_iou(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
