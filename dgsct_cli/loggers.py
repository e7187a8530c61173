"""Run loggers: one interface, several backends (``train.loggers: [jsonl, tensorboard, wandb]``).

``jsonl`` is the run's own ``metrics.jsonl`` (the trainer writes it with each commit; always on);
``tensorboard`` writes event files to ``RUN/tensorboard`` with ``SummaryWriter``; ``wandb`` logs a
Weights & Biases run (files under ``RUN/wandb``; ``WANDB_MODE=offline`` works without a network)
whose id is kept in ``RUN/loggers.json``, so ``--resume`` continues the same W&B run.

What is logged: per optimiser step ``step/loss`` (the mean loss of the step's micro-batches on
rank 0), ``step/lr`` and ``step/samples_per_second``; per epoch every number of the
``metrics.jsonl`` record (``train/loss``, ``train/accuracy``, ``train/samples_per_second``,
``train/seconds``, ``train/lr``, ``val/<metric>``, ``epoch``); the resolved recipe, the device and
the world size as the run's config; test metrics and figures (t-SNE, mask overlays, the few-shot
sweep plot) when they are made (:func:`log_to_run`). The x axis is the optimiser step.

Exactly once across Ctrl-C, kills and ``--resume`` (the semantics of ``metrics.jsonl``): every
value goes out with an explicit step number. A step's values go out when the step is complete:
at once for a step inside an epoch, after validation for an epoch's last step (its row then holds
the epoch's metrics too). Until then the row is part of the trainer's committed state
(:meth:`RunLogger.state_dict`). On resume, TensorBoard starts with ``purge_step`` at the first step
the committed state has not sent, which hides what a killed process logged after its last commit;
W&B cannot retract values, so steps it already holds are not sent again (what the resumed run
computes for them is bit-identical; W&B itself drops them too when it resumes a run online).
Offline, W&B writes one folder per process (``RUN/wandb/offline-run-*-<id>``); together they hold
each step once.

Only rank 0 logs under torchrun (``enabled``). The optional packages are imported when a backend
starts, never at import time (``dgsct --help`` stays fast).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import secrets
import string
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .atomic import atomic_write_json

__all__ = [
    "BACKENDS",
    "LOGGERS",
    "LOGGERS_FILE",
    "LoggerBackend",
    "RunLogger",
    "Session",
    "TensorBoardBackend",
    "WandbBackend",
    "check_loggers",
    "epoch_scalars",
    "log_to_run",
    "read_wandb_history",
    "read_wandb_records",
]

LOGGERS = ("jsonl", "tensorboard", "wandb")
LOGGERS_FILE = "loggers.json"
TENSORBOARD_DIR = "tensorboard"
# backend -> (module that must import, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "dgsct[tensorboard]"), "wandb": ("wandb", "dgsct[wandb]")}


def check_loggers(names: Iterable[str]) -> None:
    """Refuse, in one line, a logger whose package is not installed (before any work starts)."""
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"train.loggers: unknown logger {name!r} (allowed: {', '.join(LOGGERS)})")
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            module, extra = EXTRAS[name]
            raise ValueError(
                f"train.loggers: '{name}' needs the {module} package, which is not installed; "
                f"pip install '{extra}' (or drop it from train.loggers)"
            )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one ``metrics.jsonl`` record as the loggers name them: ``val/<metric>`` for
    the validation metrics, ``train/<name>`` for the rest (``train_loss`` -> ``train/loss``,
    ``samples_per_second`` -> ``train/samples_per_second``), and ``epoch``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "val" and isinstance(value, dict):
            for k, v in value.items():
                if (n := _number(v)) is not None:
                    out[f"val/{k}"] = n
        elif key == "epoch":
            out["epoch"] = float(value)
        elif key != "step" and (n := _number(value)) is not None:
            out[f"train/{key.removeprefix('train_')}"] = n
    return out


def read_loggers_file(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((Path(run_dir) / LOGGERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


# -- W&B's run files (.wandb): read back what a run holds --------------------------------------------

_BLOCK = 32768  # W&B's store is a LevelDB-style log: 32 KiB blocks of (crc32, length, type) chunks
_CHUNK_HEADER = 7
_FILE_HEADER = 7  # ":W&B", a 2-byte magic, a version byte


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """The records (``wandb_internal_pb2.Record``) of a ``.wandb`` file, in order; a record cut
    short by a killed writer ends the iteration."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = _FILE_HEADER, []
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        end = pos + _CHUNK_HEADER + length
        if end > len(data):
            return
        parts.append(data[pos + _CHUNK_HEADER : end])
        pos = end
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def read_wandb_history(path: str | Path) -> list[dict[str, Any]]:
    """The history rows of a ``.wandb`` file: ``{"_step": n, key: value, ...}`` (values decoded
    from JSON; W&B's own ``_runtime``/``_timestamp`` included)."""
    rows = []
    for record in read_wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        row.setdefault("_step", record.history.step.num)
        rows.append(row)
    return rows


