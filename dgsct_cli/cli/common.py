"""What every command shares: consoles, the ``--verbose``/``--quiet`` options, and turning bad
input into one line.

Nothing here imports torch: ``dgsct --help`` and argument errors answer at once.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    # Piped output (logs read by scripts and CI): plain lines at full width, never wrapped at 80.
    return Console(stderr=stderr, width=100_000, soft_wrap=True)


console = _console(stderr=False)
err_console = _console(stderr=True)


@dataclass
class Options:
    quiet: bool = False
    verbose: bool = False


OPTIONS = Options()


def epochs_done(count: int) -> str:
    """``1 epoch``, ``8 epochs`` (the training commands' closing line)."""
    return f"{count} epoch{'' if count == 1 else 's'}"


def show_progress() -> bool:
    return not OPTIONS.quiet


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def configure_logging() -> None:
    level = logging.DEBUG if OPTIONS.verbose else logging.ERROR if OPTIONS.quiet else logging.INFO
    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=err_console, show_time=False, show_path=OPTIONS.verbose
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs read by scripts: one plain line per message
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def print_error(message: str) -> None:
    # Escaped (paths may contain [brackets]) and soft-wrapped: an error stays one line.
    text = " ".join(str(message).split()) or "failed"
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _os_error_message(exc: OSError) -> str:
    where = exc.filename or "a file"
    if exc.errno == errno.ENOSPC:
        return (
            f"{where}: no space left on the device; nothing was half-written, free some space and run again"
        )
    if exc.errno == errno.EDQUOT:
        return f"{where}: disk quota exceeded; nothing was half-written"
    if exc.errno == errno.EROFS:
        return f"{where}: the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied"
    if exc.errno == errno.ENAMETOOLONG:
        return f"{where}: file name too long"
    if exc.errno == errno.ENOTDIR:
        return f"{where}: a part of the path is a file, not a folder"
    return f"{where}: {exc.strerror or exc}"


def friendly_errors(fn):
    """Bad input -> one red line naming the file and the problem, exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            message = getattr(exc, "message", None)
            if message is None:
                err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if OPTIONS.verbose:
                raise
            text = _user_error(exc)
            if text is None:
                raise
            print_error(text)
            raise typer.Exit(1) from None

    return wrapper


# What torch's DataLoader raises in the main process for an error in a worker: the worker's whole
# traceback in the message, the original error's own line last.
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*Original Traceback")


def _worker_error_line(text: str) -> str:
    """The original error's own message out of a DataLoader worker's re-raised traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else text
    return re.sub(r"^[\w.]*(Error|Exception|Warning)\w*: ", "", last)


def _user_error(exc: BaseException) -> str | None:
    """The one-line message of an error a user can fix, or None for a bug (shown in full)."""
    message = _user_error_text(exc)
    if message is not None and _WORKER_ERROR.match(str(exc)):
        return _worker_error_line(str(exc))
    return message


def _user_error_text(exc: BaseException) -> str | None:
    if "torch" in sys.modules:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return "out of memory; try a smaller batch size or model.recompute=on"
    if isinstance(exc, KeyError):
        return exc.args[0] if exc.args else "missing key"
    library = _library_load_failure(exc)
    if library is not None:
        return library
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | FileExistsError):
        return _os_error_message(exc)
    if isinstance(exc, ValueError | FileNotFoundError | FileExistsError):
        return str(exc)
    return None


def _library_load_failure(exc: BaseException) -> str | None:
    """A compiled library that does not load (torchaudio beside another torch build raises
    ``OSError: Could not load this library: .../libtorchaudio.so``): which one, why, and the fix."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, OSError | ImportError) or not re.search(
        r"Could not load this library|undefined symbol|cannot open shared object|image not found", text
    ):
        return None
    found = re.search(r"([\w.+-]+\.(?:so|dylib|dll|pyd)[\w.]*)", text)
    library = found.group(1) if found else "a compiled library"
    cause = re.search(r"(undefined symbol: \S+|cannot open shared object file[^)]*|image not found)", text)
    message = f"{library} could not be loaded ({cause.group(1) if cause else text[:200]})"
    if "torchaudio" in text or "torch" in library:
        from ..environment import torch_pair_hint

        message += f": {torch_pair_hint()}; 'dgsct env' shows what is installed"
    return message


# -- options every command takes, before or after its name ------------------------------------

_COMMON = [
    inspect.Parameter(
        "verbose",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks for errors."),
        annotation=bool,
    ),
    inspect.Parameter(
        "quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--quiet", "-q", help="Only errors and results; no progress bars."),
        annotation=bool,
    ),
]


def command(fn):
    """A CLI command: takes ``--verbose``/``--quiet`` (also after its name) and reports bad input
    as one line."""
    guarded = friendly_errors(fn)
    sig = inspect.signature(fn, eval_str=True)  # real types: typer reads the annotations
    params = [p for p in sig.parameters.values() if p.name not in ("verbose", "quiet")]
    positional = [p for p in params if p.kind != inspect.Parameter.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY]

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: bool = False, quiet: bool = False, **kwargs: Any) -> Any:
        OPTIONS.verbose = OPTIONS.verbose or verbose
        OPTIONS.quiet = OPTIONS.quiet or quiet
        configure_logging()
        return guarded(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*positional, *keyword, *_COMMON])
    return wrapper


def checkpoint_command(fn):
    """``command`` for a command that rebuilds a model from a checkpoint or continues a run: it
    also takes ``--accept-changed-encoders`` (use encoder files that differ from those the
    checkpoint was trained with, with a warning; see ``dgsct_cli/encoder_files.py``)."""
    sig = inspect.signature(fn, eval_str=True)
    accept = inspect.Parameter(
        "accept_changed_encoders",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            False,
            "--accept-changed-encoders",
            help="Use encoder weight files that differ from those the checkpoint was trained with.",
        ),
        annotation=bool,
    )

    @functools.wraps(fn)
    def wrapper(*args: Any, accept_changed_encoders: bool = False, **kwargs: Any) -> Any:
        from ..encoder_files import accepting_changed_encoders

        with accepting_changed_encoders(accept_changed_encoders):
            return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), accept])
    return command(wrapper)
