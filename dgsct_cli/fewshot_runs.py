"""Few-shot and zero-shot runs: train a recipe on K samples per class, sweep K, pre-train, and
score a pre-trained checkpoint on another dataset's classes without training.

Nothing here names a task: a recipe's task says what its K-shot set is, which protocols it has
(``protocol_overrides``), its published numbers (``published``) and, for a pre-training task, how
its checkpoints are re-targeted (``zero_shot_target``).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from .atomic import atomic_write_json, check_writable
from .config import Recipe, load_recipe
from .runtime import apply_threads
from .tasks.base import get_task

__all__ = ["parse_shots", "plot_sweep", "run_fewshot", "run_sweep", "run_zero_shot", "with_protocol"]


def parse_shots(text: str) -> list[int]:
    """``"1,2,4,8,16"`` -> ``[1, 2, 4, 8, 16]`` (positive, distinct)."""
    try:
        shots = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(
            f"--shots {text!r}: expected comma-separated whole numbers, e.g. 1,2,4,8,16"
        ) from None
    if not shots or any(k < 1 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"--shots {text!r}: expected distinct numbers >= 1")
    return shots


def with_protocol(recipe_name: str, overrides: list[str], protocol: str | None) -> list[str]:
    """``overrides`` plus what ``protocol`` sets for the recipe's task (before the user's own)."""
    if protocol is None:
        return list(overrides)
    task = get_task(load_recipe(recipe_name, overrides).task)
    presets = getattr(task, "protocol_overrides", None)
    if presets is None:
        raise ValueError(f"task {task.name!r} has no evaluation protocols (--protocol)")
    return [*presets(protocol), *overrides]


def _evaluate_best(run: Path, data: Path, split: str, console: Console, progress: bool) -> dict[str, Any]:
    from .evaluate import evaluate
    from .factory import open_checkpoint_split

    model, recipe, _, task, dataset, device = open_checkpoint_split(run, data, split)
    return evaluate(
        model,
        dataset,
        task,
        device,
        recipe.train.eval_batch_size,
        recipe.data.num_workers,
        recipe.train.precision,
        console,
        progress,
        description=f"test {split}",
    )


def run_fewshot(
    recipe_name: str | None,
    shots: int | None,
    output: Path,
    data: Path | None = None,
    overrides: list[str] | None = None,
    protocol: str | None = None,
    test: bool = True,
    synthetic: bool = False,
    console: Console | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Train ``recipe_name`` on ``shots`` samples per class (None: the whole training split), then
    score the best checkpoint on the test split. Writes and returns ``<output>/fewshot.json``.

    ``resume`` continues an interrupted run of ``output`` with its own recipe, shots, data and
    test setting (``overrides`` apply on top, as with ``dgsct train --resume``) and then writes
    ``fewshot.json``; ``overwrite`` moves an old run in ``output`` aside (see ``Trainer``)."""
    from .runs import STATE_FILE, read_run_record
    from .train import Trainer

    console = console or Console(stderr=True)
    output = Path(output)
    if resume:
        if recipe_name is not None:
            raise ValueError(
                "--resume continues the run with its own recipe: drop --recipe "
                f"(the run's resolved recipe is {output / 'recipe.yaml'})"
            )
        if not (output / STATE_FILE).is_file():
            raise ValueError(
                f"{output}: nothing to resume (no {STATE_FILE}); start the few-shot run without --resume"
            )
        record = read_run_record(output)
        started = record.get("fewshot")
        if not isinstance(started, dict):
            raise ValueError(f"{output}: not a few-shot run (its run.json has no 'fewshot' entry)")
        overrides = list(overrides or [])
        recipe = load_recipe(str(output / "recipe.yaml"), overrides)
        if overrides:
            record = {**record, "resume_overrides": [*record.get("resume_overrides", []), *overrides]}
        shots, test = started.get("shots"), bool(started.get("test", True))
        data_dir = Path(data) if data is not None else Path(record.get("data", recipe.data.path))
        run_record = record
    else:
        if recipe_name is None:
            raise ValueError("--recipe is required (or --resume with the --output run folder to continue)")
        overrides = with_protocol(recipe_name, list(overrides or []), protocol)
        if shots is not None:
            overrides = [*overrides, f"data.shots={shots}"]
        recipe = load_recipe(recipe_name, overrides)
        data_dir = Path(data) if data is not None else Path(recipe.data.path)
        run_record = {
            "recipe": recipe.source,
            "overrides": overrides,
            "fewshot": {"shots": shots, "test": test},
        }
    trainer = Trainer(
        recipe,
        data_dir,
        output,
        console=console,
        show_progress=progress,
        run_record=run_record,
        synthetic=synthetic,
        overwrite=overwrite,
        # The command that finishes this few-shot run (the test score and fewshot.json included).
        resume_command=resume_command or f"dgsct fewshot train --output {output} --resume",
    )
    result = trainer.run(resume=resume)
    summary: dict[str, Any] = {
        "recipe": recipe.name,
        "task": recipe.task,
        "shots": shots,
        "train_samples": len(trainer.train_set),
        "protocol": getattr(recipe.model.head, "protocol", "default"),
        "selection_split": recipe.data.val_split,
        "epochs": result["epochs"],
        "best_epoch": result["best_epoch"],
        "selection_accuracy": result["best_metric"],
        "run": str(output),
    }
    if test and trainer.is_main:
        metrics = _evaluate_best(output, data_dir, recipe.data.test_split, console, progress)
        summary["test_split"] = recipe.data.test_split
        summary["test_accuracy"] = metrics[get_task(recipe.task).selection_metric]
        summary["test_metrics"] = metrics
        from .loggers import log_to_run

        log_to_run(output, {f"test/{k}": v for k, v in metrics.items()}, console=console)
    if trainer.is_main:
        atomic_write_json(output / "fewshot.json", summary)
    return summary


