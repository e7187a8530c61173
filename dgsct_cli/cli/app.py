"""The ``dgsct`` command line: thin commands that resolve a recipe and call the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    OPTIONS,
    checkpoint_command,
    command,
    configure_logging,
    console,
    epochs_done,
    err_console,
    show_progress,
)

app = typer.Typer(
    help="DG-SCT for audio-visual downstream tasks: prepare data, train, evaluate, extract, visualise.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: flags read "--resume", not "--resume <bool>" (typer's rich panels add the type),
    # and piped help is not boxed at 80 columns.
    rich_markup_mode=None,
)
recipes_app = typer.Typer(help="List and show recipes.", no_args_is_help=True, rich_markup_mode=None)
visualize_app = typer.Typer(
    help="Figures from trained checkpoints.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(recipes_app, name="recipes")
app.add_typer(visualize_app, name="visualize")


# Options shared by the commands that read a checkpoint and a prepared dataset.
CheckpointOption = Annotated[
    Path,
    typer.Option(
        "--checkpoint",
        "-c",
        help="Run folder, dgsct .safetensors, release .pt, export folder, or hf://OWNER/NAME[@REV].",
    ),
]
DataOption = Annotated[Path, typer.Option("--data", "-d", help="Prepared dataset folder.")]
SplitOption = Annotated[str, typer.Option("--split", "-s", help="Split of the prepared dataset.")]
ReleaseRecipeOption = Annotated[
    str | None, typer.Option("--recipe", "-r", help="Model recipe for a release checkpoint.")
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps; default: the recipe's."
    ),
]
LabelsOption = Annotated[
    str | None,
    typer.Option(
        "--labels", help="Which labels to store and colour by, for a task that offers several kinds."
    ),
]


@app.callback()
def _global(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks for errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and results; no progress bars."),
) -> None:
    # Also accepted after the subcommand's name (every command takes them).
    OPTIONS.quiet, OPTIONS.verbose = quiet, verbose
    configure_logging()


# -- recipes -------------------------------------------------------------------------------------


@recipes_app.command("list")
@command
def recipes_list() -> None:
    """List the built-in recipes and those in ./recipes (`recipes show R` resolves one)."""
    from ..recipe_files import builtin_recipe_dir, read_yaml, recipe_files
    from ..schema import RecipeError

    # The task is read from the YAML alone (no torch, no validation: `recipes show` checks one);
    # built-in recipes are not given their install path, so the table fits 80 columns.
    table = Table("recipe", "task", "file")
    table.columns[2].overflow = "fold"
    builtin = builtin_recipe_dir().resolve()
    for path in sorted(set(recipe_files()), key=lambda p: p.name):
        try:
            task = str(read_yaml(path).get("task", "-"))  # "-": the default task
        except RecipeError:
            task = "(unreadable)"
        where = "built-in" if path.resolve().parent == builtin else str(path)
        table.add_row(path.stem, task, where)
    console.print(table)


@recipes_app.command("show")
@command
def recipes_show(
    recipe: str = typer.Argument(..., help="Recipe name (recipes/<name>.yaml) or path."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides."),
) -> None:
    """Print the resolved recipe (defaults filled in, overrides applied)."""
    from ..config import load_recipe, recipe_to_yaml

    typer.echo(recipe_to_yaml(load_recipe(recipe, overrides or [])), nl=False)


# -- env ---------------------------------------------------------------------------------------------


@app.command("env")
@command
def env(
    json_out: bool = typer.Option(False, "--json", help="Print the facts as JSON instead of tables."),
) -> None:
    """What a bug report needs: versions, CUDA/MPS devices, CPUs, which readers import."""
    import json

    from ..environment import collect_environment

    report = collect_environment()
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    head = Table("", "", title="dgsct environment", show_header=False)
    for key in ("dgsct", "python", "platform", "machine", "cpu_count", "cpus_usable", "memory_gib"):
        head.add_row(key.replace("_", " "), str(report[key]))
    acc = report["accelerators"]
    if "error" in acc:
        head.add_row("torch", f"[red]does not import: {acc['error']}")
    else:
        head.add_row("auto device", acc["auto_device"])
        head.add_row(
            "CUDA", f"available, CUDA {acc['cuda_version']}" if acc["cuda_available"] else "not available"
        )
        for dev in acc["cuda_devices"]:
            head.add_row(
                f"  cuda:{dev['index']}", f"{dev['name']}, {dev['memory_gib']} GiB, sm {dev['capability']}"
            )
        mps = "available" if acc["mps_available"] else "built, not available" if acc["mps_built"] else "no"
        head.add_row("MPS", mps)
        head.add_row("torch threads", str(acc["torch_threads"]))
    console.print(head)
    packages = Table("package", "version", "pinned", "imports", title="dependencies")
    for name, p in report["packages"].items():
        pin = report["pins"].get(name.lower(), "")
        ok = "yes" if p["imports"] else f"[red]no: {p['error']}"
        packages.add_row(name, p["version"] or "[red]not installed", pin, ok)
    console.print(packages)
    for name, p in report["packages"].items():
        if "hint" in p:
            console.print(f"[yellow]{name}: {p['hint']}")
    readers = Table("reader", "module", "imports", title="file-format readers and optional extras")
    for what, r in report["readers"].items():
        readers.add_row(what, r["module"], "yes" if r["imports"] else "no")
    console.print(readers)


# -- info / convert --------------------------------------------------------------------------------


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


@app.command()
@command
def info(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (ave, avvp-tiny, ...) or path."),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides."),
) -> None:
    """Parameter counts (total / trainable / adapters) of a recipe's model."""
    from ..config import load_recipe
    from ..factory import build_model

    r = load_recipe(recipe, overrides or [])
    model = build_model(r, load_encoder_weights=False)
    counts = model.parameter_counts()
    table = Table(title=f"{r.name or recipe}: {r.task.upper()} model parameters")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for key in ("total", "trainable", "adapters", "visual_encoder", "audio_encoder", "head"):
        table.add_row(key.replace("_", " "), f"{counts[key]:,} ({_millions(counts[key])})")
    console.print(table)
    console.print(
        f"adapters: {len(model.encoder.pairs)} block pairs x 4 = {4 * len(model.encoder.pairs)}; "
        f"activation recompute: {'on' if model.encoder.recompute else 'off'}"
    )


