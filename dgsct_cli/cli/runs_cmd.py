"""``dgsct runs list``, ``dgsct visualize curves``, ``dgsct export`` and ``dgsct push``: look at,
compare and share finished runs. Imports of the library happen inside the commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import command, console, err_console

runs_app = typer.Typer(help="Look at the runs under a folder.", no_args_is_help=True, rich_markup_mode=None)


def _value(v) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "-"


@runs_app.command("list")
@command
def runs_list(
    folder: Path = typer.Argument(Path("runs"), help="Folder to search for runs (default: runs)."),
    sort: str | None = typer.Option(
        None,
        "--sort",
        help="Order by a validation metric of the best epoch (e.g. accuracy), or best, test, epochs, "
        "task, state; highest first.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """A table of the runs under a folder: task, recipe, overrides, epochs, best metric, state."""
    import json

    from rich.markup import escape

    from ..run_index import list_runs

    rows = list_runs(folder, sort)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no runs under {folder}", highlight=False)
        return
    table = Table("run", "task", "recipe", "overrides", "epochs", "best (val)", "test", "state")
    for r in rows:
        best = (
            f"{r['selection_metric'] or 'best'} {_value(r['best_metric'])} @ {r['best_epoch']}"
            if r["best_metric"] is not None
            else "-"
        )
        state = r["state"] + (f" ({r['state_detail']})" if r["state_detail"] else "")
        colour = {"running": "cyan", "finished": "green", "interrupted": "yellow"}[r["state"]]
        table.add_row(
            escape(r["run"]),
            r["task"] or "?",
            escape(r["recipe"]),
            escape(" ".join(r["overrides"])) or "-",
            f"{r['epochs_done']}/{r['epochs'] if r['epochs'] is not None else '?'}",
            best,
            _value(r["test_metric"]),
            f"[{colour}]{state}",
        )
    console.print(table)


@command
def curves(
    runs: list[Path] = typer.Argument(..., help="Run folders (their metrics.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help="Figure (.png)."),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Only these panels, comma-separated (e.g. 'train loss,accuracy')."
    ),
    title: str | None = typer.Option(None, "--title"),
) -> None:
    """Training loss and each metric against the epoch for one or several runs (best epoch starred)."""
    from ..atomic import check_writable
    from ..viz.curves import plot_curves

    check_writable(out)
    wanted = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    plot_curves(runs, out, wanted, title)
    console.print(f"wrote {out}", highlight=False)


@command
def export(
    run: Path = typer.Argument(..., help="Run folder (its best checkpoint) or a checkpoint file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (Hugging Face Hub layout)."),
    full: bool = typer.Option(
        False, "--full", help="Store the frozen encoders' weights too (a self-contained, larger file)."
    ),
) -> None:
    """model.safetensors, config.json and a README.md model card, in the Hugging Face Hub's layout."""
    from ..hub import export_run

    config = export_run(run, out, full=full)
    console.print(
        f"wrote {out}: model.safetensors ({config['checkpoint']['contents']}), config.json, README.md",
        highlight=False,
    )


@command
def push(
    run: Path = typer.Argument(..., help="Run folder, checkpoint file, or a folder 'dgsct export' wrote."),
    repo_id: str = typer.Argument(..., help="Hub repository OWNER/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to push to (created if missing)."),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message."),
    full: bool = typer.Option(False, "--full", help="Store the frozen encoders' weights too."),
) -> None:
    """Export a run and upload it to the Hugging Face Hub (needs 'dgsct[hub]' and a token)."""
    from ..hub import push_run

    url = push_run(run, repo_id, private=private, revision=revision, commit_message=message, full=full)
    console.print(f"pushed {run} to {repo_id}: {url}", highlight=False)
    err_console.print(f"load it with --checkpoint hf://{repo_id}{'@' + revision if revision else ''}")