def plot_sweep(table: dict[str, Any], out: Path) -> Path:
    """Accuracy against shots (log2 axis), with the paper's published points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_output

    runs = [r for r in table["runs"] if r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    ax.plot(
        [r["shots"] for r in runs],
        [r["accuracy"] for r in runs],
        "o-",
        label=f"dgsct ({table['protocol']} protocol)",
    )
    published = {int(k): v for k, v in table.get("published", {}).items()}
    if published:
        ax.plot(
            list(published),
            list(published.values()),
            "*",
            markersize=14,
            color="tab:red",
            label="paper (published)",
        )
        for k, v in published.items():
            ax.annotate(f"{v:.1f}", (k, v), textcoords="offset points", xytext=(6, 4), color="tab:red")
    shots = sorted({r["shots"] for r in table["runs"]} | set(published))
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots (training samples per class)")
    ax.set_ylabel(f"{table['split']} accuracy (%)")
    ax.set_title(f"{table['task']}: {table['recipe']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


SWEEP_RECORD = "sweep_run.json"


def run_sweep(
    recipe_name: str | None,
    shots: list[int] | None,
    output: Path,
    data: Path | None = None,
    overrides: list[str] | None = None,
    protocol: str | None = None,
    json_out: Path | None = None,
    png_out: Path | None = None,
    synthetic: bool = False,
    console: Console | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Every K of ``shots`` as its own run ``<output>/K<k>``; a JSON table and a PNG of the test
    accuracy against K (``<output>/sweep.json``, ``<output>/sweep.png`` unless named).

    The sweep's settings are kept in ``<output>/sweep_run.json``; ``resume`` finishes an
    interrupted sweep with them: finished K runs are kept, an interrupted one is resumed, the
    rest are run. ``overwrite`` moves old runs in the K folders aside."""
    import json

    from .runs import STATE_FILE

    console = console or Console(stderr=True)
    output = Path(output)
    record_path = output / SWEEP_RECORD
    added = list(overrides or [])  # given with --resume: on top of the runs' own
    if resume:
        if recipe_name is not None:
            raise ValueError("--resume continues the sweep with its own recipe and shots: drop --recipe")
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{output}: nothing to resume (no {SWEEP_RECORD})") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{record_path}: damaged sweep record ({type(exc).__name__})") from None
        recipe_name, shots = record["recipe"], [int(k) for k in record["shots"]]
        overrides, protocol = [*record.get("overrides", []), *(overrides or [])], record.get("protocol")
        data = Path(data) if data is not None else (Path(record["data"]) if record.get("data") else None)
        json_out = json_out or (Path(record["json"]) if record.get("json") else None)
        png_out = png_out or (Path(record["png"]) if record.get("png") else None)
    if recipe_name is None or not shots:
        raise ValueError("--recipe and --shots are required (or --resume with the sweep's --output folder)")
    json_out = Path(json_out) if json_out is not None else output / "sweep.json"
    png_out = Path(png_out) if png_out is not None else output / "sweep.png"
    for path in (json_out, png_out):
        check_writable(path)
    recipe = load_recipe(recipe_name, with_protocol(recipe_name, list(overrides or []), protocol))
    task = get_task(recipe.task)
    if not resume:
        atomic_write_json(
            record_path,
            {
                "recipe": recipe_name,
                "shots": shots,
                "data": None if data is None else str(Path(data).resolve()),
                "overrides": list(overrides or []),
                "protocol": protocol,
                "json": str(json_out),
                "png": str(png_out),
            },
        )
    table: dict[str, Any] = {
        "recipe": recipe.name,
        "task": recipe.task,
        "protocol": getattr(recipe.model.head, "protocol", "default"),
        "selection_split": recipe.data.val_split,
        "split": recipe.data.test_split,
        "published": {str(k): v for k, v in getattr(task, "published", {}).items()},
        "runs": [],
    }
    for i, k in enumerate(shots):
        run = output / f"K{k}"
        console.print(f"[bold]{recipe.name}: {k} shot(s) (run {i + 1} of {len(shots)})", highlight=False)
        if resume and (run / "fewshot.json").is_file():
            summary = json.loads((run / "fewshot.json").read_text(encoding="utf-8"))
            console.print(f"{run}: finished before, kept", highlight=False)
        else:
            again = resume and (run / STATE_FILE).is_file()
            summary = run_fewshot(
                None if again else recipe_name,
                k,
                run,
                data=data,
                overrides=added if again else overrides,
                protocol=protocol,
                synthetic=synthetic and i == 0,
                console=console,
                progress=progress,
                overwrite=overwrite,
                resume=again,
                resume_command=f"dgsct fewshot sweep --output {output} --resume",
            )
        table["runs"].append(
            {
                "shots": k,
                "train_samples": summary["train_samples"],
                "best_epoch": summary["best_epoch"],
                "selection_accuracy": summary["selection_accuracy"],
                "accuracy": summary.get("test_accuracy"),
                "run": summary["run"],
            }
        )
        atomic_write_json(json_out, table)  # a partial table survives an interrupted sweep
    plot_sweep(table, png_out)
    _log_sweep(recipe, table, output, png_out, progress)
    return table


