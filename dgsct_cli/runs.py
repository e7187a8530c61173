"""A run folder: one writer at a time, what the run was started with, and its resumable state.

Layout::

    run.lock                 held while a run writes the folder (pid, host, start time)
    run.json                 how the run was started: data folder, recipe source, overrides
    recipe.yaml              the resolved recipe
    trainer_state.pt         the resumable state; it names its weights file and step (the commit point)
    state/weights-<step>.safetensors   the weights that state belongs to
    last.safetensors / best.safetensors, last.json / best.json, metrics.jsonl
    previous-<n>/            earlier runs of the folder, moved aside by a new run with --overwrite

A state is written in two steps: the weights file under a new name, then ``trainer_state.pt``
(atomic rename) naming it. A kill between the two leaves the previous pair intact; the unnamed
weights file is removed on resume.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .atomic import TMP_PREFIX, atomic_write_json

__all__ = [
    "LOCK_FILE",
    "RUN_FILE",
    "STATE_DIR",
    "STATE_FILE",
    "RunLockedError",
    "link_or_copy",
    "lock_run_folder",
    "move_run_aside",
    "run_files",
    "read_run_record",
    "remove_stale_files",
    "write_run_record",
]

LOCK_FILE = "run.lock"
RUN_FILE = "run.json"
STATE_FILE = "trainer_state.pt"
STATE_DIR = "state"
PREVIOUS_PREFIX = "previous-"
# What makes a folder hold a run: a state, checkpoints or results (a start that failed before its
# first commit leaves only recipe.yaml and run.json, which a new run may replace).
RUN_MARKERS = (
    STATE_FILE,
    STATE_DIR,
    "metrics.jsonl",
    "best.safetensors",
    "best.json",
    "last.safetensors",
    "last.json",
    "fewshot.json",
    "test_metrics.json",
)


class RunLockedError(ValueError):
    """Another live run writes this folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _locked_message(out: Path, path: Path, owner: dict[str, Any], host: str) -> str:
    if not owner:  # unreadable: a writer between create and write, or damaged
        return f"{path}: the run folder is locked (lock file unreadable); remove it if no run uses the folder"
    where = "this host" if owner.get("host") == host else f"host {owner.get('host')}"
    return (
        f"{out}: another run (pid {owner.get('pid')} on {where}, started {owner.get('started', '?')}) "
        f"writes this folder; wait for it, or remove {path} if that run is gone"
    )


@contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold ``out/run.lock`` for the ``with`` block; a second run on the folder gets one clear line.

    A lock left by a process that no longer runs on this host is stale and taken over; a lock
    from another host cannot be checked and is refused with the way to clear it."""
    out = Path(out)
    path = out / LOCK_FILE
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            pid, owner_host = owner.get("pid"), owner.get("host")
            if owner_host == host and isinstance(pid, int) and not _pid_alive(pid):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise RunLockedError(_locked_message(out, path, owner, host)) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(mine, fh)
        break
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def run_files(out: Path) -> list[str]:
    """The names in ``out`` that show it holds a run (empty: no run there)."""
    out = Path(out)
    return [name for name in RUN_MARKERS if (out / name).exists()]


def move_run_aside(out: Path) -> Path:
    """Move everything in ``out`` (but its lock and earlier ``previous-<n>`` folders) into a new
    ``out/previous-<n>`` and return it: a new run starts in an empty folder, and nothing of the
    old one is deleted. Call it holding the folder's lock."""
    out = Path(out)
    taken = [
        int(p.name[len(PREVIOUS_PREFIX) :])
        for p in out.iterdir()
        if p.is_dir() and p.name.startswith(PREVIOUS_PREFIX) and p.name[len(PREVIOUS_PREFIX) :].isdigit()
    ]
    target = out / f"{PREVIOUS_PREFIX}{max(taken, default=0) + 1}"
    target.mkdir()
    for entry in sorted(out.iterdir()):
        if entry == target or entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and entry.name.startswith(PREVIOUS_PREFIX):
            continue
        os.replace(entry, target / entry.name)  # a rename inside the folder: nothing is copied
    return target


def write_run_record(out: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / RUN_FILE, record)


def read_run_record(out: Path) -> dict[str, Any]:
    path = Path(out) / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: damaged run record ({exc.__class__.__name__}); cannot resume") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: damaged run record (expected a JSON object); cannot resume")
    return record


def remove_stale_files(out: Path, keep_weights: str | None) -> int:
    """Temp files of interrupted writes, and weights files no state names; returns the count."""
    removed = 0
    out = Path(out)
    for folder in (out, out / STATE_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            stale_tmp = entry.name.startswith(TMP_PREFIX)
            stale_weights = folder.name == STATE_DIR and entry.name != keep_weights
            if entry.is_file() and (stale_tmp or stale_weights):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes atomically: a hard link where the filesystem has
    them (no copy), else a copy."""
    import shutil

    tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