def _wandb_files(wandb_dir: Path, run_id: str) -> list[Path]:
    return sorted(p for p in Path(wandb_dir).glob(f"*-{run_id}/run-{run_id}.wandb") if p.is_file())


# -- backends ----------------------------------------------------------------------------------------


@dataclass
class Session:
    """One process's connection to a backend.

    ``mode``: ``start`` (a new run), ``resume`` (continue a run; ``step`` is the first step the
    committed state has not sent) or ``append`` (add test metrics or figures to a run; ``step`` is
    its last step)."""

    mode: str
    step: int
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # loggers.json: the W&B run id, ...
    project: str = "dgsct"
    quiet: bool = False


class LoggerBackend:
    """What a logger implements (the way Lightning's loggers share one interface)."""

    name = ""

    def open(self, run_dir: Path, session: Session) -> None:
        raise NotImplementedError

    def log_row(self, step: int, values: dict[str, float], images: dict[str, Path] | None = None) -> None:
        """One step's values (and figures), sent once, in one call."""
        raise NotImplementedError

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        raise NotImplementedError

    def log_summary(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self, finished: bool) -> None:
        pass


def _rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class TensorBoardBackend(LoggerBackend):
    """Event files in ``RUN/tensorboard`` (``torch.utils.tensorboard.SummaryWriter``)."""

    name = "tensorboard"

    def open(self, run_dir: Path, session: Session) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A new run starts with a SessionLog.START at step 0 (TensorBoard then ignores any older
        # files in the folder); a resumed one at its first unsent step, which retracts what a
        # killed process wrote after its last commit. Appends add to the run as it is.
        purge = {"start": 0, "resume": session.step}.get(session.mode)
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge, flush_secs=30)
        if session.config:
            import yaml

            text = yaml.safe_dump(session.config, sort_keys=False)
            # Markdown: an indented block keeps the YAML's layout.
            self.writer.add_text(
                "config", "\n".join("    " + line for line in text.splitlines()), session.step
            )

    def log_row(self, step: int, values: dict[str, float], images: dict[str, Path] | None = None) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if images:
            self.log_images(step, images)

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        for key, path in images.items():
            self.writer.add_image(key, _rgb(path), step, dataformats="HWC")

    def log_summary(self, step: int, values: dict[str, float]) -> None:
        self.log_row(step, values)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


def _new_run_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _wait_for_a_new_second(wandb_dir: Path, run_id: str) -> None:
    """W&B names a process's folder by the second it starts and the run's id: a second process of
    the run within the same second would write into the first one's folder and replace its file."""
    import re
    from datetime import datetime

    pattern = re.compile(rf"(\d{{8}}_\d{{6}})-{re.escape(run_id)}$")
    used = {m.group(1) for p in Path(wandb_dir).glob(f"*-{run_id}") if (m := pattern.search(p.name))}
    while datetime.now().strftime("%Y%m%d_%H%M%S") in used:
        time.sleep(0.05)