@app.command()
@command
def convert(
    task: str = typer.Argument(
        ...,
        help="Release layout: a task (ave, avvp, ...: DG-SCT's release) or ave-lavish (LAVisH's AVE model).",
    ),
    release: Path = typer.Argument(..., help="The release's .pt file (torch.save(model.state_dict()))."),
    out: Path = typer.Option(..., "--out", "-o", help="Our checkpoint (.safetensors) to write."),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="Recipe to embed (default: the task's)."),
) -> None:
    """Convert a release checkpoint (DG-SCT's, or LAVisH's AVE model) to a dgsct checkpoint."""
    from ..checkpoint import save_checkpoint
    from ..config import load_recipe
    from ..convert import load_official_checkpoint, release_recipe, release_task

    r = load_recipe(recipe) if recipe else release_recipe(task)
    if r.task != release_task(task):
        raise ValueError(f"--recipe is for task {r.task}, not {release_task(task)}")
    model = load_official_checkpoint(task, release, r.model)
    save_checkpoint(model, r, out, full=True)
    console.print(f"wrote {out} ({_millions(model.parameter_counts()['total'])} parameters, task {task})")


# -- train / eval / extract ------------------------------------------------------------------------


@app.command()
@checkpoint_command
def train(
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="Recipe name (ave, ave.yaml) or path."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Prepared dataset folder (default: the recipe's data.path)."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Run folder (default: runs/<recipe>)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --output exactly as it was started (its recipe, data, overrides).",
    ),
    switch_data: bool = typer.Option(
        False, "--switch-data", help="With --resume: continue on the --data given, not the run's own."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Start a new run in an --output folder that holds one; the old run is moved to previous-<n>/.",
    ),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Write a small synthetic dataset at --data first if it has none."
    ),
    test: bool = typer.Option(
        False, "--test", help="After training, evaluate the best checkpoint on the test split."
    ),
    overrides: list[str] = typer.Argument(None, help="key.path=value overrides, e.g. train.epochs=5."),
) -> None:
    """Train a recipe's model; validation each epoch, best/last checkpoints, metrics.jsonl."""
    from ..config import load_recipe
    from ..runs import STATE_FILE, read_run_record
    from ..train import Trainer

    overrides = overrides or []
    if resume and overwrite:
        raise ValueError("--overwrite starts a new run and --resume continues one: give one of them")
    if resume:
        if output is None:
            raise ValueError("--resume needs --output RUN (the run folder to continue)")
        if not (output / STATE_FILE).is_file():
            raise ValueError(f"{output}: nothing to resume (no {STATE_FILE}); start the run without --resume")
        if recipe is not None:
            raise ValueError(
                "--resume continues the run with its own recipe: drop --recipe "
                f"(the run's resolved recipe is {output / 'recipe.yaml'}; overrides apply on top of it)"
            )
        record = read_run_record(output)
        # The run's resolved recipe (its own overrides included); new overrides (e.g. more epochs)
        # apply on top and are recorded.
        r = load_recipe(str(output / "recipe.yaml"), overrides)
        if overrides:
            record = {**record, "resume_overrides": [*record.get("resume_overrides", []), *overrides]}
        started_on = Path(record.get("data", r.data.path))
        if data is not None and data.resolve() != started_on.resolve() and not switch_data:
            raise ValueError(
                f"{output} was trained on {started_on}; --data {data} differs (add --switch-data to continue on it)"
            )
        data_dir = data if data is not None else started_on
        run_record = record
    else:
        if recipe is None:
            raise ValueError("--recipe is required (or --resume with the --output run folder to continue)")
        r = load_recipe(recipe, overrides)
        output = output or Path("runs") / (r.name or "run")
        data_dir = data or Path(r.data.path)
        run_record = {"recipe": r.source, "overrides": overrides}
    trainer = Trainer(
        r,
        data_dir,
        output,
        console=err_console,
        show_progress=show_progress(),
        run_record=run_record,
        synthetic=synthetic,
        overwrite=overwrite,
    )
    result = trainer.run(resume=resume)
    if not trainer.is_main:
        return
    best = result["best_metric"]
    console.print(
        f"done: {epochs_done(result['epochs'])}{' (early stop)' if result['stopped_early'] else ''}, best "
        f"{trainer.task.selection_metric} {best if best is None else round(best, 2)} "
        f"(epoch {result['best_epoch']}); checkpoints in {output}",
        highlight=False,
    )
    if test:
        metrics = _evaluate(output, data_dir, r.data.test_split, output / "test_metrics.json", None, None)
        from ..loggers import log_to_run

        log_to_run(output, {f"test/{k}": v for k, v in metrics.items()}, console=err_console)


