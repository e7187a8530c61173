"""The prepared cache's description: ``manifest.json`` (build, validate, write) and the read side.

Layout of a cache directory::

    manifest.json            what is in the cache (see ``validate_manifest``)
    frames/<video_id>.npy    uint8   [S, H, W, 3]
    audio/<video_id>.npy     float32 [S * sample_rate]  (mono)
    <kind>/<video_id>.npy    float32, any fixed shape: one folder per name in the manifest's
                             optional ``extra_arrays`` (e.g. AVVP's ``video_st`` [S, 512])

Every file is written atomically (temp file in the same directory, then ``os.replace``), so an
interrupted ``prepare`` leaves either a complete file or none; stray temp files are removed by the
next run. Training reads the arrays memory-mapped; nothing is decoded per sample.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import TMP_PREFIX, atomic_write_bytes, atomic_write_json

__all__ = [
    "npy_problem",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "TMP_PREFIX",
    "PreparedCache",
    "array_path",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "build_manifest",
    "label_names",
    "remove_stale_temp_files",
    "valid_video_id",
    "validate_manifest",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_RESERVED_ITEM_KEYS = frozenset({"frames", "audio", "index"})
# Array kinds become folder names and item keys: keep them plain identifiers.
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# --------------------------------------------------------------------------- atomic writes


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` ``array`` to ``path`` (exact name, no ``.npy`` appended) atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def npy_problem(exc: BaseException) -> str:
    """What is wrong with a ``.npy`` file NumPy could not load, in a few words (never NumPy's
    advice to load it with ``allow_pickle=True``, which would run code from the file)."""
    text = " ".join(str(exc).split())
    if "allow_pickle" in text or "Python objects" in text or "pickle" in text.lower():
        return "it holds pickled Python objects, not a plain array"
    if "mmap length is greater than file size" in text or "cannot reshape" in text:
        return "it is shorter than its header says (cut short)"
    return text[:120] or type(exc).__name__


def _is_numeric_nest(value: Any) -> bool:
    """A list of numbers, or a list of such lists (any depth)."""
    if not isinstance(value, list):
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or all(
        _is_numeric_nest(v) for v in value
    )


def _json_text(obj: Any, depth: int = 0) -> str:
    if isinstance(obj, list) and obj and _is_numeric_nest(obj):
        return json.dumps(obj, separators=(",", ":"))
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(obj, dict) and obj:
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_json_text(v, depth + 1)}"
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj:
        return "[\n" + ",\n".join(inner + _json_text(v, depth + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_manifest(path: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write a manifest atomically as indented JSON with every numeric list on one line.

    Plain ``indent=2`` puts each number on its own line; dense per-segment targets such as
    AVVP's ``[10][25]`` ground truth would then make a multi-megabyte file of mostly spaces.
    """
    data = (_json_text(dict(manifest)) + "\n").encode("utf-8")
    return write_if_changed(path, data)