def _log_sweep(recipe: Recipe, table: dict[str, Any], output: Path, png: Path, progress: bool) -> None:
    """The sweep as a run of its own in the recipe's loggers (x axis: shots), with its figure."""
    from .loggers import RunLogger

    logger = RunLogger(recipe.train.loggers, output, project=recipe.train.wandb_project, quiet=not progress)
    if not logger.active:
        return
    logger.start(
        {
            "sweep": {k: v for k, v in table.items() if k != "runs"},
            "shots": [r["shots"] for r in table["runs"]],
        }
    )
    try:
        runs = sorted(table["runs"], key=lambda r: r["shots"])
        for r in runs:
            values = {f"sweep/{k}": r[k] for k in ("accuracy", "selection_accuracy", "train_samples")}
            figure = {"figures/sweep": png} if r is runs[-1] else None  # with the last row
            logger.log_row(r["shots"], {k: v for k, v in values.items() if v is not None}, figure)
    finally:
        logger.close(True)


# -- zero-shot --------------------------------------------------------------------------------------


def _retarget(recipe: Recipe, target_task: str, info, protocol: str, batch_size: int | None) -> Recipe:
    """The pre-training recipe turned into the target task's: same model, the target's classes."""
    from .schema import build_dataclass, to_dict

    spec = get_task(target_task)
    out = copy.deepcopy(recipe)
    out.task = target_task
    head = to_dict(recipe.model.head)
    head.update(num_classes=None, class_names=[], background=False, protocol=protocol)
    out.model.head = spec.resolve_head(build_dataclass(spec.head_config, head, "model.head"), info)
    out.loss = spec.loss_config()
    out.data = replace(out.data, shots=None)
    if batch_size is not None:
        out.train = replace(out.train, eval_batch_size=batch_size)
    return out