def _check_writable(path: Path | None) -> None:
    """Fail before the work when an output file cannot be written there."""
    if path is None:
        return
    from ..atomic import check_writable

    check_writable(path)


def _open_checkpoint(checkpoint: Path, data: Path, split: str, recipe: str | None, device: str | None = None):
    """(model on its device, recipe, checkpoint kind, task, dataset split, device)."""
    from ..config import load_recipe
    from ..factory import open_checkpoint_split

    return open_checkpoint_split(checkpoint, data, split, load_recipe(recipe) if recipe else None, device)


def _evaluate(
    checkpoint: Path,
    data: Path,
    split: str,
    json_out: Path | None,
    recipe: str | None,
    batch_size: int | None,
    device_name: str | None = None,
    predictions_out: Path | None = None,
) -> dict:
    from ..evaluate import evaluate, write_predictions

    _check_writable(json_out)
    _check_writable(predictions_out)
    model, r, kind, task, dataset, device = _open_checkpoint(checkpoint, data, split, recipe, device_name)
    rows: list[dict] | None = [] if predictions_out is not None else None
    metrics = evaluate(
        model,
        dataset,
        task,
        device,
        batch_size or r.train.eval_batch_size,
        r.data.num_workers,
        r.train.precision,
        err_console,
        show_progress(),
        description=f"eval {split}",
        predictions=rows,
    )
    result = {
        "task": r.task,
        "split": split,
        "checkpoint": str(checkpoint),
        "checkpoint_kind": kind,
        **metrics,
    }
    console.print(task.metrics_table(metrics))
    console.print(
        f"{r.task.upper()} {split}: {len(dataset)} samples, {task.selection_metric} = {metrics[task.selection_metric]:.2f}"
    )
    if json_out is not None:
        from ..atomic import atomic_write_json

        atomic_write_json(json_out, result)
    if predictions_out is not None:
        write_predictions(predictions_out, rows)
        console.print(f"wrote {len(rows)} per-sample predictions to {predictions_out}", highlight=False)
    return result


