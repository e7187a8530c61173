"""The files a delta checkpoint rebuilds its frozen encoders from, and a check that they are still
the files it was trained with.

A training run records, once at its start, each encoder file the recipe names (``model.<tower>.
weights``, the text tokenizer folder): its path, size and a fast hash. A delta checkpoint (and a
resumed run) compares the files the recipe names now with the record and refuses a different one
with one line naming it, unless the user accepts changed files knowingly
(``--accept-changed-encoders``, or :func:`accepting_changed_encoders`).

The hash is SHA-256 over the size and 32 blocks of 256 KiB read at evenly spaced offsets (the
whole file when it is under 8 MiB): a few milliseconds for a 2 GB file, and any other weight file
differs in the blocks read. It is not a check against a single flipped byte (the checkpoint's own
tensors carry a full checksum).

Nothing here imports torch: the command line sets the switch before any heavy import.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ACCEPT_OPTION",
    "ChangedEncoderFile",
    "accepting_changed_encoders",
    "check_encoder_files",
    "encoder_files",
    "file_fingerprint",
]

log = logging.getLogger(__name__)

ACCEPT_OPTION = "--accept-changed-encoders"
_BLOCKS = 32
_BLOCK = 256 * 1024
_STATE = {"accept": False}


class ChangedEncoderFile(ValueError):
    """An encoder file is not the one the checkpoint (or run) was trained with."""


@contextmanager
def accepting_changed_encoders(accept: bool = True) -> Iterator[None]:
    """Within the block, a changed encoder file is used with a warning instead of refused."""
    before = _STATE["accept"]
    _STATE["accept"] = accept
    try:
        yield
    finally:
        _STATE["accept"] = before


def _file_digest(path: Path, digest: Any) -> int:
    size = path.stat().st_size
    digest.update(f"{size}|".encode())
    with open(path, "rb") as fh:
        if size <= _BLOCKS * _BLOCK:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            return size
        for i in range(_BLOCKS):  # the first and the last block (up to the last byte) included
            fh.seek(i * (size - _BLOCK) // (_BLOCKS - 1))
            digest.update(fh.read(_BLOCK))
    return size


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"size", "hash"}`` of a file, or of a folder's files (a tokenizer folder)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        size = 0
        for entry in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f"{entry.name}|".encode())
            size += _file_digest(entry, digest)
    else:
        size = _file_digest(path, digest)
    return {"size": size, "hash": digest.hexdigest()}


def _named_files(model_cfg: Any) -> Iterator[tuple[str, Path]]:
    """(recipe key, path) of every encoder file or folder the model config names that exists."""
    for section in ("visual", "audio", "text"):
        cfg = getattr(model_cfg, section, None)
        for attr in ("weights", "tokenizer"):
            value = getattr(cfg, attr, None)
            if isinstance(value, str) and value not in ("", "hub") and Path(value).exists():
                yield f"model.{section}.{attr}", Path(value)


def encoder_files(model_cfg: Any) -> dict[str, dict[str, Any]]:
    """``{recipe key: {"path", "size", "hash"}}`` of the encoder files ``model_cfg`` names."""
    return {key: {"path": str(path), **file_fingerprint(path)} for key, path in _named_files(model_cfg)}


def check_encoder_files(recorded: dict[str, dict[str, Any]], model_cfg: Any, where: str) -> None:
    """Refuse (or, when accepted, warn about) encoder files that differ from ``recorded``.

    The files compared are those ``model_cfg`` names now, key by key (a file moved elsewhere and
    named there passes); a key not recorded is not checked."""
    now = dict(_named_files(model_cfg))
    for key, was in recorded.items():
        path = now.get(key)
        if path is None:
            continue  # not there: building the model names the missing file
        current = file_fingerprint(path)
        if current["size"] == was.get("size") and current["hash"] == was.get("hash"):
            continue
        what = (
            f"{current['size']:,} bytes, trained with {was.get('size', 0):,}"
            if current["size"] != was.get("size")
            else "same size, different contents"
        )
        message = f"{where}: {key} {path} is not the file it was trained with ({what})"
        if _STATE["accept"]:
            log.warning("%s; used anyway (%s)", message, ACCEPT_OPTION)
            continue
        raise ChangedEncoderFile(f"{message}; to use it knowingly, add {ACCEPT_OPTION}")
