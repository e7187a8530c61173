"""The one training loop: any task; accumulation, bf16 autocast, DDP under torchrun, per-module
learning rates, schedules, early stop, ``init_from``, and exact resume.

What survives what: every finished epoch and every Ctrl-C commits a state (weights file, then the
state file naming it); a resumed run continues bit for bit. Ctrl-C lets the running micro-batch
finish (its random draws and BatchNorm updates are then part of the saved state); during
validation it stops at once and the resumed run validates that epoch again. A second Ctrl-C stops
at once with the last committed state. ``kill -9`` loses the work since the last commit.
"""

from __future__ import annotations

import fnmatch
import gc
import io
import json
import math
import os
import random
import signal
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from . import distributed as dist_utils
from .atomic import atomic_write_bytes, atomic_write_json
from .checkpoint import read_checkpoint_tensors, save_checkpoint
from .config import Recipe, recipe_to_yaml
from .data.datasets import make_loader
from .encoder_files import check_encoder_files, encoder_files
from .evaluate import EvaluationInterrupted, evaluate
from .factory import build_model, data_info, ensure_data, ensure_files, open_split
from .loggers import RunLogger
from .runs import (
    STATE_DIR,
    STATE_FILE,
    link_or_copy,
    lock_run_folder,
    move_run_aside,
    remove_stale_files,
    run_files,
    write_run_record,
)
from .runtime import (
    apply_compile_regions,
    autocast_for,
    configure_runtime,
    progress_bar,
    resolve_device,
    to_device,
)
from .tasks.base import get_task