@app.command("eval")
@checkpoint_command
def eval_(
    checkpoint: CheckpointOption,
    data: DataOption,
    split: SplitOption = "test",
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics here (JSON)."),
    recipe: ReleaseRecipeOption = None,
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Samples per forward pass (default: the recipe's train.eval_batch_size).",
    ),
    device: DeviceOption = None,
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="Write one JSON line per sample: its predictions beside the ground truth (.jsonl).",
    ),
) -> None:
    """Evaluate a checkpoint on a split; prints a table and optionally writes JSON."""
    _evaluate(checkpoint, data, split, json_out, recipe, batch_size, device, predictions)


@app.command()
@command
def compare(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Run folders, dgsct .safetensors or release .pt files, all of one task."
    ),
    data: DataOption = ...,
    split: SplitOption = "test",
    out: list[Path] = typer.Option(
        None, "--out", "-o", help="Also write the table: .md, .json or .png (a bar chart); repeatable."
    ),
    recipe: ReleaseRecipeOption = None,
    batch_size: int | None = typer.Option(None, "--batch-size"),
    device: DeviceOption = None,
) -> None:
    """Evaluate several runs on one split: one table (method, adapters, trainable parameters, the
    task's metrics) with the paper's published numbers beside each method."""
    from ..compare import OUTPUT_SUFFIXES, compare_checkpoints, comparison_table, write_comparison
    from ..config import load_recipe

    for path in out or []:
        if path.suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"--out {path}: expected a .md, .json or .png file")
        _check_writable(path)
    result = compare_checkpoints(
        checkpoints,
        data,
        split,
        load_recipe(recipe) if recipe else None,
        device,
        batch_size,
        err_console,
        show_progress(),
    )
    console.print(comparison_table(result))
    for path in out or []:
        console.print(f"wrote {write_comparison(result, path)}")


def _features(
    checkpoint: Path,
    data: Path,
    split: str,
    use_adapters: bool,
    recipe: str | None = None,
    labels: str | None = None,
    device_name: str | None = None,
) -> dict:
    from ..extract import extract_features

    model, r, _, task, dataset, device = _open_checkpoint(checkpoint, data, split, recipe, device_name)
    feats = {}
    for flag in (True, False) if use_adapters is None else (use_adapters,):
        feats[flag] = extract_features(
            model,
            dataset,
            task,
            device,
            flag,
            r.train.eval_batch_size,
            r.data.num_workers,
            r.train.precision,
            err_console,
            show_progress(),
            label_kind=labels,
        )
    return feats


@app.command()
@checkpoint_command
def extract(
    checkpoint: CheckpointOption,
    data: DataOption,
    split: SplitOption = "test",
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz file."),
    adapters: bool = typer.Option(
        True, "--adapters/--no-adapters", help="--no-adapters: the frozen encoders' own features."
    ),
    recipe: ReleaseRecipeOption = None,
    labels: LabelsOption = None,
    device: DeviceOption = None,
) -> None:
    """Per-segment pooled visual/audio features with labels and sample ids, to one .npz file."""
    from ..extract import save_features

    _check_writable(out if out.suffix == ".npz" else out.with_name(out.name + ".npz"))
    feats = _features(checkpoint, data, split, adapters, recipe, labels, device)[adapters]
    path = save_features(out, feats)
    console.print(
        f"wrote {path}: visual {tuple(feats['visual'].shape)}, audio {tuple(feats['audio'].shape)}, "
        f"{len(feats['sample_ids'])} samples ({'with' if adapters else 'without'} DG-SCT adapters)"
    )


