"""AVS metrics exactly as the release computes them (release AVS/avs_scripts/avs_s4/utils/utility.py:45-118,
test.py:107-145; the MS3 copy is identical).

- ``mask_iou`` (M_J) per batch of frames: prediction ``sigmoid(logit) > 0.5``; a frame whose
  ground truth is empty scores the fraction of pixels correctly left empty; the batch value is the
  mean over its frames, in float32.
- ``f_measure`` (M_F) per batch: for each frame with a non-empty ground truth and each of 255
  thresholds ``linspace(0, 1 - 1e-10, 255)`` (float32; the last one is exactly 1.0), precision and
  recall of ``sigmoid(logit) >= threshold``, ``F = 1.3 P R / (0.3 P + R)`` (beta^2 = 0.3, NaN -> 0);
  the curve is averaged over the batch's frames and its maximum taken. A batch without any
  non-empty ground truth scores 0 (and still counts).
- The split's M_J and M_F are the means over batches of 4 videos in CSV order (``test.sh``'s
  ``--test_batch_size 4``): M_J summed in float32 tensors, M_F in Python floats. The grouping
  matters for M_F (and for M_J when the last batch is short).

Counting ``>= threshold`` pixels by sorting instead of 255 full passes gives the same float32
numbers: every count is an integer below 2^24, so the release's float32 sums are exact.
"""

from __future__ import annotations

import torch

__all__ = ["NUM_THRESHOLDS", "VIDEOS_PER_BATCH", "f_measure", "f_measure_curve", "mask_iou", "thresholds"]

NUM_THRESHOLDS = 255
BETA2 = 0.3
VIDEOS_PER_BATCH = 4


def _check(logits: torch.Tensor, gt: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape != gt.shape:
        raise ValueError(
            f"AVS metrics take logits and masks of the same shape [N, H, W], got {list(logits.shape)} "
            f"and {list(gt.shape)}"
        )


def mask_iou(logits: torch.Tensor, gt: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The release's ``mask_iou``: mean IoU of the frames ``[N, H, W]`` (0-dim float32)."""
    _check(logits, gt)
    gt = gt.float()
    n, pixels = logits.shape[0], logits.shape[-1] * logits.shape[-2]
    empty = gt.sum(2).sum(1) == 0
    pred = (torch.sigmoid(logits.float()) > 0.5).int()
    inter = (pred * gt).sum(2).sum(1)
    union = torch.max(pred, gt).sum(2).sum(1)
    inter_empty = ((1 - gt) * (1 - pred)).sum(2).sum(1)
    inter[empty] = inter_empty[empty]
    union[empty] = pixels
    return torch.sum(inter / (union + eps)) / n


def thresholds(num: int = NUM_THRESHOLDS) -> torch.Tensor:
    """The release's thresholds, built on the CPU in float32."""
    return torch.linspace(0, 1 - 1e-10, num)


def _frame_curve(prob: torch.Tensor, gt: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
    """F curve of one frame (the release's ``_eval_pr`` and F formula), float32 ``[num]``."""
    order = torch.argsort(prob.reshape(-1))
    sorted_prob = prob.reshape(-1)[order]
    sorted_gt = gt.reshape(-1)[order].double()
    total = sorted_prob.numel()
    first = torch.searchsorted(sorted_prob, th, right=False)  # first pixel >= threshold
    predicted = (total - first).float()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_gt, 0)])
    tp = (cum[-1] - cum[first]).float()
    positives = gt.float().sum()
    prec = tp / (predicted + 1e-20)
    recall = tp / (positives + 1e-20)
    f = (1 + BETA2) * prec * recall / (BETA2 * prec + recall)
    f[f != f] = 0  # NaN (nothing predicted and recall 0) -> 0
    return f


def f_measure_curve(logits: torch.Tensor, gt: torch.Tensor, num: int = NUM_THRESHOLDS) -> torch.Tensor | None:
    """The batch-averaged F curve ``[num]`` (float32) over frames with a non-empty ground truth;
    None when there is none."""
    _check(logits, gt)
    prob = torch.sigmoid(logits.float())
    gt = gt.float()
    th = thresholds(num)
    total, count = None, 0
    for i in range(prob.shape[0]):
        if torch.mean(gt[i]) == 0.0:  # empty ground truth: left out (utility.py:106-108)
            continue
        curve = _frame_curve(prob[i], gt[i], th)
        total = curve if total is None else total + curve  # float32 running sum, frame order
        count += 1
    return None if total is None else total / count


def f_measure(logits: torch.Tensor, gt: torch.Tensor, num: int = NUM_THRESHOLDS) -> float:
    """The release's ``Eval_Fmeasure``: max over thresholds of the batch-averaged F curve."""
    curve = f_measure_curve(logits, gt, num)
    return 0.0 if curve is None else curve.max().item()
