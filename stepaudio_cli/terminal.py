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
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

# Terminal escape sequences (CSI, OSC, two-byte ESC), then any other C0/C1 control
# character but newline and tab: text from a server or a model may carry them, and on a
# terminal they move the cursor, retitle the window or hide what came before.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[0-~]?|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def printable(text: str) -> str:
    """``text`` without terminal control sequences (newlines and tabs kept): what the terminal
    is given of text that came from outside. ``--json`` and records keep the exact text."""
    return _CONTROL.sub("", text)


class Terminal:
    def __init__(self, *, stdout=None, stderr=None, quiet: bool = False) -> None:
        # NO_COLOR: plain text, no escape codes at all (Rich alone would still send dim/bold).
        plain = {"color_system": None, "no_color": True} if os.environ.get("NO_COLOR") else {}
        self.out = Console(file=stdout or sys.stdout, highlight=False, soft_wrap=True, **plain)
        self.err = Console(file=stderr or _own_stderr(), highlight=False, soft_wrap=True, **plain)
        self.quiet = quiet
        self._open_line = {"out": False, "err": False}  # streamed text without its newline yet

    @property
    def interactive(self) -> bool:
        """True when stderr is a terminal: spinners, progress bars and live styling allowed."""
        return self.err.is_terminal and not self.err.is_dumb_terminal

    # --- one-line messages (stderr) -------------------------------------------------
    def error(self, message: str) -> None:
        self.end_streams()  # text streamed so far stays, and the error gets its own line
        self.err.print(Text.assemble(("error: ", "bold red"), printable(message)), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.end_streams()
        self.err.print(Text.assemble(("warning: ", "yellow"), printable(message)), soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(printable(message)), soft_wrap=True)

    def success(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(printable(message), style="green"), soft_wrap=True)

    def note(self, message: str) -> None:
        """A secondary line (stats): dim on a colour terminal."""
        if not self.quiet:
            self.err.print(Text(printable(message), style="dim"), soft_wrap=True)

    def labelled(self, label: str, message: str, style: str = "red", *, stdout: bool = False) -> None:
        """``label message`` with the label styled, e.g. ``failed a.wav: ...``, ``ok  vLLM: ...``."""
        if stdout or not self.quiet:
            console = self.out if stdout else self.err
            console.print(Text.assemble((label, style), " ", printable(message)), soft_wrap=True)

    # --- streaming text -------------------------------------------------------------
    def stream_reasoning(self, text: str) -> None:
        self.err.print(Text(printable(text), style="dim"), end="")
        self.err.file.flush()
        self._open_line["err"] = True

    def stream_answer(self, text: str) -> None:
        if self._open_line["err"]:  # reasoning ends: a blank line before the answer
            self.err.print("\n")
            self._open_line["err"] = False
        self.out.print(Text(printable(text)), end="")
        self.out.file.flush()
        self._open_line["out"] = True

    def end_streams(self) -> None:
        """End any streamed text with its newline."""
        for name, console in (("err", self.err), ("out", self.out)):
            if self._open_line[name]:
                console.print()
                self._open_line[name] = False

    def print_json(self, obj: Any) -> None:
        # Plain write: no Rich wrapping or highlighting may touch machine-readable output.
        self.out.file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.file.flush()

    def write_out(self, text: str) -> None:
        self.out.file.write(text)
        self.out.file.flush()

    # --- spinners -------------------------------------------------------------------
    def status_line(self) -> StatusLine:
        """A status to set and clear as things happen (an engine callback's target)."""
        return StatusLine(self)

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[Callable[[str], None]]:
        """A spinner with elapsed time on a TTY; one plain line otherwise. Yields a function
        that replaces the message (a new line when not interactive)."""
        line = StatusLine(self)
        line(message)
        try:
            yield line
        finally:
            line(None)

    # --- reports -----------------------------------------------------------------------
    def section(self, title: str, lines: list[str]) -> None:
        """A titled block of plain lines on stdout."""
        self.out.print()
        self.out.print(Text(title, style="bold"))
        for line in lines:
            self.out.print(Text(printable(line)), soft_wrap=True)

    def pairs(self, rows: list[tuple[str, str, str | None]]) -> None:
        """A two-column report on stderr: label (bold), value (with an optional style)."""
        if self.quiet:
            return
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for label, value, style in rows:
            table.add_row(label, Text(value, style=style or ""))
        self.err.print(table)

    def table(
        self,
        title: str | None,
        rows: list[tuple[str, list[str]]],
        columns: list[str],
        *,
        first: str = "",
        plain: bool = False,
    ) -> None:
        """A labelled table on stdout: one row per label, one column per name in ``columns``
        (numbers right-aligned in a boxed table; ``plain``: no box, left-aligned)."""
        from rich.table import Table

        box = {"box": None, "pad_edge": False} if plain else {}
        table = Table(title=title, title_justify="left", header_style="bold", **box)
        table.add_column(first)
        for name in columns:
            table.add_column(name, justify="left" if plain else "right")
        for label, values in rows:
            table.add_row(label, *values)
        self.out.print(table)


class StatusLine:
    """Call with a text to show it (a spinner with elapsed time on a TTY, one plain line
    otherwise), with None to clear it. The same text twice shows once."""

    def __init__(self, term: Terminal) -> None:
        self.term = term
        self.text: str | None = None
        self._progress = None
        self._task = None

    def __call__(self, text: str | None) -> None:
        if text == self.text:
            return
        self.text = text
        if not self.term.interactive or self.term.quiet:
            if text is not None:
                self.term.info(text + " ...")
            return
        if text is None:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            return
        if self._progress is None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
            self._progress = Progress(*columns, console=self.term.err, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(escape(printable(text)), total=None)
        else:
            self._progress.update(self._task, description=escape(printable(text)))


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


__all__ = ["StatusLine", "Terminal", "printable"]