@visualize_app.command("tsne")
@checkpoint_command
def tsne(
    checkpoint: CheckpointOption,
    data: DataOption,
    split: SplitOption = "test",
    out: Path = typer.Option(..., "--out", "-o", help="Figure (.png); silhouettes go to <out>.json."),
    modality: str = typer.Option("both", "--modality", help="visual, audio or both."),
    seed: int = typer.Option(0, "--seed"),
    recipe: ReleaseRecipeOption = None,
    labels: LabelsOption = None,
    device: DeviceOption = None,
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="A trained run without adapters (model.adapter.kind: none), drawn beside the checkpoint's features.",
    ),
) -> None:
    """t-SNE of segment features: the checkpoint's model with its adapters removed, a trained
    baseline (--baseline), and the model itself, with a silhouette score per panel."""
    import numpy as np

    from ..viz.tsne import FeaturePanel, plot_tsne_panels

    if modality not in ("visual", "audio", "both"):
        raise ValueError(f"--modality must be visual, audio or both, got {modality!r}")
    _check_writable(out)
    feats = _features(checkpoint, data, split, None, recipe, labels, device)
    base, ours = feats[False], feats[True]
    labels_flat = ours["segment_labels"].reshape(-1)
    columns = [("adapters removed", base)]
    if baseline is not None:
        trained = _features(baseline, data, split, True, recipe, labels, device)[True]
        if not (
            np.array_equal(trained["sample_ids"], ours["sample_ids"])
            and np.array_equal(trained["segment_labels"], ours["segment_labels"])
        ):
            raise ValueError(f"--baseline {baseline}: its {split} samples are not the checkpoint's")
        name = Path(baseline).name if Path(baseline).is_dir() else Path(baseline).stem
        columns.append((f"trained {trained['method']} ({name})", trained))
    columns.append((str(ours["method"]), ours))
    panels = []
    for mod in ("visual", "audio") if modality == "both" else (modality,):
        for title, f in columns:
            panels.append(FeaturePanel(f"{mod}: {title}", f[mod].reshape(len(labels_flat), -1), labels_flat))
    background = int(ours["background_index"])
    background = None if background < 0 else background
    class_names = [str(c) for c in ours["label_names"]]
    scores = plot_tsne_panels(
        panels, class_names, out, background_index=background, seed=seed, title=f"{split} split"
    )
    table = Table(
        "panel", "points", "silhouette (features)", "silhouette (t-SNE)", title="t-SNE: separability"
    )
    for title, s in scores.items():
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(title, str(s["num_points"]), fmt(s["silhouette"]), fmt(s["silhouette_tsne"]))
    console.print(table)
    console.print(f"wrote {out} and {Path(out).with_suffix('.json')}")
    from ..loggers import log_figures

    log_figures(checkpoint, {"figures/tsne": out}, err_console)


# -- predict / attention on a user's clips ----------------------------------------------------------


def _load_for_clips(checkpoint: Path, recipe: str | None, device_name: str | None = None):
    """(model on its device, recipe, task, data info, device) for predictions on clips."""
    from ..checkpoint import load_any_checkpoint, resolve_run_checkpoint
    from ..config import load_recipe
    from ..predict import checkpoint_data_info
    from ..runtime import resolve_device
    from ..tasks.base import get_task

    path = resolve_run_checkpoint(checkpoint)
    model, r, _ = load_any_checkpoint(path, load_recipe(recipe) if recipe else None)
    task = get_task(r.task)
    info = checkpoint_data_info(path, task, getattr(r.model.head, "num_classes", None))
    device = resolve_device(device_name or r.train.device)
    return model.to(device), r, task, info, device


def _clip_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem or "clip", 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


@app.command()
@checkpoint_command
def predict(
    videos: list[Path] = typer.Argument(..., help="Clips to predict on (mp4 or any format FFmpeg reads)."),
    checkpoint: CheckpointOption = ...,
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for a PNG and a JSON per clip."),
    json_out: Path | None = typer.Option(None, "--json", help="Every clip's prediction in one JSON file."),
    stride: int | None = typer.Option(
        None,
        "--stride",
        min=1,
        help="Seconds between windows of a clip longer than the model's (default: its length).",
    ),
    question: str | None = typer.Option(
        None, "--question", help="The question to answer (question-answering models)."
    ),
    r2plus1d_weights: Path | None = typer.Option(
        None,
        "--r2plus1d-weights",
        help="torchvision r2plus1d_18 state dict (models that read 3-D visual features).",
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Windows per forward pass."),
    recipe: ReleaseRecipeOption = None,
    device: DeviceOption = None,
) -> None:
    """Run a checkpoint on your own clips: a table per clip, and a picture and JSON with --out."""
    import json

    from ..atomic import atomic_write_json
    from ..predict import predict_clip
    from ..runtime import progress_bar

    _check_writable(json_out)
    if out is not None:
        _check_writable(out / "x.png")
    model, r, task, info, device = _load_for_clips(checkpoint, recipe, device)
    options = {"question": question, "r2plus1d_weights": r2plus1d_weights}
    for name, value in options.items():
        if value is not None and name not in task.predict_options:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag}: {task.name} models do not read it")
    if stride is not None and task.predict_whole_clip:
        raise ValueError(f"--stride: {task.name} models read the whole clip as one sample")
    results, used = [], set()
    with progress_bar(err_console, disable=not show_progress()) as bar:
        job = bar.add_task("predicting", total=len(videos), info="")
        for video in videos:
            bar.update(job, info=video.name)
            result = predict_clip(
                model, task, r.data, info, video, options, device, r.train.precision, stride, batch_size
            )
            bar.advance(job)
            if result.summary is None:
                err_console.print(f"[yellow]skipped {video}: {result.error}", highlight=False)
                results.append({"clip": str(video), "error": result.error})
                continue
            console.print(task.prediction_table(result.summary))
            for note in result.summary.get("notes", []):
                console.print(f"note: {note}", highlight=False, markup=False)
            results.append(result.summary)
            if out is not None:
                stem = _clip_stem(video, used)
                task.draw_prediction(result.context, result.summary, out / f"{stem}.png")
                atomic_write_json(out / f"{stem}.json", result.summary)
    if json_out is not None:
        atomic_write_json(json_out, {"checkpoint": str(checkpoint), "task": r.task, "clips": results})
    done = sum("error" not in x for x in results)
    if done == 0:
        raise ValueError(f"no clip could be used ({json.dumps([x['error'] for x in results])})")
    if out is not None:
        console.print(f"wrote {done} picture(s) and JSON file(s) to {out}", highlight=False)