__all__ = ["STATE_FILE", "Progression", "TrainingInterrupted", "Trainer", "make_optimizer", "training_loss"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; a resumable state was committed (``message`` says where)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global generator state as tensors and numbers (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _set_numpy_rng_state(s: dict[str, Any]) -> None:
    keys = s["keys"].numpy().astype(np.uint32)
    np.random.set_state((s["name"], keys, s["pos"], s["has_gauss"], s["gauss"]))


def _worker_init(_: int) -> None:
    # Ctrl-C is the main process's to handle (it finishes the batch and saves); workers ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def parameter_groups(model: torch.nn.Module, cfg) -> list[dict[str, Any]]:
    """Trainable parameters split by ``train.param_groups`` (first matching glob wins; the rest
    use ``train.lr`` / ``train.weight_decay``). Every group must match something."""
    groups: list[dict[str, Any]] = [{"params": [], "names": []} for _ in cfg.param_groups]
    default: dict[str, Any] = {"params": [], "names": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        i = next((i for i, g in enumerate(cfg.param_groups) if fnmatch.fnmatchcase(name, g.match)), None)
        target = default if i is None else groups[i]
        target["params"].append(p)
        target["names"].append(name)
    out = []
    for g, spec in zip(groups, cfg.param_groups):
        if not g["params"]:
            raise ValueError(f"train.param_groups: '{spec.match}' matches no trainable parameter")
        g["lr"] = spec.lr if spec.lr is not None else cfg.lr
        g["weight_decay"] = spec.weight_decay if spec.weight_decay is not None else cfg.weight_decay
        out.append(g)
    if default["params"]:
        out.append({**default, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    return out


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """The release's Adam over the parameter groups; the fused kernel where it exists."""
    groups = parameter_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(
        [{k: v for k, v in g.items() if k != "names"} for g in groups], lr=cfg.lr, fused=fused
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule, stepped once per epoch."""
    s = cfg.scheduler
    if s.type == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.type == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=s.milestones, gamma=s.gamma)
    if s.type == "cosine":
        warm, total = s.warmup_epochs, cfg.epochs

        def factor(epoch: int, base: float) -> float:
            if epoch < warm:
                return (epoch + 1) / (warm + 1)
            t = (epoch - warm) / max(total - warm, 1)
            floor = s.min_lr / base
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        bases = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda e, b=b: factor(e, b) for b in bases])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def mixup_distribution(task, cfg) -> torch.distributions.Beta | None:
    """Beta(alpha, alpha) for log-mel mixup when the task (or ``train.mixup``) asks for it."""
    use = task.use_mixup if cfg.mixup is None else cfg.mixup
    alpha = torch.tensor(cfg.mixup_alpha)
    return torch.distributions.Beta(alpha, alpha) if use else None


def training_loss(
    net: torch.nn.Module,
    task,
    loss_cfg: Any,
    batch: dict[str, Any],
    device: torch.device,
    precision: str,
    mixup: torch.distributions.Distribution | None = None,
    after_forward=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward: log-mel mixup (one lambda per segment) when given, autocast, fp32 loss."""
    batch_size, num_segments = batch["frames"].shape[:2]
    mix = mixup.sample((batch_size * num_segments,)).to(device) if mixup is not None else None
    with autocast_for(device, precision):
        out = task.forward(net, batch, mix_lambda=mix)
    if after_forward is not None:
        after_forward()
    out = {k: v.float() for k, v in out.items()}
    return task.loss(out, batch, loss_cfg), out


# Batches whose loss and accuracy counts stay on the device before they are read back: a read-back
# waits for the device to finish (a host sync), and done every batch it keeps the CPU from queueing
# the next batch's kernels while the current ones run.
READ_BACK_EVERY = 8


def read_back_interval(device: torch.device) -> int:
    """Batches between read-backs on ``device``: on the CPU nothing runs ahead, so every batch
    (the progress bar moves with each one)."""
    return 1 if device.type == "cpu" else READ_BACK_EVERY


@dataclass
class PendingBatch:
    """A trained batch whose numbers are not read back yet (``loss``, ``correct`` and ``counted``
    may be 0-dim device tensors); ``at``: when it finished (``time.perf_counter``)."""

    loss: torch.Tensor | float
    samples: int
    correct: torch.Tensor | int
    counted: torch.Tensor | int
    step: int | None
    lrs: list[float]
    epoch_end: bool
    at: float


def read_numbers(values: list[Any]) -> list[Any]:
    """Python numbers for numbers and 0-dim tensors, reading the tensors of one dtype and device in
    one transfer (each value as ``float()``/``int()`` of it would give)."""
    out = list(values)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            groups.setdefault((v.dtype, v.device), []).append(i)
    for idx in groups.values():
        read = torch.stack([values[i].detach().reshape(()) for i in idx]).tolist()
        for i, x in zip(idx, read, strict=True):
            out[i] = x
    return out


@dataclass
class Progression:
    epoch: int = 0  # epochs whose training is done
    batch_in_epoch: int = 0  # micro-batches done in the current epoch
    global_step: int = 0  # optimiser steps
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    # The last finished epoch still has to be validated (Ctrl-C or a kill during validation).
    pending_validation: bool = False
    commits: int = 0  # states committed (names the weights file)
    # Running totals of the current epoch, so a mid-epoch resume logs the whole epoch.
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_counted: float = 0.0
    epoch_seen: float = 0.0
    epoch_seconds: float = 0.0
    last_epoch_stats: dict | None = None  # training stats of the epoch awaiting validation


class _StopFlag:
    """SIGINT sets a flag the loop reads at batch boundaries; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self):
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C acts as usual
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class Trainer:
    """Trains ``recipe`` on the prepared data ``data_dir`` into the run folder ``output_dir``.

    ``run_record`` is stored in ``run.json`` (how the run was started; ``--resume`` reads it).
    A new run (not ``resume``) refuses a folder that holds a run unless ``overwrite``, which moves
    the old run into ``previous-<n>/``. ``resume_command`` is the command that continues the run,
    named when it is interrupted (default: ``dgsct train --output RUN --resume``).
    The ``test_*`` arguments simulate interruptions deterministically (tests only)."""

    def __init__(
        self,
        recipe: Recipe,
        data_dir: str | Path,
        output_dir: str | Path,
        console: Console | None = None,
        show_progress: bool = True,
        interrupt_after_batches: int | None = None,
        run_record: dict[str, Any] | None = None,
        synthetic: bool = False,
        test_sigint_at_batch: int | None = None,
        test_sigint_in_validation: int | None = None,
        test_kill_before_commit: int | None = None,
        overwrite: bool = False,
        resume_command: str | None = None,
    ) -> None:
        self.recipe = recipe
        self.task = get_task(recipe.task)
        self.loss_cfg = recipe.loss
        self.data_dir = Path(data_dir)
        self.out = Path(output_dir)
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.interrupt_after_batches = interrupt_after_batches
        self.run_record = run_record or {}
        self.synthetic = synthetic
        self.test_sigint_at_batch = test_sigint_at_batch
        self.test_sigint_in_validation = test_sigint_in_validation
        self.test_kill_before_commit = test_kill_before_commit
        self.overwrite = overwrite
        self.resume_command = resume_command or f"dgsct train --output {self.out} --resume"
        self.device = dist_utils.setup(resolve_device(recipe.train.device).type)
        self.is_main = dist_utils.is_main()
        # TensorBoard / W&B (train.loggers), rank 0 only; a missing package is refused here.
        self.logger = RunLogger(
            recipe.train.loggers, self.out, self.is_main, recipe.train.wandb_project, not show_progress
        )
        self.stop = _StopFlag()
        self._batches_run = 0

    # -- set-up --------------------------------------------------------------------------------
    def _build(self) -> None:
        r = self.recipe
        seed_everything(r.train.seed)
        info = data_info(r, self.data_dir)
        # The run's recipe holds what the data decided (e.g. the class count), so its checkpoints
        # rebuild the same model without the data; they also name the classes (for predictions).
        r.model.head = self.task.resolve_head(r.model.head, info)
        self.checkpoint_extra = {
            "data": json.dumps(
                {
                    "dataset": info.dataset,
                    "class_names": info.class_names,
                    "background_index": info.background_index,
                    "extra": info.extra,
                }
            ),
            # The encoder files the frozen towers are rebuilt from, fingerprinted once here: a
            # delta checkpoint (and --resume) refuses a different file at the same path.
            "encoder_files": json.dumps(encoder_files(r.model)),
        }
        self.train_set = open_split(r, self.data_dir, r.data.train_split)
        self.val_set = open_split(r, self.data_dir, r.data.val_split)
        if len(self.train_set) == 0:
            raise ValueError(f"{self.data_dir}: split '{r.data.train_split}' is empty")
        self.model = build_model(r, info).to(self.device)
        self.optimizer = make_optimizer(self.model, r.train)
        # What gradient clipping looks at (frozen parameters never have gradients).
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        configure_runtime(self.model, self.device)
        self.scheduler = make_scheduler(self.optimizer, r.train)
        self.sampler = dist_utils.ResumableSampler(
            len(self.train_set), r.train.seed, True, dist_utils.world_size(), dist_utils.rank()
        )
        self.net: torch.nn.Module = self.model
        if dist_utils.world_size() > 1:
            # gate_tk exists in every adapter for checkpoint compatibility but never enters the graph.
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        apply_compile_regions(self.model, r.train.compile_regions, self.device, whole_model=r.train.compile)
        if r.train.compile:
            self.net = torch.compile(self.net)
        self.mixup = mixup_distribution(self.task, r.train)

    def _init_from(self) -> None:
        """``train.init_from``: copy the named modules from another checkpoint, strictly."""
        spec = self.recipe.train.init_from
        if spec is None or not spec.modules:
            return
        from .checkpoint import is_dgsct_checkpoint, load_any_checkpoint, resolve_run_checkpoint

        path = resolve_run_checkpoint(spec.checkpoint)
        if is_dgsct_checkpoint(path):
            source = read_checkpoint_tensors(path)
        else:
            source = load_any_checkpoint(path)[0].state_dict()
        own = self.model.state_dict()
        copied: list[str] = []
        for prefix in spec.modules:
            names = [k for k in own if k == prefix or k.startswith(prefix + ".")]
            if not names:
                raise ValueError(f"train.init_from.modules: '{prefix}' names no tensor of this model")
            missing = [k for k in names if k not in source]
            if missing:
                raise ValueError(f"train.init_from: {path} has no {missing[0]} (module '{prefix}')")
            wrong = [k for k in names if tuple(source[k].shape) != tuple(own[k].shape)]
            if wrong:
                raise ValueError(
                    f"train.init_from: {path}: {wrong[0]} has shape {tuple(source[wrong[0]].shape)}, "
                    f"this model {tuple(own[wrong[0]].shape)}"
                )
            with torch.no_grad():
                for k in names:
                    own[k].copy_(source[k].to(own[k].device))
            copied.extend(names)
        self.init_copied = copied
        if self.is_main:
            atomic_write_json(self.out / "init_from.json", {"checkpoint": str(path), "copied": copied})
            self.console.print(f"init_from {path}: copied {len(copied)} tensors of {', '.join(spec.modules)}")

    # -- state ---------------------------------------------------------------------------------
    def _commit(self, prog: Progression, grads: bool) -> None:
        """Write the weights under a new name, then the state naming them (the commit point)."""
        prog.commits += 1
        weights_name = f"weights-{prog.commits:06d}.safetensors"
        weights = self.out / STATE_DIR / weights_name
        extra = {**self.checkpoint_extra, "commit": str(prog.commits)}
        save_checkpoint(self.model, self.recipe, weights, full=False, extra=extra)
        if self.test_kill_before_commit is not None and prog.commits == self.test_kill_before_commit:
            raise SystemExit("test: killed between the weights write and the state commit")
        state = {
            "weights": weights_name,
            "commit": prog.commits,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": asdict(prog),
            "rng_torch": torch.get_rng_state(),
            "rng_python": random.getstate(),
            "rng_numpy": _numpy_rng_state(),
            "loggers": self.logger.state_dict(),  # what the loggers have not sent yet
            # Gradients accumulated since the last optimiser step (Ctrl-C between micro-batches).
            "grads": {
                n: p.grad.detach().cpu() for n, p in self.model.named_parameters() if p.grad is not None
            }
            if grads
            else {},
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.out / STATE_FILE, buffer.getvalue())
        link_or_copy(weights, self.out / "last.safetensors")
        remove_stale_files(self.out, keep_weights=weights_name)

    def _load_state(self) -> Progression:
        state_file = self.out / STATE_FILE
        if not state_file.is_file():
            raise ValueError(f"{self.out}: nothing to resume ({STATE_FILE} missing)")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            progress = state["progress"]
            weights_name = state["weights"]
        except Exception as exc:
            raise ValueError(
                f"{state_file}: damaged trainer state ({type(exc).__name__}); cannot resume"
            ) from None
        weights = self.out / STATE_DIR / weights_name
        if not weights.is_file():
            raise ValueError(
                f"{state_file}: names {STATE_DIR}/{weights_name}, which is missing; cannot resume"
            )
        tensors = read_checkpoint_tensors(weights, device=str(self.device))
        from .checkpoint import read_metadata

        meta = read_metadata(weights)
        if meta.get("commit") != str(state["commit"]):
            raise ValueError(f"{weights}: belongs to another state than {state_file}; cannot resume")
        check_encoder_files(json.loads(meta.get("encoder_files", "{}")), self.recipe.model, str(self.out))
        self.model.load_state_dict(tensors, strict=False)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{state_file}: does not fit this run's model ({exc}); cannot resume") from None
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_python"])
        if "rng_numpy" in state:
            _set_numpy_rng_state(state["rng_numpy"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.logger.load_state_dict(state.get("loggers"))
        params = dict(self.model.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(self.device)
        remove_stale_files(self.out, keep_weights=weights_name)
        link_or_copy(weights, self.out / "last.safetensors")  # last may lag behind a late kill
        return Progression(**progress)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        if resume and not (self.out / STATE_FILE).is_file():
            raise ValueError(
                f"{self.out}: nothing to resume (no {STATE_FILE}); start the run without --resume"
            )
        lock = nullcontext()
        if self.is_main:
            # Before any data is written or model built: every missing file named at once.
            ensure_files(self.recipe, self.console)
            self.out.mkdir(parents=True, exist_ok=True)
            lock = lock_run_folder(self.out)
        with lock:
            if self.is_main and not resume:
                self._claim_folder()
            return self._run_locked(resume)

    def _claim_folder(self) -> None:
        """A new run never eats an old one: refuse a folder that holds a run, or (``overwrite``)
        move that run into ``previous-<n>/`` first."""
        found = run_files(self.out)
        if not found:
            return
        if not self.overwrite:
            raise ValueError(
                f"{self.out}: holds a run ({', '.join(found[:3])}); continue it with --resume "
                f"('{self.resume_command}'), or start a new run there with --overwrite "
                f"(the old run is moved to {self.out}/previous-N, nothing is deleted)"
            )
        moved = move_run_aside(self.out)
        self.console.print(f"{self.out}: the previous run moved to {moved}", highlight=False)

    def _run_locked(self, resume: bool) -> dict[str, Any]:
        r = self.recipe
        if self.is_main:
            # Only one process may write a missing synthetic dataset; the others wait for it.
            ensure_data(r, self.data_dir, self.console, self.show_progress, synthetic=self.synthetic)
        dist_utils.barrier()
        self._build()
        if resume:
            prog = self._load_state()
        else:
            prog = Progression()
            self._init_from()
        if self.is_main:
            atomic_write_bytes(self.out / "recipe.yaml", recipe_to_yaml(r).encode())
            write_run_record(self.out, {**self.run_record, "data": str(self.data_dir.resolve())})
        batches_per_epoch = math.ceil(self.sampler.per_rank / r.train.batch_size)
        if r.train.max_steps_per_epoch:
            batches_per_epoch = min(batches_per_epoch, r.train.max_steps_per_epoch * r.train.grad_accum)
        last_val: dict[str, Any] = {}
        patience = r.train.early_stop
        stopped_early = patience is not None and prog.epochs_since_best >= patience  # a resumed early stop
        finished = False
        try:
            self.logger.start(self._logger_config(), prog.global_step, resume, prog.pending_validation)
            with self.stop.installed():
                if prog.pending_validation:
                    last_val = self._validate_and_record(prog)
                while prog.epoch < r.train.epochs and not stopped_early:
                    stats = self._train_epoch(prog, batches_per_epoch)
                    with warnings.catch_warnings():
                        # A run resumed right after an epoch's last batch steps the schedule before
                        # any optimiser step of this process; the order is right across the two.
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        self.scheduler.step()
                    prog.epoch += 1
                    prog.batch_in_epoch = 0
                    prog.epoch_loss_sum = prog.epoch_correct = prog.epoch_counted = prog.epoch_seen = 0.0
                    prog.epoch_seconds = 0.0
                    prog.last_epoch_stats = stats
                    prog.pending_validation = True
                    if self.is_main:
                        self._commit(prog, grads=False)
                    last_val = self._validate_and_record(prog)
                    if prog.epoch < r.train.epochs and self._stop_requested():
                        # Ctrl-C that arrived during a multi-process validation (which runs to its
                        # end there): the epoch is committed, stop before the next one.
                        message = f"interrupted after epoch {prog.epoch}"
                        if self.is_main:
                            self.console.print(
                                f"[yellow]{message}: state saved; continue with '{self.resume_command}'"
                            )
                        raise TrainingInterrupted(message)
                    if patience is not None and prog.epochs_since_best >= patience:
                        stopped_early = True
                        if self.is_main:
                            self.console.print(
                                f"early stop: no better {self.task.selection_metric} for {patience} epochs "
                                f"(best {prog.best_metric} at epoch {prog.best_epoch})"
                            )
            finished = True
        finally:
            self.logger.close(finished)
            # Free the DDP wrapper while the default process group still holds its reference:
            # if the Reducer dropped the group's last reference it would join gloo's worker
            # threads with the GIL held, and they need the GIL to free finished work (a hang
            # at exit, seen about one run in four with 2 CPU processes).
            self.net = self.model
            gc.collect()
            dist_utils.teardown()
        return {
            "epochs": prog.epoch,
            "best_metric": prog.best_metric,
            "best_epoch": prog.best_epoch,
            "last_val": last_val,
            "stopped_early": stopped_early,
        }

    def _logger_config(self) -> dict[str, Any]:
        """The run's config for the loggers: the resolved recipe, how it was started, where it runs."""
        from .schema import to_dict

        return {
            **to_dict(self.recipe),
            "run": self.run_record,
            "device": str(self.device),
            "world_size": dist_utils.world_size(),
        }

    def _stop_requested(self) -> bool:
        flag = self.stop.requested
        if dist_utils.world_size() > 1:
            flag = bool(dist_utils.all_reduce_sum([float(flag)], self.device)[0])
        return flag

    def _interrupt(self, prog: Progression, message: str) -> None:
        if self.is_main:
            self._commit(prog, grads=True)
            self.console.print(f"[yellow]{message}: state saved; continue with '{self.resume_command}'")
        raise TrainingInterrupted(message)

    def _train_epoch(self, prog: Progression, batches_per_epoch: int) -> dict[str, float]:
        r = self.recipe
        accum = r.train.grad_accum
        self.sampler.set_epoch(prog.epoch, prog.batch_in_epoch * r.train.batch_size)
        loader = make_loader(
            self.train_set,
            r.train.batch_size,
            r.data.num_workers,
            self.device,
            sampler=self.sampler,
            generator=torch.Generator().manual_seed(r.train.seed + prog.epoch),
            worker_init_fn=_worker_init,
        )
        self.model.train()
        start = time.perf_counter() - prog.epoch_seconds
        pending: list[PendingBatch] = []
        read_back_every = read_back_interval(self.device)
        bar = progress_bar(self.console, disable=not (self.show_progress and self.is_main))
        with bar:
            job = bar.add_task(
                f"epoch {prog.epoch + 1}", total=batches_per_epoch, completed=prog.batch_in_epoch, info=""
            )
            for batch in loader:
                i = prog.batch_in_epoch
                if i >= batches_per_epoch:
                    break
                batch = to_device(batch, self.device)
                batch["epoch"] = prog.epoch + 1  # 1-based, for losses whose weights follow the epoch
                last_of_step = (i + 1) % accum == 0 or i + 1 == batches_per_epoch
                loss, out = self._forward_backward(batch, sync=last_of_step, accum=accum, step=last_of_step)
                if last_of_step:
                    if r.train.clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(self.trainable, r.train.clip_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    prog.global_step += 1
                prog.batch_in_epoch = i + 1
                c, k = self.task.batch_accuracy(out, batch)
                pending.append(
                    PendingBatch(
                        loss,
                        batch["frames"].shape[0],
                        c,
                        k,
                        prog.global_step if last_of_step else None,
                        [g["lr"] for g in self.optimizer.param_groups],
                        i + 1 == batches_per_epoch,
                        time.perf_counter(),
                    )
                )
                prog.epoch_seconds = time.perf_counter() - start
                if self.interrupt_after_batches is not None:
                    self.interrupt_after_batches -= 1
                    if self.interrupt_after_batches <= 0:
                        self.interrupt_after_batches = None
                        self.stop.requested = True
                read_back = len(pending) >= read_back_every or i + 1 == batches_per_epoch
                # Alone, the stop flag is a Python bool (checked every batch); across processes it is
                # an all-reduce, done where every rank reads back (the same batches on every rank).
                stop = (
                    prog.batch_in_epoch < batches_per_epoch
                    and (read_back or dist_utils.world_size() == 1)
                    and self._stop_requested()
                )
                if read_back or stop:
                    self._read_back(prog, pending, bar, job)
                if stop:
                    self._interrupt(
                        prog, f"interrupted in epoch {prog.epoch + 1} after batch {prog.batch_in_epoch}"
                    )
        elapsed = time.perf_counter() - start
        loss_sum, correct, counted, seen = dist_utils.all_reduce_sum(
            [prog.epoch_loss_sum, prog.epoch_correct, prog.epoch_counted, prog.epoch_seen], self.device
        )
        return {
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": 100 * correct / max(counted, 1),
            "samples_per_second": seen / max(elapsed, 1e-9),
            "seconds": elapsed,
        }

    def _read_back(self, prog: Progression, pending: list[PendingBatch], bar: Any, job: Any) -> None:
        """Add the pending batches' losses and accuracy counts to the epoch's running totals (which
        live in ``prog``, so that a mid-epoch resume logs the whole epoch), log them and move the
        progress bar; one host sync per dtype for all of them."""
        losses = read_numbers([b.loss for b in pending])
        counts = read_numbers([x for b in pending for x in (b.correct, b.counted)])
        for j, b in enumerate(pending):
            prog.epoch_loss_sum += losses[j] * b.samples
            prog.epoch_correct += counts[2 * j]
            prog.epoch_counted += counts[2 * j + 1]
            prog.epoch_seen += b.samples
            self.logger.train_batch(losses[j], b.samples, b.step, b.lrs, epoch_end=b.epoch_end, at=b.at)
        rate = prog.epoch_seen / max(prog.epoch_seconds, 1e-9)
        accuracy = 100 * prog.epoch_correct / max(prog.epoch_counted, 1)
        bar.update(
            job,
            advance=len(pending),
            info=f"loss {prog.epoch_loss_sum / prog.epoch_seen:.4f}  acc {accuracy:.1f}%  {rate:.1f} samples/s",
        )
        pending.clear()

    def _forward_backward(
        self, batch: dict[str, Any], sync: bool, accum: int, step: bool
    ) -> tuple[torch.Tensor, dict]:
        no_sync = getattr(self.net, "no_sync", None)
        after_forward = None
        if self.test_sigint_at_batch is not None and self._batches_run == self.test_sigint_at_batch:
            after_forward = lambda: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
        self._batches_run += 1
        backward = True
        if self.recipe.train.accumulation == "release":
            # A batch whose gradient the release clears before the step runs forward only; the
            # stepping batch's own gradient is used undivided.
            backward, accum = step, 1
        with (
            no_sync() if (no_sync is not None and not sync) else nullcontext(),
            torch.set_grad_enabled(backward),
        ):
            loss, out = training_loss(
                self.net,
                self.task,
                self.loss_cfg,
                batch,
                self.device,
                self.recipe.train.precision,
                self.mixup,
                after_forward=after_forward,
            )
            if backward:
                (loss / accum).backward()
        return loss.detach(), out

    def _save_model(self, name: str, metrics: dict[str, Any]) -> None:
        save_checkpoint(
            self.model, self.recipe, self.out / name, full=False, metrics=metrics, extra=self.checkpoint_extra
        )

    def _log_epoch(self, record: dict[str, Any]) -> None:
        """Add the epoch's line to ``metrics.jsonl`` (rewritten atomically), dropping the lines of
        this and later epochs that a run stopped after validating but before its commit (kill -9,
        a full disk) wrote already: in a resumed run each epoch appears once."""
        path = self.out / "metrics.jsonl"
        kept = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    epoch = json.loads(line).get("epoch")
                except (ValueError, AttributeError):  # a line cut short by a crash
                    continue
                if isinstance(epoch, int) and epoch < record["epoch"]:
                    kept.append(line)
        kept.append(json.dumps(record))
        atomic_write_bytes(path, ("\n".join(kept) + "\n").encode("utf-8"))

    def _validate_and_record(self, prog: Progression) -> dict[str, Any]:
        """Validate the epoch just trained, log it, keep best/last, and commit the state."""
        r = self.recipe
        val: dict[str, Any] = {}
        stats = prog.last_epoch_stats or {}
        improved = False
        if self.is_main:
            if len(self.val_set):
                calls = {"n": 0}

                def should_stop() -> bool:
                    calls["n"] += 1
                    if self.test_sigint_in_validation == prog.epoch and calls["n"] == 1:
                        os.kill(os.getpid(), signal.SIGINT)
                    # Only a single process may stop mid-validation: under torchrun the other
                    # ranks wait at the barrier after it, so validation runs to its end there.
                    return self.stop.requested and dist_utils.world_size() == 1

                try:
                    val = evaluate(
                        self.model,
                        self.val_set,
                        self.task,
                        self.device,
                        r.train.eval_batch_size,
                        r.data.num_workers,
                        r.train.precision,
                        self.console,
                        self.show_progress,
                        description=f"val {prog.epoch}",
                        should_stop=should_stop,
                    )
                except EvaluationInterrupted:
                    self.console.print(
                        f"[yellow]interrupted while validating epoch {prog.epoch}: its training is saved and "
                        f"the resumed run validates it; continue with '{self.resume_command}'"
                    )
                    raise TrainingInterrupted(f"interrupted while validating epoch {prog.epoch}") from None
            metric = val.get(self.task.selection_metric)
            record = {
                "epoch": prog.epoch,
                "step": prog.global_step,
                "lr": self.optimizer.param_groups[0]["lr"],
                **stats,
                "val": {k: v for k, v in val.items() if not isinstance(v, dict)},
            }
            improved = metric is not None and (
                prog.best_metric is None
                or metric > prog.best_metric
                or (self.task.select_ties and metric == prog.best_metric)
            )
            if improved:
                prog.best_metric, prog.best_epoch = metric, prog.epoch
            summary = {**record, "val": val, "best_metric": prog.best_metric, "best_epoch": prog.best_epoch}
            if improved:
                self._save_model("best.safetensors", summary)
                atomic_write_json(self.out / "best.json", summary)
            atomic_write_json(self.out / "last.json", summary)
            self._log_epoch(record)
            self.logger.epoch_end(prog.global_step, record)
            shown = (
                f"{self.task.selection_metric} {metric:.2f}" if metric is not None else "no validation split"
            )
            self.console.print(
                f"epoch {prog.epoch}/{r.train.epochs}: train loss {stats.get('train_loss', float('nan')):.4f}, "
                f"acc {stats.get('train_accuracy', float('nan')):.1f}%, "
                f"{stats.get('samples_per_second', float('nan')):.1f} samples/s; val {shown}"
                + (" [green](best)" if improved else "")
            )
        dist_utils.barrier()
        prog.best_metric = dist_utils.broadcast_object(prog.best_metric)
        prog.best_epoch = dist_utils.broadcast_object(prog.best_epoch)
        improved = dist_utils.broadcast_object(improved)
        prog.epochs_since_best = 0 if improved else prog.epochs_since_best + 1
        prog.pending_validation = False
        prog.last_epoch_stats = None
        if self.is_main:
            self._commit(prog, grads=False)
        return val