class WandbBackend(LoggerBackend):
    """A Weights & Biases run (``wandb.init(dir=RUN, id=..., resume="allow")``)."""

    name = "wandb"

    def open(self, run_dir: Path, session: Session) -> None:
        import wandb

        info = session.info.setdefault("wandb", {})
        if session.mode == "start" or "id" not in info:
            info.update(id=_new_run_id(), project=session.project)
        self.append = session.mode == "append"
        _wait_for_a_new_second(run_dir / "wandb", info["id"])
        try:
            self.run = wandb.init(
                project=info.get("project", session.project),
                name=session.name,
                id=info["id"],
                resume=None if session.mode == "start" else "allow",
                dir=str(run_dir),
                # Our progress bars are not for W&B's console capture.
                settings=wandb.Settings(console="off", silent=session.quiet),
            )
        except Exception as exc:  # no login, no network, a bad project name: one line
            raise ValueError(
                f"wandb: could not start the run ({' '.join(str(exc).split())[:300]}); log in with "
                "'wandb login' or set WANDB_MODE=offline"
            ) from None
        info["url"] = getattr(self.run, "url", None)
        if session.config:
            self.run.config.update(session.config, allow_val_change=True)
        # Epoch metrics also plot against the epoch.
        self.run.define_metric("epoch")
        for pattern in ("train/*", "val/*"):
            self.run.define_metric(pattern, step_metric="epoch")
        # Steps this W&B run already holds (online: the server says; offline: earlier processes'
        # folders) are not sent again.
        current = Path(self.run.dir).parent
        held = [self.run.starting_step - 1]
        for path in _wandb_files(run_dir / "wandb", info["id"]):
            if path.parent.resolve() == current.resolve():
                continue
            try:
                held += [row["_step"] for row in read_wandb_history(path)]
            except Exception:  # an unreadable file: send again rather than lose
                continue
        self.floor = max(held)

    def log_row(self, step: int, values: dict[str, float], images: dict[str, Path] | None = None) -> None:
        if step > self.floor:
            # One call per step: a second call for the same step may find the row already written.
            self.run.log({**values, **self._media(images or {})}, step=step)

    @staticmethod
    def _media(images: dict[str, Path]) -> dict[str, Any]:
        import wandb

        return {key: wandb.Image(str(path)) for key, path in images.items()}

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        # Figures made after training go with the run's summary: a history row of their own would
        # take a step number a resumed run may still need.
        self.run.summary.update(self._media(images))

    def log_summary(self, step: int, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, finished: bool) -> None:
        if not finished:
            self.run.mark_preempting()  # resumable, not failed
        self.run.finish(exit_code=0 if finished else 1)


BACKENDS: dict[str, type[LoggerBackend]] = {"tensorboard": TensorBoardBackend, "wandb": WandbBackend}


# -- the trainer's logger ------------------------------------------------------------------------------


class RunLogger:
    """The loggers of one training run, fed by the training loop (rank 0 only)."""

    def __init__(
        self,
        names: Sequence[str],
        run_dir: str | Path,
        enabled: bool = True,
        project: str = "dgsct",
        quiet: bool = False,
    ) -> None:
        check_loggers(names)
        self.names = list(dict.fromkeys(["jsonl", *names]))
        self.run_dir = Path(run_dir)
        self.project = project
        self.quiet = quiet
        self.backends: list[LoggerBackend] = (
            [BACKENDS[n]() for n in self.names if n in BACKENDS] if enabled else []
        )
        # Committed with the trainer's state: the micro-batch losses of a step under way and the
        # row of an epoch's last step, which waits for the epoch's validation.
        self._state: dict[str, Any] = {"loss_sum": 0.0, "loss_count": 0, "open_row": None}
        self._samples = 0
        self._clock = time.perf_counter()
        self._open = False

    @property
    def active(self) -> bool:
        return bool(self.backends)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self._state.update(copy.deepcopy(state))

    def state_dict(self) -> dict[str, Any]:
        """The part of the trainer's state the loggers need; what was sent is flushed first, so a
        commit never covers values that only sat in a buffer."""
        self.flush()
        return copy.deepcopy(self._state)

    def start(
        self,
        config: dict[str, Any],
        step: int = 0,
        resume: bool = False,
        pending_validation: bool = False,
        name: str | None = None,
    ) -> None:
        """Open the backends: a new run, or (``resume``) the run continued after ``step``."""
        if not self.active:
            return
        info = read_loggers_file(self.run_dir) if resume else {}
        if resume:
            # The first step the committed state has not sent: an epoch's last step waits for its
            # validation, any other committed step was sent before its commit.
            first = step if (pending_validation or self._state.get("open_row")) else step + 1
        else:
            first = 0
        session = Session(
            "resume" if resume else "start",
            first,
            name or self.run_dir.resolve().name,
            config,
            info,
            self.project,
            self.quiet,
        )
        opened: list[LoggerBackend] = []
        try:
            for backend in self.backends:
                backend.open(self.run_dir, session)
                opened.append(backend)
        except BaseException:
            for backend in opened:
                backend.close(False)
            raise
        self._open = True
        info["loggers"] = self.names
        atomic_write_json(self.run_dir / LOGGERS_FILE, info)
        self._clock = time.perf_counter()

    def train_batch(
        self,
        loss: float,
        samples: int,
        step: int | None,
        lrs: Sequence[float],
        epoch_end: bool = False,
        at: float | None = None,
    ) -> None:
        """One micro-batch; ``step`` is the optimiser step it completed (None: mid-accumulation);
        ``at``: when it finished (``time.perf_counter()``; default now): the trainer reads batches
        back a few at a time."""
        if not self._open:
            return
        s = self._state
        s["loss_sum"] += float(loss)
        s["loss_count"] += 1
        self._samples += samples
        if step is None:
            return
        now = time.perf_counter() if at is None else at
        row = {"step/loss": s["loss_sum"] / max(s["loss_count"], 1)}
        if len(lrs) == 1:
            row["step/lr"] = float(lrs[0])
        else:
            row.update({f"step/lr_group{i}": float(lr) for i, lr in enumerate(lrs)})
        row["step/samples_per_second"] = self._samples / max(now - self._clock, 1e-9)
        s["loss_sum"], s["loss_count"], self._samples, self._clock = 0.0, 0, 0, now
        if epoch_end:
            s["open_row"] = {"step": step, "values": row}
        else:
            self._emit(step, row)

    def epoch_end(self, step: int, record: dict[str, Any]) -> None:
        """The epoch's ``metrics.jsonl`` record, logged with its last step's row."""
        if not self._open:
            return
        values = epoch_scalars(record)
        row = self._state.get("open_row")
        if row is not None:
            if row["step"] == step:
                values = {**row["values"], **values}
            else:
                self._emit(row["step"], row["values"])
        self._state["open_row"] = None
        self._emit(step, values)

    def log_row(
        self, step: int, values: dict[str, float], images: dict[str, str | Path] | None = None
    ) -> None:
        """A row of values (and figures) outside the training loop's own (e.g. a sweep's)."""
        if self._open:
            self._emit(step, values, {k: Path(v) for k, v in (images or {}).items()})

    def _emit(self, step: int, values: dict[str, float], images: dict[str, Path] | None = None) -> None:
        for backend in self.backends:
            backend.log_row(step, values, images)

    def flush(self) -> None:
        if self._open:
            for backend in self.backends:
                backend.flush()

    def close(self, finished: bool = False) -> None:
        """Close the backends; an unfinished run's waiting row stays in the committed state."""
        if not self._open:
            return
        self._open = False
        for backend in self.backends:
            backend.close(finished)


