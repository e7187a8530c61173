"""``dgsct fewshot``: train a recipe on K samples per class, sweep K, pre-train, and evaluate a
pre-trained checkpoint zero-shot. The commands run whatever task the recipe (or checkpoint) names;
the task says what its K-shot set, protocols and zero-shot targets are."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import checkpoint_command, console, epochs_done, err_console, show_progress

fewshot_app = typer.Typer(
    help="Few-shot training (K samples per class), K sweeps, pre-training and zero-shot evaluation.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

RecipeOption = typer.Option(..., "--recipe", "-r", help="Recipe name or path (its task decides the setting).")
DataOpt = typer.Option(
    None, "--data", "-d", help="Prepared dataset folder (default: the recipe's data.path)."
)
ProtocolOption = typer.Option(
    None,
    "--protocol",
    help="default (selection on validation) or release (the release's selection on test and scoring rules).",
)
SyntheticOption = typer.Option(
    False, "--synthetic", help="Write a small synthetic dataset at --data first if it has none."
)
OverridesArg = typer.Argument(None, help="key.path=value recipe overrides, e.g. train.epochs=5.")
OverwriteOption = typer.Option(
    False,
    "--overwrite",
    help="Start anew in an --output folder that holds a run; the old run is moved to previous-<n>/.",
)


def _resume_or_overwrite(resume: bool, overwrite: bool, output: Path | None) -> None:
    if resume and overwrite:
        raise ValueError("--overwrite starts a new run and --resume continues one: give one of them")
    if resume and output is None:
        raise ValueError("--resume needs --output (the folder to continue)")


def _summary_line(summary: dict) -> str:
    test = summary.get("test_accuracy")
    shown = "" if test is None else f", {summary['test_split']} accuracy {test:.2f}%"
    sel = summary["selection_accuracy"]
    return (
        f"{summary['task']} {summary['shots'] if summary['shots'] is not None else 'all'}-shot "
        f"({summary['train_samples']} training samples, {summary['protocol']} protocol): best "
        f"{summary['selection_split']} accuracy {sel if sel is None else round(sel, 2)} at epoch "
        f"{summary['best_epoch']}{shown}; {summary['run']}/fewshot.json"
    )


@fewshot_app.command("train")
@checkpoint_command
def train(
    recipe: str | None = typer.Option(
        None, "--recipe", "-r", help="Recipe name or path (its task decides the setting)."
    ),
    shots: int | None = typer.Option(None, "--shots", "-k", min=1, help="Training samples per class (K)."),
    data: Path | None = DataOpt,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Run folder (default: runs/<recipe>-K<k>)."
    ),
    protocol: str | None = ProtocolOption,
    test: bool = typer.Option(True, "--test/--no-test", help="Score the best checkpoint on the test split."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Finish the interrupted few-shot run in --output (its recipe, shots, data; then the test score).",
    ),
    overwrite: bool = OverwriteOption,
    synthetic: bool = SyntheticOption,
    overrides: list[str] = OverridesArg,
) -> None:
    """Train a recipe on the first K training samples of each class; then test the best checkpoint."""
    from ..fewshot_runs import run_fewshot

    _resume_or_overwrite(resume, overwrite, output)
    if resume and (shots is not None or protocol is not None):
        raise ValueError("--resume continues the run with its own --shots and --protocol: drop them")
    if output is None:
        if recipe is None:
            raise ValueError("--recipe is required (or --resume with the --output run folder to continue)")
        output = Path("runs") / (Path(recipe).stem + (f"-K{shots}" if shots is not None else ""))
    summary = run_fewshot(
        recipe,
        shots,
        output,
        data=data,
        overrides=overrides or [],
        protocol=protocol,
        test=test,
        synthetic=synthetic,
        console=err_console,
        progress=show_progress(),
        overwrite=overwrite,
        resume=resume,
    )
    console.print(_summary_line(summary), highlight=False, markup=False)


@fewshot_app.command("sweep")
@checkpoint_command
def sweep(
    recipe: str | None = typer.Option(
        None, "--recipe", "-r", help="Recipe name or path (its task decides the setting)."
    ),
    shots: str | None = typer.Option(
        None, "--shots", "-k", help="Comma-separated K values (default: 1,2,4,8,16)."
    ),
    data: Path | None = DataOpt,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Folder of the runs (default: runs/<recipe>-sweep)."
    ),
    protocol: str | None = ProtocolOption,
    json_out: Path | None = typer.Option(None, "--json", help="The table (default: <output>/sweep.json)."),
    png_out: Path | None = typer.Option(None, "--png", help="The figure (default: <output>/sweep.png)."),
    resume: bool = typer.Option(
        False, "--resume", help="Finish the interrupted sweep in --output (finished K runs are kept)."
    ),
    overwrite: bool = OverwriteOption,
    synthetic: bool = SyntheticOption,
    overrides: list[str] = OverridesArg,
) -> None:
    """Train every K in --shots; a JSON table and a PNG of test accuracy against K."""
    from ..fewshot_runs import parse_shots, run_sweep

    _resume_or_overwrite(resume, overwrite, output)
    if resume and (shots is not None or protocol is not None):
        raise ValueError("--resume continues the sweep with its own --shots and --protocol: drop them")
    if output is None:
        if recipe is None:
            raise ValueError("--recipe is required (or --resume with the sweep's --output folder)")
        output = Path("runs") / f"{Path(recipe).stem}-sweep"
    table = run_sweep(
        recipe,
        None if resume else parse_shots(shots or "1,2,4,8,16"),
        output,
        data=data,
        overrides=overrides or [],
        protocol=protocol,
        json_out=json_out,
        png_out=png_out,
        synthetic=synthetic,
        console=err_console,
        progress=show_progress(),
        overwrite=overwrite,
        resume=resume,
    )
    if resume:  # the sweep's own figure and table paths
        import json

        from ..fewshot_runs import SWEEP_RECORD

        record = json.loads((output / SWEEP_RECORD).read_text(encoding="utf-8"))
        json_out, png_out = json_out or Path(record["json"]), png_out or Path(record["png"])
    view = Table(title=f"{table['task']}: {table['split']} accuracy by shots ({table['protocol']} protocol)")
    for col in (
        "shots",
        "train samples",
        "best epoch",
        f"{table['selection_split']} acc",
        f"{table['split']} acc",
        "paper",
    ):
        view.add_column(col, justify="right")
    published = table["published"]
    for r in table["runs"]:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        view.add_row(
            str(r["shots"]), str(r["train_samples"]), str(r["best_epoch"]), fmt(r["selection_accuracy"]),
            fmt(r["accuracy"]), fmt(published.get(str(r["shots"]))),
        )  # fmt: skip
    console.print(view)
    console.print(
        f"wrote {json_out or output / 'sweep.json'} and {png_out or output / 'sweep.png'}",
        highlight=False,
        markup=False,
    )


@fewshot_app.command("pretrain")
@checkpoint_command
def pretrain(
    recipe: str = RecipeOption,
    data: Path | None = DataOpt,
    output: Path | None = typer.Option(None, "--output", "-o", help="Run folder (default: runs/<recipe>)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --output (see 'dgsct train --resume')."
    ),
    protocol: str | None = ProtocolOption,
    overwrite: bool = OverwriteOption,
    synthetic: bool = SyntheticOption,
    overrides: list[str] = OverridesArg,
) -> None:
    """Pre-train a recipe on its whole training split (checkpoints, resume and torchrun as 'dgsct train')."""
    from ..config import load_recipe
    from ..fewshot_runs import with_protocol
    from ..runs import read_run_record
    from ..tasks.base import get_task
    from ..train import Trainer

    overrides = overrides or []
    _resume_or_overwrite(resume, overwrite, output)
    if protocol is not None and not resume:
        overrides = with_protocol(recipe, overrides, protocol)
    r = load_recipe(recipe, overrides)
    if getattr(get_task(r.task), "zero_shot_target", None) is None:
        raise ValueError(f"{recipe}: task {r.task} is not a pre-training task (use 'dgsct fewshot train')")
    output = output or Path("runs") / (r.name or "pretrain")
    record = {"recipe": r.source, "overrides": overrides}
    data_dir = data or Path(r.data.path)
    if resume:
        record = read_run_record(output)
        r = load_recipe(str(output / "recipe.yaml"), overrides)
        data_dir = data or Path(record.get("data", r.data.path))
    trainer = Trainer(
        r,
        data_dir,
        output,
        console=err_console,
        show_progress=show_progress(),
        run_record=record,
        synthetic=synthetic,
        overwrite=overwrite,
    )
    result = trainer.run(resume=resume)
    if trainer.is_main:
        best = result["best_metric"]
        console.print(
            f"done: {epochs_done(result['epochs'])}, best {trainer.task.selection_metric} "
            f"{best if best is None else round(best, 2)} (epoch {result['best_epoch']}); checkpoints in {output}",
            highlight=False,
            markup=False,
        )


@fewshot_app.command("zeroshot")
@checkpoint_command
def zeroshot(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Pre-training run folder or checkpoint."),
    dataset: str = typer.Option(..., "--dataset", help="Target dataset whose class names are scored."),
    metric: str = typer.Option("video", "--metric", help="segment or video."),
    data: Path = typer.Option(..., "--data", "-d", help="The target's prepared dataset folder."),
    split: str | None = typer.Option(None, "--split", "-s", help="Default: the test split."),
    protocol: str = typer.Option(
        "default",
        "--protocol",
        help="default (pre-trained context, eval mode) or release (zero_shot.py as shipped).",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Samples per forward pass (default: the recipe's train.eval_batch_size; the release's "
        "with --protocol release).",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the result here (JSON)."),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="Model recipe for a release checkpoint."),
) -> None:
    """Score a pre-trained checkpoint on a target dataset's classes, without training."""
    from ..fewshot_runs import run_zero_shot

    if metric not in ("segment", "video"):
        raise ValueError(f"--metric must be segment or video, got {metric!r}")
    if protocol not in ("default", "release"):
        raise ValueError(f"--protocol must be default or release, got {protocol!r}")
    result = run_zero_shot(
        checkpoint,
        dataset,
        metric,
        data,
        split=split,
        protocol=protocol,
        batch_size=batch_size,
        json_out=json_out,
        release_recipe=recipe,
        console=err_console,
        progress=show_progress(),
    )
    console.print(
        f"zero-shot {dataset} {metric} accuracy ({result['split']} split, {protocol} protocol): "
        f"{result['accuracy']:.2f}% ({result['num_correct']} of {result['num_counted']})"
        + (f"; wrote {json_out}" if json_out else ""),
        highlight=False,
        markup=False,
    )
