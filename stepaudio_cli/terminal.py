"""The one object every command prints through.

Answers go to stdout, everything else (reasoning, progress, stats, errors) to stderr, so
``stepaudio ask ... > answer.txt`` and ``| jq`` keep working. Rich already honours
``NO_COLOR``, ``FORCE_COLOR`` and non-TTY streams; spinners and progress bars are only
shown on an interactive stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text


class Terminal:
    def __init__(self, *, stdout=None, stderr=None, quiet: bool = False) -> None:
        # NO_COLOR: plain text, no escape codes at all (Rich alone would still send dim/bold).
        plain = {"color_system": None, "no_color": True} if os.environ.get("NO_COLOR") else {}
        self.out = Console(file=stdout or sys.stdout, highlight=False, soft_wrap=True, **plain)
        self.err = Console(file=stderr or _own_stderr(), highlight=False, soft_wrap=True, **plain)
        self.quiet = quiet

    @property
    def interactive(self) -> bool:
        """True when stderr is a terminal: spinners, progress bars and live styling allowed."""
        return self.err.is_terminal and not self.err.is_dumb_terminal

    # --- one-line messages (stderr) -------------------------------------------------
    def error(self, message: str) -> None:
        self.err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.err.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(message), soft_wrap=True)

    def success(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(message, style="green"), soft_wrap=True)

    def markup(self, message: str) -> None:
        """stderr, with Rich markup (caller escapes user text with ``escape``)."""
        if not self.quiet:
            self.err.print(message, soft_wrap=True)

    # --- streaming text -------------------------------------------------------------
    def stream_reasoning(self, text: str) -> None:
        self.err.print(Text(text, style="dim"), end="")
        self.err.file.flush()

    def stream_answer(self, text: str) -> None:
        self.out.print(Text(text), end="")
        self.out.file.flush()

    def end_stream(self, console: str = "out") -> None:
        (self.out if console == "out" else self.err).print()

    def print_json(self, obj: Any) -> None:
        # Plain write: no Rich wrapping or highlighting may touch machine-readable output.
        self.out.file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.file.flush()

    def write_out(self, text: str) -> None:
        self.out.file.write(text)
        self.out.file.flush()

    # --- spinners -------------------------------------------------------------------
    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[Callable[[str], None]]:
        """A spinner with elapsed time on a TTY; one plain line otherwise. Yields a function
        that replaces the message (a new line when not interactive)."""
        if not self.interactive or self.quiet:
            self.info(message + " ...")
            yield lambda text: self.info(text + " ...")
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(escape(message), total=None)
            yield lambda text: progress.update(task, description=escape(text))

    # --- reports (stdout) --------------------------------------------------------------
    def table(self, title: str, rows: list[tuple[str, list[str]]], columns: list[str]) -> None:
        """A labelled table of results: one row per measure, one column per configuration."""
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        table.add_column("")
        for name in columns:
            table.add_column(name, justify="right")
        for label, values in rows:
            table.add_row(label, *values)
        self.out.print(table)


def _own_stderr():
    """A private handle on the process's stderr.

    The in-process engine points file descriptor 2 at a log file while vLLM starts (its
    worker processes write there for their whole life); our own messages, spinner
    included, keep reaching the terminal through this duplicate.
    """
    try:
        fd = sys.stderr.fileno()
        return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
    except (AttributeError, OSError, ValueError):
        return sys.stderr


__all__ = ["Terminal", "escape"]
