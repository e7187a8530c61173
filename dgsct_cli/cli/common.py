"""What every command shares: consoles, global options, and turning bad input into one line."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


@dataclass
class Options:
    quiet: bool = False
    verbose: bool = False


OPTIONS = Options()


def show_progress() -> bool:
    return not OPTIONS.quiet


def print_error(message: str) -> None:
    # Escaped (paths may contain [brackets]) and soft-wrapped: an error stays one line.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def friendly_errors(fn):
    """Bad input -> one red line naming the file and the problem, exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        try:
            return fn(*args, **kwargs)
        except torch.OutOfMemoryError:
            if OPTIONS.verbose:
                raise
            print_error("out of memory; try a smaller batch size or model.recompute=on")
            raise typer.Exit(1) from None
        except (ValueError, FileNotFoundError, KeyError) as exc:
            if OPTIONS.verbose:
                raise
            print_error(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper
