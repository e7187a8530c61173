"""Few-shot data: the K-shot training subset and the datasets the CLIP + CLAP tasks read.

K-shot rule (few-shot/dataloader.py:111-170): walk the training list in file order, keep the first
K samples of each class, and list them class by class in class order (the release's dataset
order). For LLP a video with more than one label is skipped, so classes without a single-label
training video (Speech) are absent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .datasets import SegmentDataset, _target_tensor
from .manifest import PreparedCache

__all__ = ["FewShotDataset", "kshot_indices", "kshot_per_class", "sample_classes", "short_classes_warning"]

log = logging.getLogger(__name__)


def kshot_indices(
    classes: Sequence[Sequence[int]], shots: int, num_classes: int, single_label_only: bool = False
) -> list[int]:
    """Indices of the K-shot subset: for each class in order, the first ``shots`` positions whose
    class set contains it (``single_label_only``: only positions with exactly one class count)."""
    return [i for chosen in kshot_per_class(classes, shots, num_classes, single_label_only) for i in chosen]


def kshot_per_class(
    classes: Sequence[Sequence[int]], shots: int, num_classes: int, single_label_only: bool = False
) -> list[list[int]]:
    """The K-shot subset class by class (see :func:`kshot_indices`)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, labels in enumerate(classes):
        labels = list(labels)
        if single_label_only and len(labels) != 1:
            continue
        for c in labels:
            if not 0 <= c < num_classes:
                raise ValueError(f"sample {i}: class {c} outside 0..{num_classes - 1}")
            if len(per_class[c]) < shots:
                per_class[c].append(i)
    return per_class


def short_classes_warning(per_class: list[list[int]], shots: int, names: Sequence[str]) -> str | None:
    """One line when classes that have training samples have fewer than ``shots`` of them (the
    run then trains on what exists); None when every such class has ``shots``."""
    counts = [len(c) for c in per_class]
    short = [i for i, n in enumerate(counts) if 0 < n < shots]
    if not short:
        return None
    smallest = min(short, key=lambda i: counts[i])
    empty = sum(1 for n in counts if n == 0)
    return (
        f"data.shots={shots}: {len(short)} of {len(counts)} classes have fewer training samples "
        f"(fewest: {names[smallest] if smallest < len(names) else smallest!r} with {counts[smallest]}"
        + (f"; {empty} have none" if empty else "")
        + f"); training on the {sum(counts)} samples there are"
    )


def sample_classes(sample: dict[str, Any], background_index: int | None) -> list[int]:
    """The classes a cached sample belongs to: AVE-style ``event_label``, multi-hot ``labels``,
    or the foreground classes of ``segment_labels``."""
    targets = sample["targets"]
    if "event_label" in targets:
        return [int(v) for v in targets["event_label"]]
    if "labels" in targets:
        return [i for i, v in enumerate(targets["labels"]) if v > 0]
    if "segment_labels" in targets:
        return sorted({int(v) for v in targets["segment_labels"] if v != background_index})
    raise ValueError(f"sample {sample.get('id')!r}: no class targets (event_label, labels or segment_labels)")


class FewShotDataset(SegmentDataset):
    """A :class:`SegmentDataset` over a subset of a split (``indices`` into it), with only the
    named ``targets`` and no extra arrays (the CLIP + CLAP model reads frames and audio only).

    Frames: the cache's own when they are already ``image_size``; else the cache's
    ``frames_<image_size>`` set when it has one (decoded from the videos with the same rule);
    else the cached frames resized bicubically without antialias (as the release's loader does).
    """

    def __init__(
        self,
        cache: PreparedCache,
        split: str,
        image_size: int,
        sample_rate: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        indices: Sequence[int] | None = None,
        targets: Sequence[str] = (),
        segment_tiling: int = 10,
    ) -> None:
        super().__init__(cache, split, image_size, segment_tiling, sample_rate, mean=mean, std=std)
        if indices is not None:
            self.manifest_indices = [self.manifest_indices[i] for i in indices]
            self.samples = [cache.samples[i] for i in self.manifest_indices]
            self.sample_ids = [s["id"] for s in self.samples]
        self.targets = tuple(targets)
        self.extra_arrays = []
        if image_size != cache.image_size:
            if image_size in cache.frame_sizes:
                self.frame_set_size = image_size
            else:
                log.warning(
                    "%s: frames are %d px and the cache has no %d-px set: resizing the cached frames "
                    "(prepare with --extra-size %d to resize from the videos, as the release does)",
                    cache.path,
                    cache.image_size,
                    image_size,
                    image_size,
                )

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if self.background_index is not None:
            item["background_index"] = self.background_index  # the segment label meaning "no event"
        return item

    def _targets(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Only the named targets; a sample without one of them is an error."""
        item = {}
        for name in self.targets:
            if name not in sample["targets"]:
                raise ValueError(f"{self.cache.path}: sample {sample['id']!r} has no target {name!r}")
            item[name] = _target_tensor(sample["targets"][name])
        return item
