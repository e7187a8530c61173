"""Atomic file output: write a sibling temp file, then rename, so readers never see half a file.

Temp files start with ``TMP_PREFIX`` so a later run can recognise and remove leftovers; finished
files get the ordinary permissions the umask gives (``mkstemp`` alone would leave them 0600).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it vanishes.

    ``suffix`` keeps writers that choose a format from the extension (matplotlib) happy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        # write() and flush() raise without a file name (and a failed write names the temp
        # file): name the file being written, so a full disk says which one.
        if exc.filename is None or TMP_PREFIX in os.path.basename(str(exc.filename)):
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def naming_the_folder(folder: str | Path) -> Iterator[None]:
    """An ``OSError`` without a file name (``write()`` on a full disk) raised in the block names
    ``folder``, the place being written, so its message never says just "a file"."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(folder)) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsynced, so a crash cannot leave an empty file)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | Path) -> None:
    """Raise the ``OSError`` a write of ``path`` would hit (read-only, permissions), now, before
    the work that produces it: a scratch file is created and removed in its folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file name")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + "check.", dir=folder)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    os.unlink(tmp)
