"""``dgsct prepare <dataset>``: each task's own prepare command, loaded only when it is run.

The group lists the subcommands from the task registry's light index, so ``dgsct prepare --help``
imports no task (and no torch); ``dgsct prepare ave ...`` imports the AVE task alone.
"""

from __future__ import annotations

import inspect
from typing import Any

import click
import typer
from typer.core import TyperGroup

from .common import command, console, show_progress


def _as_cli(name: str, fn) -> click.Command:
    """The task's prepare function as a click command: ``progress``/``console`` are supplied
    here, and the summary it returns is printed as a table."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.name not in ("progress", "console")]

    def run(**kwargs: Any) -> None:
        from ..data.report import summary_table

        summary = fn(**kwargs, progress=show_progress(), console=console)
        if summary is not None:
            console.print(summary_table(summary))
            console.print(f"manifest: {summary.out / 'manifest.json'}", markup=False, highlight=False)

    run.__signature__ = sig.replace(parameters=params)
    run.__doc__ = fn.__doc__
    app = typer.Typer(add_completion=False, rich_markup_mode=None)
    app.command(name)(command(run))
    return typer.main.get_command(app)


class PrepareGroup(TyperGroup):
    """Subcommands from ``dgsct_cli.tasks.base.prepare_commands()``, built on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from ..tasks.base import prepare_commands

        return sorted(prepare_commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from ..tasks.base import prepare_command

        fn = prepare_command(name)
        return None if fn is None else _as_cli(name, fn)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from ..tasks.base import prepare_commands

        rows = [(name, help_text) for name, (_, help_text) in sorted(prepare_commands().items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


prepare_app = typer.Typer(
    cls=PrepareGroup,
    help="Decode a dataset once into a prepared cache (frames + audio arrays + manifest.json).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@prepare_app.callback()
def _prepare_group() -> None:
    """Decode a dataset once into a prepared cache (frames + audio arrays + manifest.json)."""
    # A callback keeps this a command group (its commands come from the task registry).