@visualize_app.command("attention")
@checkpoint_command
def attention(
    checkpoint: CheckpointOption,
    videos: list[Path] = typer.Argument(None, help="Clips (or use --data/--split)."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Prepared dataset folder (instead of clips)."
    ),
    split: SplitOption = "test",
    limit: int = typer.Option(8, "--limit", min=1, help="Samples of --data to draw."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one PNG per clip and index.html."),
    start: int | None = typer.Option(
        None,
        "--start",
        min=0,
        help="Clips longer than the model's window: draw the window that starts at this second "
        "(default 0; moved back to end at the clip's end).",
    ),
    all_windows: bool = typer.Option(
        False,
        "--all-windows",
        help="Clips longer than the model's window: one PNG per window (back to back).",
    ),
    recipe: ReleaseRecipeOption = None,
    device: DeviceOption = None,
) -> None:
    """The adapters' audio-guided visual attention and visually guided audio attention, per segment."""
    import numpy as np

    from ..viz.attention import attention_maps, draw_attention, write_index

    if bool(videos) == (data is not None):
        raise ValueError("give clips or --data (with --split), not both and not neither")
    if (start is not None or all_windows) and not videos:
        raise ValueError("--start and --all-windows choose windows of clips; --data draws prepared samples")
    if start is not None and all_windows:
        raise ValueError("give --start or --all-windows, not both")
    _check_writable(out / "index.html")
    model, r, task, info, device = _load_for_clips(checkpoint, recipe, device)
    if (start is not None or all_windows) and task.predict_whole_clip:
        raise ValueError(f"--start/--all-windows: {task.name} models read the whole clip as one sample")
    segments = model.cfg.num_segments
    seconds_heard = r.data.segment_tiling  # each segment's 1 s, repeated, is what the audio tower hears
    samples = []  # dicts: title, caption, stem, raw frames, rows, aspect, frames tensor, audio tensor
    if videos:
        from ..data.video import DecodeError, decode_windows
        from ..predict import window_batch
        from ..tasks.base import PredictContext, heard_text
        from ..viz.timeline import seconds_label

        for video in videos:
            try:
                windows, duration = decode_windows(
                    video,
                    segments,
                    model.frame_size,
                    model.cfg.audio.sample_rate,
                    frame_rule=task.frame_rule,
                    whole_clip=task.predict_whole_clip,
                    max_windows=None if all_windows else 1,
                    start_at=start,
                )
            except DecodeError as exc:
                err_console.print(f"[yellow]skipped {video}: {exc.reason}", highlight=False)
                continue
            ctx = PredictContext(video, windows, duration, info, whole_clip=task.predict_whole_clip)
            for window in windows:
                frames, audio = window_batch(model, [window], r.data)
                if ctx.tiled or task.predict_whole_clip:
                    span = f"the whole clip, 0-{seconds_label(duration)}"
                else:
                    span = f"{window.start}-{window.start + segments} s of {seconds_label(duration)}"
                rows = [  # what each segment saw, in seconds of the clip
                    f"segment {k + 1}\nframe {seconds_label(float(window.frame_times[k]))}\n"
                    f"audio {heard_text(window.audio_spans[k])}"
                    for k in range(segments)
                ]
                chosen = (start is not None or all_windows) and not (ctx.tiled or task.predict_whole_clip)
                stem = f"{video.stem}-{window.start}s" if chosen else video.stem
                samples.append(
                    {
                        "title": video.name,
                        "caption": "; ".join([span, *ctx.notes()]),
                        "stem": stem,
                        "raw": window.frames,
                        "rows": rows,
                        "aspect": window.aspect,
                        "frames": frames,
                        "audio": audio,
                    }
                )
    else:
        from ..factory import open_split

        dataset = open_split(r, data, split, what=f"the checkpoint {checkpoint}")
        for i in range(min(limit, len(dataset))):
            item = dataset[i]
            samples.append(
                {
                    "title": f"{split} {dataset.sample_ids[i]}",
                    "caption": f"prepared sample, {segments} segments",
                    "stem": dataset.sample_ids[i],
                    "raw": np.array(dataset.cache.frames(dataset.samples[i]["video_id"])),
                    "rows": [f"segment {k + 1}\n{k}-{k + 1} s" for k in range(segments)],
                    "aspect": 1.0,
                    "frames": item["frames"][None],
                    "audio": item["audio"][None],
                }
            )
    entries, used = [], set()
    for sample in samples:
        maps = attention_maps(model, sample["frames"].to(device), sample["audio"].to(device))
        stem = _clip_stem(Path(f"{sample['stem']}.png"), used)
        draw_attention(
            out / f"{stem}.png",
            sample["title"],
            _to_display(sample["raw"], maps["visual"].shape[-2:]),
            maps,
            rows=sample["rows"],
            caption=sample["caption"],
            input_seconds=seconds_heard,
            aspect=sample["aspect"],
        )
        entries.append((f"{sample['title']}: {sample['caption']}", f"{stem}.png"))
    if not entries:
        raise ValueError("no clip could be used")
    write_index(out / "index.html", entries)
    console.print(f"wrote {len(entries)} picture(s) and {out / 'index.html'}", highlight=False)


def _to_display(frames, size):
    """uint8 frames resized to the model's input size (the maps' size) for overlays."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def masks(
    checkpoint: CheckpointOption,
    data: DataOption,
    split: SplitOption = "test",
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for the figures (one PNG per video + index.html)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Draw only the first N videos of the split."
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Videos per forward pass (default: the recipe's train.eval_batch_size).",
    ),
    recipe: ReleaseRecipeOption = None,
    device: DeviceOption = None,
) -> None:
    """Frames with the predicted and the true masks overlaid, one PNG per video, and an index page."""
    model, r, _, task, dataset, device = _open_checkpoint(checkpoint, data, split, recipe, device)
    result = task.draw_predictions(
        model,
        dataset,
        out,
        limit=limit,
        device=device,
        precision=r.train.precision,
        batch_size=batch_size or r.train.eval_batch_size,
        console=err_console,
        progress=show_progress(),
    )
    console.print(f"wrote {result['videos']} figures and {result['index']}", highlight=False)
    from ..loggers import log_figures

    figures = sorted(Path(out).glob("*.png"))[:8]  # the first few videos' overlays
    log_figures(checkpoint, {f"figures/masks/{p.stem}": p for p in figures}, err_console)


# The task draws (Task.draw_predictions); "predictions" is the same command under a generic name.
visualize_app.command("masks")(checkpoint_command(masks))
visualize_app.command("predictions", hidden=True)(checkpoint_command(masks))


def _register_subapps() -> None:
    from .bench_cmd import bench
    from .fewshot_cmd import fewshot_app
    from .prepare_cmd import prepare_app
    from .runs_cmd import curves, export, push, runs_app

    app.add_typer(prepare_app, name="prepare")
    app.add_typer(runs_app, name="runs")
    app.command("export")(export)
    app.command("push")(push)
    visualize_app.command("curves")(curves)
    app.add_typer(fewshot_app, name="fewshot")
    app.command("bench")(bench)


_register_subapps()


def main() -> None:
    if sys.platform == "darwin":
        # Read when torch starts: ops Apple's MPS backend lacks then run on the CPU instead of
        # failing (runtime.resolve_device says so once).
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    app(prog_name="dgsct")