def zero_shot_model(
    checkpoint: Path,
    dataset: str,
    metric: str,
    data: Path,
    protocol: str = "default",
    batch_size: int | None = None,
    release_recipe: str | None = None,
    seed: int = 43,
):
    """``(model, target recipe, checkpoint kind)``: a pre-trained checkpoint re-targeted to ``dataset``'s
    classes (no background), ready to score with the recipe's task.

    Default: the pre-trained prompt context, everything in eval mode. ``protocol="release"``
    (zero-shot/zero_shot.py): a fresh N(0, 0.02^2) context drawn after ``torch.manual_seed(seed)``,
    the 48 adapters left in train mode (their BatchNorm on each batch's statistics) and the
    release's batch size for the target."""
    from .checkpoint import load_any_checkpoint
    from .factory import create_model, data_info, require_data_folder

    if protocol not in ("default", "release"):
        raise ValueError(f"protocol must be default or release, got {protocol!r}")
    require_data_folder(data)
    source, recipe, kind = load_any_checkpoint(
        checkpoint, load_recipe(release_recipe) if release_recipe else None
    )
    target = getattr(get_task(recipe.task), "zero_shot_target", None)
    if target is None:
        raise ValueError(
            f"{checkpoint}: a {recipe.task} checkpoint; zero-shot needs a pre-training checkpoint"
        )
    spec = target(dataset, metric)
    target_task = spec["task"]
    if batch_size is None and protocol == "release":
        batch_size = spec["release_batch_size"]
    probe = copy.deepcopy(recipe)
    probe.task = target_task
    info = data_info(probe, data, what=f"zero-shot on {dataset}")
    target_recipe = _retarget(recipe, target_task, info, protocol, batch_size)
    with torch.random.fork_rng():  # building draws fresh weights that the copy below replaces
        model = create_model(target_task, target_recipe.model, load_encoder_weights=False, data=info)
    # Every weight is class-agnostic (the prompts' token ids are not weights): a strict copy.
    model.load_state_dict(source.state_dict(), strict=True)
    del source
    apply_threads(model, target_recipe.runtime.threads)
    model.eval()
    if protocol == "release":
        # zero_shot_model.py:53 builds a new PromptLearner: the learned context is not used.
        torch.manual_seed(seed)
        with torch.no_grad():
            torch.nn.init.normal_(model.head.prompt_learner.ctx, std=model.head.cfg.ctx_std)
        # zero_shot.py:137 puts only the re-built modules in eval mode: the adapters stay in train
        # mode, so their BatchNorm uses each batch's statistics.
        for adapters in model.encoder.adapter_modules():
            adapters.train()
    model.zero_shot_published = spec.get("published")  # the paper's number, for the report
    return model, target_recipe, kind


@torch.no_grad()
def run_zero_shot(
    checkpoint: Path,
    dataset: str,
    metric: str,
    data: Path,
    split: str | None = None,
    protocol: str = "default",
    batch_size: int | None = None,
    json_out: Path | None = None,
    release_recipe: str | None = None,
    seed: int = 43,
    console: Console | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a pre-trained checkpoint on ``dataset``'s classes without training (see
    :func:`zero_shot_model`); accuracy over the whole split (zero_shot.py:131-204)."""
    from .data.datasets import make_loader
    from .factory import open_split
    from .runtime import autocast_for, progress_bar, resolve_device, to_device

    console = console or Console(stderr=True)
    if json_out is not None:
        check_writable(json_out)
    model, recipe, kind = zero_shot_model(
        checkpoint, dataset, metric, data, protocol, batch_size, release_recipe, seed
    )
    device = resolve_device(recipe.train.device)
    model.to(device)
    split = split or recipe.data.test_split
    dataset_split = open_split(recipe, data, split, what=f"zero-shot on {dataset}")
    spec = get_task(recipe.task)
    evaluator = spec.make_evaluator(dataset_split)
    evaluator.averaging = "global"  # zero_shot.py reports correct / counted over the split
    loader = make_loader(dataset_split, recipe.train.eval_batch_size, recipe.data.num_workers, device)
    with progress_bar(console, disable=not progress) as bar:
        job = bar.add_task(f"zero-shot {dataset} {metric}", total=len(loader), info="")
        for batch in loader:
            batch = to_device(batch, device)
            with autocast_for(device, recipe.train.precision):
                out = spec.forward(model, batch)
            evaluator.update({k: v.float() for k, v in out.items()}, batch)
            bar.advance(job)
    metrics = evaluator.compute()
    result = {
        "checkpoint": str(checkpoint),
        "checkpoint_kind": kind,
        "dataset": dataset,
        "metric": metric,
        "split": split,
        "protocol": protocol,
        "batch_size": recipe.train.eval_batch_size,
        "classes": len(model.head.class_names),
        "prompt_context": "fresh random" if protocol == "release" else "pre-trained",
        "adapters": "train-mode BatchNorm" if protocol == "release" else "eval mode",
        "num_samples": len(dataset_split),
        **metrics,
        "published": getattr(model, "zero_shot_published", None),
    }
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result