def write_if_changed(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically unless ``path`` already holds exactly it (a complete cache on a
    read-only disk is left alone)."""
    path = Path(path)
    try:
        if path.read_bytes() == data:
            return path
    except OSError:
        pass
    return atomic_write_bytes(path, data)


def remove_stale_temp_files(directory: str | Path, extra_kinds: Iterable[str] = ()) -> int:
    """Delete temp files left in ``directory`` and its ``frames``/``audio`` (and ``extra_kinds``)
    folders by an interrupted run; returns how many were removed. Not safe while another run
    writes there."""
    removed = 0
    root = Path(directory)
    for folder in (root, root / "frames", root / "audio", *(root / k for k in extra_kinds)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


# --------------------------------------------------------------------------- per-video arrays


# Video ids become file names ("<id>.npy", at most 255 bytes on common file systems).
MAX_VIDEO_ID_BYTES = 200


def valid_video_id(video_id: str) -> bool:
    """Whether ``video_id`` can name a cache file: not empty, no path separators or leading dot,
    no whitespace or NUL, and short enough."""
    return (
        bool(video_id)
        and not any(c.isspace() or c in "/\\\0" for c in video_id)
        and not video_id.startswith(".")
        and len(video_id.encode("utf-8", "surrogatepass")) <= MAX_VIDEO_ID_BYTES
    )


def frames_kind(size: int) -> str:
    """The cache folder of the frames at another size (``frames_224``)."""
    return f"frames_{size}"


def array_path(cache_dir: str | Path, kind: str, video_id: str) -> Path:
    """``<cache_dir>/<kind>/<video_id>.npy`` for ``kind`` ``frames``, ``audio`` or an extra array."""
    if not _KIND_RE.fullmatch(kind) or kind == "index":
        raise ValueError(
            f"unknown array kind {kind!r} (expected 'frames', 'audio' or an extra array name "
            "made of letters, digits and '_')"
        )
    # Video ids become file names: refuse anything that could escape the folder or hide the file.
    if not valid_video_id(video_id):
        raise ValueError(f"video id {video_id[:60]!r} cannot be used as a file name")
    return Path(cache_dir) / kind / f"{video_id}.npy"


# --------------------------------------------------------------------------- manifest


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _numeric_shape(values: Any) -> tuple[int, ...] | None:
    """Shape of a list of finite numbers or of a rectangular nest of them; None otherwise."""
    if not isinstance(values, list):
        return None
    if all(_is_number(v) for v in values):
        return (len(values),)
    inner = {_numeric_shape(v) for v in values}
    if len(inner) != 1 or None in inner:
        return None  # ragged, or something that is not a number
    return (len(values), *inner.pop())


def validate_manifest(manifest: Any, where: str = MANIFEST_NAME) -> dict[str, Any]:
    """Check a manifest's structure; raises ``ValueError('<where>: <problem>')``."""
    if not isinstance(manifest, dict):
        raise _fail(where, "expected a JSON object at the top level")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(
            where,
            f"format_version {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION});"
            " re-run 'dgsct prepare'",
        )
    for key in ("dataset", "created_by"):
        if not isinstance(manifest.get(key), str):
            raise _fail(where, f"'{key}' must be a string")
    for key in ("num_segments", "image_size", "sample_rate"):
        if not _is_int(manifest.get(key)) or manifest[key] <= 0:
            raise _fail(where, f"'{key}' must be a positive integer, got {manifest.get(key)!r}")
    names = manifest.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail(where, "'class_names' must be a list of strings")
    bg = manifest.get("background_index", "absent")
    if bg is not None and not _is_int(bg):
        raise _fail(where, f"'background_index' must be an integer or null, got {bg!r}")
    # Optional: caches written before extra arrays existed (AVE) simply have none.
    extra = manifest.get("extra_arrays", [])
    if (
        not isinstance(extra, list)
        or not all(isinstance(k, str) and _KIND_RE.fullmatch(k) for k in extra)
        or len(set(extra)) != len(extra)
    ):
        raise _fail(where, f"'extra_arrays' must be a list of distinct array names, got {extra!r}")
    sizes = manifest.get("frame_sizes", [])
    if not isinstance(sizes, list) or not all(_is_int(s) and s > 0 for s in sizes):
        raise _fail(where, f"'frame_sizes' must be a list of positive integers, got {sizes!r}")
    if set(extra) & _RESERVED_ITEM_KEYS:
        raise _fail(where, f"'extra_arrays' may not use the reserved names {sorted(_RESERVED_ITEM_KEYS)}")
    taken = _RESERVED_ITEM_KEYS | set(extra)

    samples = manifest.get("samples")
    if not isinstance(samples, list):
        raise _fail(where, "'samples' must be a list")
    seen: set[str] = set()
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise _fail(where, f"samples[{i}] must be an object")
        for key in ("id", "video_id", "split"):
            if not isinstance(sample.get(key), str) or not sample[key]:
                raise _fail(where, f"samples[{i}] needs a non-empty string '{key}'")
        if sample["id"] in seen:
            raise _fail(where, f"samples[{i}]: duplicate sample id {sample['id']!r}")
        seen.add(sample["id"])
        targets = sample.get("targets")
        if not isinstance(targets, dict):
            raise _fail(where, f"samples[{i}] needs a 'targets' object")
        for name, values in targets.items():
            if name in taken:
                raise _fail(where, f"samples[{i}]: target name {name!r} is reserved")
            if _numeric_shape(values) is None:
                raise _fail(
                    where,
                    f"samples[{i}]: target {name!r} must be a list of numbers "
                    "or a rectangular nested list of numbers",
                )

    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise _fail(where, "'splits' must be an object (split name -> sample indices)")
    for split, indices in splits.items():
        if not isinstance(indices, list) or not all(_is_int(j) and 0 <= j < len(samples) for j in indices):
            raise _fail(where, f"splits[{split!r}] must list sample indices in 0..{len(samples) - 1}")
    skipped = manifest.get("skipped")
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and isinstance(s.get("video_id"), str) and isinstance(s.get("reason"), str)
        for s in skipped
    ):
        raise _fail(where, "'skipped' must be a list of {video_id, reason, splits} objects")
    return manifest


