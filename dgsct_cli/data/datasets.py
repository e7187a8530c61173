"""Datasets over a prepared cache, and the DataLoader every loop uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .manifest import PreparedCache, _is_int

__all__ = ["SegmentDataset", "frames_to_tensor", "make_loader", "tiled_segments"]


def _target_tensor(values: list) -> torch.Tensor:
    if values and isinstance(values[0], list):
        # Nested (e.g. [T][C] ground truth): same dtype rule over all leaves.
        tensor = torch.tensor(values)
        return tensor.float() if tensor.is_floating_point() else tensor.long()
    if all(_is_int(v) for v in values):
        return torch.tensor(values, dtype=torch.long)
    return torch.tensor(values, dtype=torch.float32)


def frames_to_tensor(
    frames: np.ndarray, image_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 ``[S, H, W, 3]`` frames (writable) -> normalised float32 ``[S, 3, size, size]``:
    /255, bicubic resize of the float tensor when the size differs (no antialias, no clamp, as
    the release), then ``(x - mean) / std`` with ``[1, 3, 1, 1]`` statistics."""
    # .float() makes the one float copy and the arithmetic below works in place on it.
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=False
        )
    return x.sub_(mean).div_(std)


def tiled_segments(wave: torch.Tensor, num_segments: int, sample_rate: int, tiling: int) -> torch.Tensor:
    """Mono audio -> ``[num_segments, sample_rate * tiling]``: each 1-s segment repeated back to
    back ``tiling`` times (the release's input to HTS-AT)."""
    length = num_segments * sample_rate
    if wave.shape[0] < length:  # resampling can round a few samples away
        wave = F.pad(wave, (0, length - wave.shape[0]))
    segments = wave[:length].reshape(num_segments, sample_rate)
    # [a b c] -> [a b c a b c ...]: each row is its own second repeated (np.tile per row).
    return segments.repeat(1, tiling)


class SegmentDataset(Dataset):
    """One item per sample of ``split``: normalised frames, tiled audio segments and targets.

    Item keys: ``frames`` float32 ``[S, 3, H, W]``; ``audio`` float32
    ``[S, sample_rate * segment_tiling]`` (each 1-s segment repeated back to back, the release's
    tiling); ``index`` (position in this dataset; ``sample_ids[index]`` names it); one float32
    tensor per name in the manifest's ``extra_arrays`` (e.g. ``video_st`` ``[S, 512]``); and one
    tensor per target of the sample, shaped like its (possibly nested) list (long when all values
    are ints, else float32). ``mean``/``std``: the visual tower's per-channel statistics (its
    encoder family's ``normalization``).
    """

    def __init__(
        self,
        cache: PreparedCache,
        split: str,
        image_size: int | None = None,
        segment_tiling: int = 10,
        sample_rate: int | None = None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if segment_tiling < 1:
            raise ValueError(f"segment_tiling must be >= 1, got {segment_tiling}")
        self.cache = cache
        self.split = split
        self.manifest_indices = cache.split_indices(split)
        self.samples = [cache.samples[i] for i in self.manifest_indices]
        self.sample_ids: list[str] = [s["id"] for s in self.samples]
        self.class_names = cache.class_names
        self.background_index = cache.background_index
        self.num_segments = cache.num_segments
        self.image_size = image_size or cache.image_size
        self.sample_rate = sample_rate or cache.sample_rate
        self.segment_tiling = segment_tiling
        self.extra_arrays = cache.extra_arrays
        self.frame_set_size: int | None = None  # read the cache's frames_<size> set instead (few-shot)
        # The visual tower's statistics (its encoder family says which; ImageNet's by default).
        self._mean = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _frames(self, video_id: str) -> torch.Tensor:
        frames = np.array(self.cache.frames(video_id, self.frame_set_size))
        return frames_to_tensor(frames, self.image_size, self._mean, self._std)

    def _audio(self, video_id: str) -> torch.Tensor:
        wave = torch.from_numpy(np.array(self.cache.audio(video_id), dtype=np.float32))
        if self.sample_rate != self.cache.sample_rate:
            import torchaudio.functional as AF  # only needed when resampling

            wave = AF.resample(wave, self.cache.sample_rate, self.sample_rate)
        return tiled_segments(wave, self.num_segments, self.sample_rate, self.segment_tiling)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        item: dict[str, Any] = {
            "frames": self._frames(sample["video_id"]),
            "audio": self._audio(sample["video_id"]),
            "index": i,
        }
        for kind in self.extra_arrays:
            item[kind] = torch.from_numpy(
                np.array(self.cache.array(kind, sample["video_id"]), dtype=np.float32)
            )
        item.update(self._targets(sample))
        return item

    def _targets(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The sample's targets as tensors (all of them)."""
        return {name: _target_tensor(values) for name, values in sample["targets"].items()}


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    sampler=None,
    generator=None,
    worker_init_fn=None,
) -> DataLoader:
    """The DataLoader of every loop: pinned memory on GPU, a few batches prefetched per worker,
    never more workers than usable cores."""
    from ..runtime import loader_workers

    num_workers = loader_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=generator,
        worker_init_fn=worker_init_fn,
        prefetch_factor=4 if num_workers > 0 else None,
    )
