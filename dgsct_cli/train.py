"""The one training loop: any task; accumulation, bf16 autocast, DDP under torchrun, atomic
checkpoints, exact resume (also from Ctrl-C part-way through an epoch)."""

from __future__ import annotations

import gc
import json
import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from . import distributed as dist_utils
from .atomic import atomic_output, atomic_write_bytes, atomic_write_json
from .checkpoint import save_checkpoint
from .config import Recipe, build_dataclass, recipe_to_yaml
from .data.cache import PreparedCache, SegmentDataset
from .evaluate import autocast_for, evaluate, make_loader, progress_bar, resolve_device, to_device
from .models.factory import create_model
from .runtime import configure_runtime
from .tasks.base import get_task

STATE_FILE = "trainer_state.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """The release's Adam; the fused kernel (one pass, no per-tensor temporaries) where it exists."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward: log-mel mixup (one lambda per segment) when given, autocast, fp32 loss."""
    batch_size, num_segments = batch["frames"].shape[:2]
    mix = mixup.sample((batch_size * num_segments,)).to(device) if mixup is not None else None
    with autocast_for(device, precision):
        out = net(**task.model_inputs(batch), mix_lambda=mix)
    out = {k: v.float() for k, v in out.items()}
    return task.loss(out, batch, loss_cfg), out


@dataclass
class Progression:
    epoch: int = 0  # epochs fully done
    batch_in_epoch: int = 0  # micro-batches done in the current epoch
    global_step: int = 0  # optimiser steps
    best_metric: float | None = None
    best_epoch: int | None = None
    # Running totals of the current epoch, so a mid-epoch resume logs the whole epoch.
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_counted: float = 0.0
    epoch_seen: float = 0.0
    epoch_seconds: float = 0.0


def open_dataset(recipe: Recipe, data_dir: str | Path, split: str) -> SegmentDataset:
    cache = PreparedCache(data_dir)
    head = build_dataclass(get_task(recipe.task).head_config, recipe.model.head, "model.head")
    if len(cache.class_names) != head.num_classes:
        raise ValueError(
            f"{data_dir}: the dataset has {len(cache.class_names)} classes but the recipe's "
            f"model.head.num_classes is {head.num_classes}"
        )
    image_size = recipe.model.visual.img_size
    return SegmentDataset(
        cache,
        split,
        image_size=image_size,
        segment_tiling=recipe.data.segment_tiling,
        sample_rate=recipe.model.audio.sample_rate,
    )


def ensure_data(
    recipe: Recipe, data_dir: str | Path, console: Console | None = None, show_progress: bool = True
) -> Path:
    """The prepared cache; tiny recipes write and prepare a synthetic dataset when it is absent."""
    data_dir = Path(data_dir)
    if (data_dir / "manifest.json").is_file():
        return data_dir
    if not recipe.data.synthetic_if_missing:
        raise ValueError(
            f"{data_dir}: no prepared dataset here (manifest.json missing); run 'dgsct prepare {recipe.task} --out {data_dir}' first"
        )
    from .data.registry import prepare_synthetic

    if console is not None and show_progress:
        console.print(
            f"[cyan]{data_dir} does not exist: writing and preparing a synthetic {recipe.task.upper()} dataset there"
        )
    head = build_dataclass(get_task(recipe.task).head_config, recipe.model.head, "model.head")
    prepare_synthetic(
        recipe.task,
        data_dir,
        videos=recipe.data.synthetic_videos,
        image_size=recipe.model.visual.img_size,
        num_classes=head.num_classes,
        progress=show_progress,
        console=console,
    )
    return data_dir


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        data_dir: str | Path,
        output_dir: str | Path,
        console: Console | None = None,
        show_progress: bool = True,
        interrupt_after_batches: int | None = None,  # test hook: simulate Ctrl-C
    ) -> None:
        self.recipe = recipe
        self.task = get_task(recipe.task)
        self.loss_cfg = build_dataclass(self.task.loss_config, recipe.loss, "loss")
        self.data_dir = Path(data_dir)
        self.out = Path(output_dir)
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.interrupt_after_batches = interrupt_after_batches
        self.device = dist_utils.setup(resolve_device(recipe.train.device).type)
        self.is_main = dist_utils.is_main()

    # -- set-up --------------------------------------------------------------------------------
    def _build(self) -> None:
        r = self.recipe
        seed_everything(r.train.seed)
        self.train_set = open_dataset(r, self.data_dir, r.data.train_split)
        self.val_set = open_dataset(r, self.data_dir, r.data.val_split)
        if len(self.train_set) == 0:
            raise ValueError(f"{self.data_dir}: split '{r.data.train_split}' is empty")
        self.model = create_model(r.task, r.model).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, r.train)
        configure_runtime(self.model, self.device)
        if r.train.scheduler.type == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                self.optimizer, step_size=r.train.scheduler.step_size, gamma=r.train.scheduler.gamma
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
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
        if r.train.compile:
            self.net = torch.compile(self.net)
        self.mixup = mixup_distribution(self.task, r.train)

    def _save_state(self, prog: Progression, grads: bool) -> None:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": prog.__dict__,
            "rng_torch": torch.get_rng_state(),
            "rng_python": random.getstate(),
            # Gradients accumulated since the last optimiser step (Ctrl-C between micro-batches).
            "grads": {
                n: p.grad.detach().cpu() for n, p in self.model.named_parameters() if p.grad is not None
            }
            if grads
            else {},
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        with atomic_output(self.out / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def _load_state(self) -> Progression:
        from safetensors.torch import load_file

        last = self.out / "last.safetensors"
        state_file = self.out / STATE_FILE
        if not last.is_file() or not state_file.is_file():
            raise ValueError(f"{self.out}: nothing to resume (no last.safetensors / {STATE_FILE})")
        self.model.load_state_dict(load_file(str(last), device=str(self.device)), strict=False)
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate(state["rng_python"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        params = dict(self.model.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(self.device)
        return Progression(**state["progress"])

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        r = self.recipe
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Only one process may write a missing synthetic dataset; the others wait for it.
            ensure_data(r, self.data_dir, self.console, self.show_progress)
        dist_utils.barrier()
        self._build()
        prog = self._load_state() if resume else Progression()
        if self.is_main:
            atomic_write_bytes(self.out / "recipe.yaml", recipe_to_yaml(r).encode())
            if not resume:
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        batches_per_epoch = math.ceil(self.sampler.per_rank / r.train.batch_size)
        if r.train.max_steps_per_epoch:
            batches_per_epoch = min(batches_per_epoch, r.train.max_steps_per_epoch * r.train.grad_accum)
        last_val: dict[str, Any] = {}
        try:
            while prog.epoch < r.train.epochs:
                epoch_stats = self._train_epoch(prog, batches_per_epoch)
                with warnings.catch_warnings():
                    # A run resumed right after an epoch's last batch steps the schedule before any
                    # optimiser step of this process; the order is right across the two processes.
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                prog.epoch += 1
                prog.batch_in_epoch = 0
                prog.epoch_loss_sum = prog.epoch_correct = prog.epoch_counted = prog.epoch_seen = 0.0
                prog.epoch_seconds = 0.0
                last_val = self._end_of_epoch(prog, epoch_stats)
        except KeyboardInterrupt:
            if self.is_main:
                self._save_model("last.safetensors", {"interrupted_at": prog.__dict__})
                self._save_state(prog, grads=True)
                self.console.print(
                    f"[yellow]interrupted at epoch {prog.epoch + 1}, batch {prog.batch_in_epoch}: "
                    f"state saved; continue with 'dgsct train --output {self.out} --resume'"
                )
            raise
        finally:
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
        }

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
        )
        self.model.train()
        start = time.perf_counter() - prog.epoch_seconds
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
                last_of_step = (i + 1) % accum == 0 or i + 1 == batches_per_epoch
                loss, out = self._forward_backward(batch, sync=last_of_step, accum=accum)
                if last_of_step:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    prog.global_step += 1
                prog.batch_in_epoch = i + 1
                n = batch["frames"].shape[0]
                c, k = self.task.batch_accuracy(out, batch)
                # Running totals live in `prog`, so a mid-epoch resume logs the whole epoch.
                prog.epoch_loss_sum += loss * n
                prog.epoch_correct += c
                prog.epoch_counted += k
                prog.epoch_seen += n
                prog.epoch_seconds = time.perf_counter() - start
                rate = prog.epoch_seen / max(prog.epoch_seconds, 1e-9)
                accuracy = 100 * prog.epoch_correct / max(prog.epoch_counted, 1)
                bar.update(
                    job,
                    advance=1,
                    info=f"loss {prog.epoch_loss_sum / prog.epoch_seen:.4f}  acc {accuracy:.1f}%  {rate:.1f} samples/s",
                )
                if self.interrupt_after_batches is not None:
                    self.interrupt_after_batches -= 1
                    if self.interrupt_after_batches <= 0:
                        self.interrupt_after_batches = None
                        raise KeyboardInterrupt
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

    def _forward_backward(self, batch: dict[str, Any], sync: bool, accum: int) -> tuple[float, dict]:
        no_sync = getattr(self.net, "no_sync", None)
        with no_sync() if (no_sync is not None and not sync) else nullcontext():
            loss, out = training_loss(
                self.net,
                self.task,
                self.loss_cfg,
                batch,
                self.device,
                self.recipe.train.precision,
                self.mixup,
            )
            (loss / accum).backward()
        return float(loss.detach()), out

    def _save_model(self, name: str, metrics: dict[str, Any]) -> None:
        save_checkpoint(self.model, self.recipe, self.out / name, full=False, metrics=metrics)

    def _end_of_epoch(self, prog: Progression, stats: dict[str, float]) -> dict[str, Any]:
        r = self.recipe
        val: dict[str, Any] = {}
        if self.is_main:
            if len(self.val_set):
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
                )
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
            self._save_model("last.safetensors", summary)
            atomic_write_json(self.out / "last.json", summary)
            if improved:
                self._save_model("best.safetensors", summary)
                atomic_write_json(self.out / "best.json", summary)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self._save_state(prog, grads=False)
            shown = (
                f"{self.task.selection_metric} {metric:.2f}" if metric is not None else "no validation split"
            )
            self.console.print(
                f"epoch {prog.epoch}/{r.train.epochs}: train loss {stats['train_loss']:.4f}, "
                f"acc {stats['train_accuracy']:.1f}%, {stats['samples_per_second']:.1f} samples/s; val {shown}"
                + (" [green](best)" if improved else "")
            )
        dist_utils.barrier()
        prog.best_metric = dist_utils.broadcast_object(prog.best_metric)
        return val
