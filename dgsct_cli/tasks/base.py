"""Tasks as plug-ins: everything that differs between AVE, AVVP, AVQA, ... lives in a ``Task``.

A task owns its head (and head config), loss, metrics, model call, dataset(s), synthetic dataset,
bench batch, prepare subcommand, trainable set and release-checkpoint layout. Training,
evaluation, extraction, benchmarking and the CLI look tasks up here and never branch on a name.
Adding a task is a subclass of :class:`Task`, registered with :func:`register_task` (see the
README, "Adding a task").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .configs import TASK_CONFIGS, TaskConfigs

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch import nn
    from torch.utils.data import Dataset

    from ..data.manifest import PreparedCache
    from ..data.video import ClipWindow
    from ..models.dgsct import ModelConfig

__all__ = [
    "DataInfo",
    "Evaluator",
    "PredictContext",
    "ReleaseLayout",
    "Task",
    "TASKS",
    "available_tasks",
    "get_task",
    "heard_text",
    "label_runs",
    "prepare_command",
    "prepare_commands",
    "register_task",
    "sample_ids",
]


class Evaluator(Protocol):
    """Accumulates model outputs over a split and computes the task's metrics."""

    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None: ...

    def compute(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DataInfo:
    """What a task's model needs to know about the prepared data it runs on."""

    dataset: str
    class_names: list[str]
    background_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. AVQA's vocabularies

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ReleaseLayout:
    """How the release saved this task's model: a key only its checkpoints have (detects the task
    of a file), keys of modules it builds but never runs (regex -> reason), a key rename applied
    first, and, for layouts that are not the main tasks' (``swin.``, ``htsat.``, adapters, head),
    ``map_state(state, model, unused) -> (our state, dropped release keys)``; ``matches`` and
    ``configure`` as commented below."""

    marker: str
    unused_keys: dict[str, str] = field(default_factory=dict)
    rename: Callable[[str], str] | None = None
    map_state: Callable[[dict, Any, dict[str, str]], tuple[dict, list[str]]] | None = None
    # Tasks that share a layout (and so a marker) tell their files apart: ``matches(state)``.
    matches: Callable[[dict], bool] | None = None
    # ``configure(model_cfg, options) -> model_cfg``: what the loader's keyword options (files the
    # state dict does not hold) change in the model config; None: the loader takes no options.
    configure: Callable[[Any, dict[str, Any]], Any] | None = None
    # ``release_name(our key) -> the file's key``, for messages about missing/unexpected keys
    # (None: the main layout's spelling when ``map_state`` is None, else ours).
    release_name: Callable[[str], str] | None = None


@dataclass(frozen=True)
class OtherRelease:
    """Another method's published model of a task (LAVisH's AVE ``MMIL_Net``), read with its own
    built-in recipe: ``load_official_checkpoint(name, ...)`` for a name in ``Task.other_releases``."""

    task: str
    recipe: str
    layout: ReleaseLayout
    description: str


@dataclass
class PredictContext:
    """One of the user's clips as ``dgsct predict`` sees it: its model windows (decoded like
    ``prepare`` decodes), the classes the model knows, and the command's options (``question``,
    ``r2plus1d_weights``, ...)."""

    path: Path
    windows: list[ClipWindow]
    duration: float
    info: DataInfo
    options: dict[str, Any] = field(default_factory=dict)
    whole_clip: bool = False  # one window spread over the whole clip (the task's samples are videos)
    # What a task keeps between summarize_prediction and draw_prediction that is not JSON (masks).
    arrays: dict[str, Any] = field(default_factory=dict)

    def seconds(self) -> int | None:
        """Whole seconds the windows cover, or None for a clip shorter than one window (tiled
        into it) or read whole: then its segments are not seconds."""
        if self.whole_clip:
            return None
        segments = self.windows[0].frames.shape[0]
        last = max(w.start for w in self.windows) + segments
        return last if len(self.windows) > 1 or self.duration >= segments - 1e-6 else None

    @property
    def silent(self) -> bool:
        """The clip has no audio track: the model heard silence."""
        return any(w.silent for w in self.windows)

    @property
    def tiled(self) -> bool:
        """A clip shorter than the model's window, read as one window (frames spread over it,
        its audio repeated end to end)."""
        return not self.whole_clip and self.seconds() is None

    def timeline_end(self) -> float:
        """Where a picture's time axis ends: the seconds the windows cover, or the clip's length."""
        seconds = self.seconds()
        return float(seconds) if seconds is not None else float(self.duration)

    def notes(self) -> list[str]:
        """What a reader of the table, the JSON or the picture must know about how the clip was read."""
        out = []
        if self.tiled:
            segments = self.windows[0].frames.shape[0]
            out.append(
                f"the clip ({self.duration:.2f} s) is shorter than the model's {segments}-s window: its "
                f"{segments} segments take frames spread over the clip and 1-s pieces of its audio "
                "repeated end to end (each segment's frame time and audio say what it saw)"
            )
        if self.silent:
            out.append("the clip has no audio track: the model heard silence")
        return out

    def sources(self, count: int) -> list[dict[str, Any]]:
        """What each of the ``count`` reported segments saw in the clip: ``frame_time`` (seconds)
        and ``audio`` (the ``[start, end]`` stretches it heard, seconds; empty for silence). Per
        second of a long clip, from the first window that covers that second."""
        seconds = self.seconds()
        picks = []
        for t in range(count):
            if seconds is None:
                window, k = self.windows[0], t
            else:
                window = next(w for w in self.windows if w.start <= t < w.start + w.frames.shape[0])
                k = t - window.start
            frame = None if window.frame_times is None else float(window.frame_times[k])
            heard = [] if window.audio_spans is None else [list(span) for span in window.audio_spans[k]]
            picks.append({"frame_time": frame, "audio": heard})
        return picks

    def spans(self, count: int) -> list[tuple[float, float]]:
        """Time span (seconds) of each of the ``count`` reported segments."""
        seconds = self.seconds()
        if seconds is not None:
            return [(float(s), float(s + 1)) for s in range(seconds)]
        return [(t * self.duration / count, (t + 1) * self.duration / count) for t in range(count)]

    def per_second(self, per_window: list[torch.Tensor]) -> torch.Tensor:
        """Per-second values from each window's ``[segments, ...]`` values, averaging windows
        that overlap on a second; a clip shorter than a window keeps the window's segments."""
        import torch

        seconds = self.seconds()
        if seconds is None:
            return per_window[0]
        shape = per_window[0].shape[1:]
        total = torch.zeros(seconds, *shape)
        count = torch.zeros(seconds)
        for w, values in zip(self.windows, per_window, strict=True):
            total[w.start : w.start + values.shape[0]] += values
            count[w.start : w.start + values.shape[0]] += 1
        return total / count.clamp(min=1).view(-1, *([1] * len(shape)))


def sample_ids(batch: dict[str, Any], dataset: Any) -> list[str]:
    """The ids of a batch's samples (its ``index`` into the dataset)."""
    return [str(dataset.sample_ids[int(i)]) for i in batch["index"].view(-1).tolist()]


def heard_text(spans: list[list[float]]) -> str:
    """A segment's audio for a table: ``3-4``, ``3-3.2 + 0-0.8`` (a tiled clip wraps), ``silence``."""
    if not spans:
        return "silence"
    return " + ".join(f"{a:g}-{b:g}" for a, b in spans)


def label_runs(labels: list[str], spans: list[tuple[float, float]], skip: str | None = None) -> list[dict]:
    """Maximal runs of equal labels over consecutive spans as ``{label, start, end}``."""
    events: list[dict] = []
    for label, (start, end) in zip(labels, spans, strict=True):
        if events and events[-1]["label"] == label and abs(events[-1]["end"] - start) < 1e-6:
            events[-1]["end"] = end
        else:
            events.append({"label": label, "start": start, "end": end})
    return [e for e in events if e["label"] != skip]


class Task:
    """Base class of a task plug-in; subclasses set the class attributes and override hooks."""

    name: str = ""
    description: str = ""
    head_config: type = object  # dataclass validated from recipe ``model.head``
    loss_config: type = object  # dataclass validated from recipe ``loss``
    # Manifest ``dataset`` names this task reads (a checkpoint of this task refuses other data).
    datasets: tuple[str, ...] = ()
    default_num_classes: int | None = None  # when neither the recipe nor data says (bench, info)
    selection_metric: str = "accuracy"  # key of the evaluator's metrics that picks ``best``
    select_ties: bool = False  # a later epoch with an equal selection metric replaces the best
    use_mixup: bool = False  # training mixes log-mels across the batch (release: not AVE)
    release: ReleaseLayout | None = None
    # Other methods' published models of this task, by release layout name (``ave-lavish``).
    other_releases: dict[str, OtherRelease] = {}
    recipe: str | None = None  # the built-in recipe for release checkpoints of this task
    # Other label kinds segment_labels/label_names offer besides the default (e.g. AVQA's
    # "answer" and "type"): ``extract --labels`` and ``visualize tsne --labels`` choose one.
    label_kinds: tuple[str, ...] = ()
    # How ``dgsct predict`` reads a user's clip: the frame rule its data was prepared with (a name
    # in ``data.video.FRAME_RULES``), and whether a sample is the whole clip (AVQA) rather than
    # windows of ``model.num_segments`` seconds.
    frame_rule: str = "second_centres"
    predict_whole_clip: bool = False
    # The ``dgsct predict`` options the task reads (``question``, ``r2plus1d_weights``); giving
    # another is refused rather than silently ignored.
    predict_options: tuple[str, ...] = ()
    # ``dgsct compare``: the metrics it tabulates, as (metrics key, column name) (empty: the
    # selection metric), and the paper's published test numbers per method, by metrics key (the
    # method names the adapter kinds give: "DG-SCT", "LAVisH", "LAVisH*"; a list holds several
    # published figures of one method).
    comparison_metrics: tuple[tuple[str, str], ...] = ()
    published: dict[str, dict[str, float | list[float]]] = {}

    @property
    def paper_results(self) -> dict[str, float]:
        """The paper's DG-SCT test numbers of the full-size model, by metric key (model cards print
        them beside a run's own); empty where the task has none."""
        row = self.published.get("DG-SCT") if isinstance(self.published, dict) else None
        return dict(row) if isinstance(row, dict) else {}

    # -- model -----------------------------------------------------------------------------------
    def resolve_head(self, head_cfg: Any, data: DataInfo | None, where: str = "recipe") -> Any:
        """Fill what the head config leaves to the data (``num_classes`` None -> the data's)."""
        from dataclasses import replace

        num = getattr(head_cfg, "num_classes", "absent")
        if num == "absent":
            return head_cfg
        if data is not None and num is not None and num != data.num_classes:
            raise ValueError(
                f"{where}: model.head.num_classes is {num} but the {data.dataset} data has "
                f"{data.num_classes} classes; remove the key to take the data's"
            )
        if num is None:
            num = data.num_classes if data is not None else self.default_num_classes
        return replace(head_cfg, num_classes=num)

    def build_head(self, visual_dim: int, audio_dim: int, cfg: Any, model_cfg: ModelConfig) -> nn.Module:
        raise NotImplementedError

    def is_trainable(self, name: str, model_cfg: ModelConfig) -> bool:
        """Which parameters train: by default the 48 adapters and the head (encoders frozen)."""
        return name.startswith("head.") or "_adapter_blocks_p" in name

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of the model's call for ``batch``."""
        return {"frames": batch["frames"], "audio": batch["audio"]}

    def forward(self, model: nn.Module, batch: dict[str, Any], mix_lambda: torch.Tensor | None = None):
        """The model call for one batch (the training step, evaluation, benchmarks)."""
        return model(**self.model_inputs(batch), mix_lambda=mix_lambda)

    # -- data ------------------------------------------------------------------------------------
    def data_info(self, cache: PreparedCache) -> DataInfo:
        return DataInfo(cache.dataset, cache.class_names, cache.background_index)

    def open_dataset(
        self, cache: PreparedCache, split: str, model_cfg: ModelConfig, data_cfg: Any
    ) -> Dataset:
        """The dataset of ``split``: by default one item per sample, frames normalised with the
        visual tower's statistics and each audio segment tiled ``data_cfg.segment_tiling`` times."""
        from ..data.datasets import SegmentDataset
        from ..models.encoders.base import get_family

        if getattr(data_cfg, "shots", None) is not None:
            raise ValueError(f"task {self.name!r} has no K-shot training subsets (data.shots)")
        mean, std = get_family(model_cfg.family).normalization(model_cfg.visual)
        return SegmentDataset(
            cache,
            split,
            image_size=model_cfg.input_size or model_cfg.visual.img_size,  # the model resizes
            segment_tiling=data_cfg.segment_tiling,
            sample_rate=model_cfg.audio.sample_rate,
            mean=mean,
            std=std,
        )

    def write_synthetic(
        self, out: Path, videos: int, image_size: int, progress: bool, console: Console | None
    ) -> None:
        """Write a small learnable synthetic dataset and prepare it into the cache ``out``."""
        raise ValueError(f"task {self.name!r} has no synthetic dataset")

    # The ``dgsct prepare <prepare_name>`` command (a Typer command function), if the task has one.
    prepare_name: str | None = None
    prepare_help: str = ""

    def prepare_command(self) -> Callable[..., None] | None:
        return None

    def prepare_hint(self) -> str:
        """What follows ``dgsct prepare`` to make this task's data (for messages)."""
        return self.prepare_name or self.name

    # -- training and evaluation -----------------------------------------------------------------
    def bench_batch(
        self, model_cfg: ModelConfig, data_cfg: Any, batch_size: int, generator
    ) -> dict[str, Any]:
        """A random batch with the shapes of the recipe and every key the model and loss read."""
        import torch

        t, s = model_cfg.num_segments, model_cfg.input_size or model_cfg.visual.img_size
        samples = model_cfg.audio.sample_rate * data_cfg.segment_tiling
        return {
            "frames": torch.randn(batch_size, t, 3, s, s, generator=generator),
            "audio": torch.randn(batch_size, t, samples, generator=generator) * 0.1,
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], cfg: Any) -> torch.Tensor:
        raise NotImplementedError

    def batch_accuracy(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> tuple[torch.Tensor | int, torch.Tensor | int]:
        """Running (correct, counted) for the training progress bar: numbers or 0-dim tensors, best
        left on the device (the trainer reads them back a few batches at a time; ``int()`` here
        would wait for the device every batch)."""
        return 0, 0

    def make_evaluator(self, dataset: Any) -> Evaluator:
        raise NotImplementedError

    def metrics_table(self, metrics: dict[str, Any]) -> Table:
        raise NotImplementedError

    def prediction_rows(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], dataset: Any
    ) -> list[dict[str, Any]]:
        """``dgsct eval --predictions``: one JSON-able row per sample of the batch, ``id`` first
        (``dataset.sample_ids[batch["index"][i]]``), the prediction beside its ground truth."""
        raise ValueError(f"task {self.name!r} writes no per-sample predictions (--predictions)")

    def segment_labels(self, batch: dict[str, Any], kind: str | None = None) -> torch.Tensor:
        """Per-segment labels ``[B, T]`` for feature extraction and t-SNE colours (``kind``: one
        of ``label_kinds``; only passed when the user picks one)."""
        raise NotImplementedError

    # -- predictions on a user's clip (``dgsct predict``) ----------------------------------------
    def default_data_info(self, num_classes: int | None) -> DataInfo | None:
        """The classes of a model that carries none (a release checkpoint): the task's dataset's."""
        return None

    def predict_inputs(self, ctx: PredictContext, window: int) -> dict[str, torch.Tensor]:
        """Model inputs of window ``window`` besides frames and audio (e.g. 3-D features, a question)."""
        return {}

    def split_window_outputs(
        self, outputs: dict[str, torch.Tensor], count: int
    ) -> list[dict[str, torch.Tensor]]:
        """One dict per window from a batch of ``count`` windows' outputs: by default the outputs
        whose first dimension is the batch (a task with per-frame rows regroups them)."""
        return [
            {k: v[j].float().cpu() for k, v in outputs.items() if v.dim() and v.shape[0] == count}
            for j in range(count)
        ]

    def summarize_prediction(
        self, ctx: PredictContext, outputs: list[dict[str, torch.Tensor]]
    ) -> dict[str, Any]:
        """What a person wants to see of one clip, as JSON-able data, from each window's outputs."""
        raise ValueError(f"task {self.name!r} cannot predict on a clip yet")

    def prediction_table(self, summary: dict[str, Any]) -> Table:
        raise NotImplementedError

    def draw_prediction(self, ctx: PredictContext, summary: dict[str, Any], path: Path) -> None:
        """Write a PNG of the prediction (e.g. a timeline under sampled frames)."""
        raise NotImplementedError

    def label_names(self, dataset: Any, kind: str | None = None) -> list[str]:
        """Names of the values :meth:`segment_labels` returns (t-SNE legends)."""
        from ..data.manifest import label_names

        return label_names(dataset.class_names, dataset.background_index)

    def draw_predictions(
        self,
        model: nn.Module,
        dataset: Any,
        out: Path,
        *,
        limit: int | None,
        device: torch.device,
        precision: str,
        batch_size: int,
        console: Console | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Draw the model's predictions on ``dataset`` into the folder ``out`` (``dgsct visualize
        masks``): one image per sample (at most ``limit``) and an index page. Returns a summary
        (``{"images": [...], "index": path}``)."""
        raise ValueError(f"task {self.name!r} has no prediction figures (it predicts no masks)")


TASKS: dict[str, Task] = {}

# Built-in tasks by module; importing a module registers its task. The CLI reads the prepare
# command names here so that ``dgsct --help`` imports no task (and no torch).
BUILTIN_TASKS = {
    "ave": "dgsct_cli.tasks.ave",
    "avvp": "dgsct_cli.tasks.avvp",
    "fewshot-ave": "dgsct_cli.tasks.fewshot",
    "fewshot-ave-cls": "dgsct_cli.tasks.fewshot",
    "fewshot-llp-cls": "dgsct_cli.tasks.fewshot",
    "vggsound40k": "dgsct_cli.tasks.vggsound40k",
    "avs-s4": "dgsct_cli.tasks.avs",
    "avs-ms3": "dgsct_cli.tasks.avs",
    "avqa": "dgsct_cli.tasks.avqa",
    "avqa-grounding": "dgsct_cli.tasks.avqa",
}
BUILTIN_PREPARE = {
    "ave": ("ave", "Prepare the AVE dataset (or a synthetic stand-in) for training and evaluation."),
    "avvp": (
        "avvp",
        "Prepare the LLP dataset for AVVP (or a synthetic stand-in), with its 3-D visual features.",
    ),
    "vggsound40k": (
        "vggsound40k",
        "Prepare VGG-Sound(40K) (141 classes + background, per-second labels) for pre-training.",
    ),
    "avs": ("avs-s4", "Prepare AVSBench S4 or MS3 (or a synthetic stand-in) for audio-visual segmentation."),
    "avqa": (
        "avqa",
        "Prepare MUSIC-AVQA for AVQA (or a synthetic stand-in): questions, vocabularies, frames, audio.",
    ),
}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (a later task of the same name replaces the earlier one)."""
    if not task.name:
        raise ValueError("a task needs a name")
    TASKS[task.name] = task
    # Recipes are resolved from the torch-free table (tasks/configs.py).
    TASK_CONFIGS[task.name] = TaskConfigs(task.head_config, task.loss_config)
    return task


def _load_builtin(name: str | None = None) -> None:
    for task_name, module in BUILTIN_TASKS.items():
        if (name is None or name == task_name) and task_name not in TASKS:
            importlib.import_module(module)


def get_task(name: str) -> Task:
    if name not in TASKS:
        _load_builtin(name)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return TASKS[name]


def available_tasks() -> list[str]:
    return sorted({*BUILTIN_TASKS, *TASKS})


def prepare_command(name: str) -> Callable | None:
    """The function of ``dgsct prepare NAME``: a registered task's own, else a built-in one from
    ``builtin_prepare`` without importing its task (so ``--help`` needs no torch)."""
    for task in TASKS.values():
        if task.prepare_name == name:
            return task.prepare_command()
    if name in BUILTIN_PREPARE:
        module = importlib.import_module("dgsct_cli.tasks.builtin_prepare")
        return getattr(module, f"prepare_{name}_command")
    return None


def prepare_commands() -> dict[str, tuple[str, str]]:
    """``dgsct prepare`` subcommand name -> (task name, one-line help), without importing tasks."""
    out = dict(BUILTIN_PREPARE)
    for task in TASKS.values():
        if task.prepare_name:
            out[task.prepare_name] = (task.name, task.prepare_help or task.description)
    return out
