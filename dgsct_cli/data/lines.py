"""Reading annotation files line by line: one clear message per bad line, naming file and line.

A malformed line is reported and skipped like a bad video (``LineProblems``), unless the run is
strict, where the first one stops it. Bytes that are not UTF-8 are reported with their line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

__all__ = ["LineProblems", "numbered_lines"]


class LineProblems:
    """Collects ``"<file>:<line>: <problem>"`` messages; strict mode raises the first."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        if self.strict:
            raise ValueError(message)
        self.messages.append(message)


def numbered_lines(path: Path, problems: LineProblems | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of ``path`` without its line ending; a leading BOM is
    dropped. A line that is not UTF-8 is reported (file, line, byte) and skipped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = (
                f"{path}:{line_no}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            )
            if problems is None:
                raise ValueError(message) from None
            problems.add(message)
            continue
        yield line_no, text