# -- after training ----------------------------------------------------------------------------------


def _last_step(run_dir: Path) -> int:
    for name in ("last.json", "best.json"):
        try:
            step = json.loads((run_dir / name).read_text(encoding="utf-8")).get("step")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return 0


def log_to_run(
    run_dir: str | Path,
    scalars: dict[str, float] | None = None,
    images: dict[str, str | Path] | None = None,
    console: Console | None = None,
) -> list[str]:
    """Add test metrics or figures to a trained run's loggers (those its ``loggers.json`` names),
    at the run's last step; returns the loggers written. A logger whose package is missing here is
    skipped with a warning (the figure or the metrics file exists anyway)."""
    run_dir = Path(run_dir)
    info = read_loggers_file(run_dir)
    names = [n for n in info.get("loggers", []) if n in BACKENDS]
    if not names:
        return []
    done = []
    step = _last_step(run_dir)
    session = Session("append", step, run_dir.resolve().name, info=info, quiet=True)
    for name in names:
        try:
            check_loggers([name])
        except ValueError as exc:
            if console is not None:
                console.print(f"[yellow]{run_dir}: not logged to {name}: {exc}", highlight=False)
            continue
        backend = BACKENDS[name]()
        try:
            backend.open(run_dir, session)
        except Exception as exc:  # e.g. W&B online without a network: the files exist anyway
            if console is not None:
                console.print(f"[yellow]{run_dir}: not logged to {name}: {exc}", highlight=False)
            continue
        try:
            if scalars:
                backend.log_summary(step, {k: v for k, v in scalars.items() if _number(v) is not None})
            if images:
                backend.log_images(step, {k: Path(v) for k, v in images.items()})
        finally:
            backend.close(True)
        done.append(name)
    return done


def log_figures(
    checkpoint: str | Path, images: dict[str, str | Path], console: Console | None = None
) -> None:
    """Figures made from ``checkpoint`` go to its run's loggers when it is (or lies in) a run
    folder that logged to TensorBoard or W&B; a message says where."""
    path = Path(checkpoint)
    run = path if path.is_dir() else path.parent
    if not (run / LOGGERS_FILE).is_file() or not images:
        return
    done = log_to_run(run, images=images, console=console)
    if done and console is not None:
        console.print(
            f"logged {', '.join(images)} to the {' and '.join(done)} logs of {run}", highlight=False
        )