def build_manifest(
    *,
    dataset: str,
    num_segments: int,
    image_size: int,
    sample_rate: int,
    class_names: Sequence[str],
    background_index: int | None,
    samples: Iterable[Mapping[str, Any]],
    split_names: Sequence[str],
    skipped: Iterable[Mapping[str, Any]],
    created_by: str,
    extra_arrays: Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
    frame_sizes: Sequence[int] = (),
) -> dict[str, Any]:
    """Assemble and validate a manifest; ``samples`` are the usable ones only, and ``splits``
    is derived from each sample's ``split`` (every name in ``split_names`` is present).

    ``extra_arrays`` names per-video arrays stored as ``<kind>/<video_id>.npy`` (returned by
    ``SegmentDataset`` under that name); ``info`` is free-form provenance; ``frame_sizes`` lists
    other sizes the frames are also stored at (``frames_<size>/<video_id>.npy``, uint8). These
    keys are left out when empty, so manifests without them read exactly as before.
    """
    sample_list = [dict(s) for s in samples]
    splits: dict[str, list[int]] = {name: [] for name in split_names}
    for i, sample in enumerate(sample_list):
        if sample["split"] not in splits:
            raise ValueError(
                f"sample {sample['id']!r} has split {sample['split']!r} not in {list(split_names)}"
            )
        splits[sample["split"]].append(i)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "num_segments": num_segments,
        "image_size": image_size,
        "sample_rate": sample_rate,
        "class_names": list(class_names),
        "background_index": background_index,
        "samples": sample_list,
        "splits": splits,
        "skipped": [dict(s) for s in skipped],
        "created_by": created_by,
    }
    if extra_arrays:
        manifest["extra_arrays"] = list(extra_arrays)
    if info:
        manifest["info"] = dict(info)
    if frame_sizes:
        manifest["frame_sizes"] = sorted({int(s) for s in frame_sizes})
    return validate_manifest(manifest, "manifest")


# --------------------------------------------------------------------------- reading


def label_names(class_names: Sequence[str], background_index: int | None) -> list[str]:
    """Names of the segment labels: the classes, then ``background`` when it is the next index."""
    extra = ["background"] if background_index is not None and background_index == len(class_names) else []
    return [*class_names, *extra]


class PreparedCache:
    """A validated prepared cache directory (read side)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ValueError(
                f"{manifest_path}: not found; run 'dgsct prepare ...' first "
                f"(e.g. 'dgsct prepare ave --root <AVE folder> --out {self.path}')"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{manifest_path}: cannot be read as JSON ({exc})") from exc
        self.manifest: dict[str, Any] = validate_manifest(manifest, str(manifest_path))

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def background_index(self) -> int | None:
        return self.manifest["background_index"]

    @property
    def num_segments(self) -> int:
        return self.manifest["num_segments"]

    @property
    def image_size(self) -> int:
        return self.manifest["image_size"]

    @property
    def sample_rate(self) -> int:
        return self.manifest["sample_rate"]

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.manifest["samples"]

    @property
    def splits(self) -> dict[str, list[int]]:
        return self.manifest["splits"]

    @property
    def extra_arrays(self) -> list[str]:
        """Names of the extra per-video arrays (``<kind>/<video_id>.npy``); empty for AVE."""
        return list(self.manifest.get("extra_arrays", []))

    @property
    def frame_sizes(self) -> list[int]:
        """Other sizes the frames are stored at (``frames_<size>/``); empty for most caches."""
        return list(self.manifest.get("frame_sizes", []))

    def split_indices(self, split: str) -> list[int]:
        """Sample indices (into ``samples``) of ``split``."""
        if split not in self.splits:
            available = ", ".join(repr(s) for s in self.splits) or "none"
            raise ValueError(f"{self.path}: unknown split {split!r}; available splits: {available}")
        return list(self.splits[split])

    def _load(self, kind: str, video_id: str) -> np.ndarray:
        path = array_path(self.path, kind, video_id)
        if not path.is_file():
            raise ValueError(f"{path}: missing from the cache; re-run 'dgsct prepare' to restore it")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{path}: damaged cache file of video {video_id} ({npy_problem(exc)}); re-run "
                "'dgsct prepare' on this folder to rewrite it"
            ) from None

    def frames(self, video_id: str, size: int | None = None) -> np.ndarray:
        """Memory-mapped uint8 ``[S, H, W, 3]``; with ``size`` (one of ``frame_sizes``), the set
        decoded at that size (``prepare --extra-size``)."""
        if size is None or size == self.image_size:
            return self._load("frames", video_id)
        if size not in self.frame_sizes:
            raise ValueError(f"{self.path}: no {size}-px frames in this cache (it has: {self.frame_sizes})")
        return self._load(frames_kind(size), video_id)

    def audio(self, video_id: str) -> np.ndarray:
        """Memory-mapped float32 ``[S * sample_rate]``."""
        return self._load("audio", video_id)

    def array(self, kind: str, video_id: str) -> np.ndarray:
        """Memory-mapped extra array ``kind`` (one of ``extra_arrays``) of ``video_id``."""
        if kind not in self.extra_arrays:
            listed = ", ".join(repr(k) for k in self.extra_arrays) or "none"
            raise ValueError(f"{self.path}: no extra array {kind!r} in this cache (it has: {listed})")
        return self._load(kind, video_id)
