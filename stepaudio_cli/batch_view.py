"""Batch progress on the terminal: a Rich progress bar on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table

from stepaudio_cli.audio import format_duration
from stepaudio_cli.batch import Summary
from stepaudio_cli.terminal import Terminal

PLAIN_EVERY_S = 10.0


class BatchView:
    def __init__(self, term: Terminal, total: int) -> None:
        self.term = term
        self.total = total
        self.start = time.monotonic()
        self._last_plain = 0.0
        self._progress = None
        self._task = None

    def __enter__(self) -> BatchView:
        if self.term.interactive and not self.term.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]batch[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.term.err,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("batch", total=self.total, stats="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _stats(self, s: Summary) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = (s.done + s.reused) / elapsed
        parts = [f"{format_duration(s.audio_seconds)} audio", f"{rate:.2f} files/s"]
        if s.failed:
            parts.append(f"{s.failed} failed")
        if s.skipped:
            parts.append(f"{s.skipped} already done")
        return " · ".join(parts)

    def update(self, s: Summary, record: dict | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=s.finished, stats=self._stats(s))
            return
        now = time.monotonic()
        if s.finished == self.total or now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            left = self.total - s.finished
            rate = (s.done + s.reused) / max(now - self.start, 1e-6)
            eta = f", ETA {format_duration(left / rate)}" if rate > 0 and left else ""
            self.term.info(f"batch: {s.finished}/{self.total} files, {self._stats(s)}{eta}")

    def summary(self, s: Summary, output: str) -> None:
        term = self.term
        table = Table(title=None, show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("done", str(s.done))
        if s.reused:
            table.add_row("duplicates", f"{s.reused} (same audio as another file, answered once)")
        if s.skipped:
            table.add_row("already done", str(s.skipped))
        table.add_row("failed", f"[red]{s.failed}[/red]" if s.failed else "0")
        if s.cut_off:
            table.add_row("cut off", f"[yellow]{s.cut_off}[/yellow] (stopped at the length limit; finish_reason \"length\")")
        table.add_row("audio", format_duration(s.audio_seconds))
        table.add_row("time", format_duration(s.elapsed))
        table.add_row("results", escape(output))
        if not term.quiet:
            term.err.print(table)
        for name, message in s.failures[:20]:
            term.markup(f"[red]failed[/red] {escape(name)}: {escape(message)}")
        if len(s.failures) > 20:
            term.info(f"... and {len(s.failures) - 20} more failures (see the error field in the results)")
        if s.interrupted:
            left = s.total - s.finished
            term.warn(f"interrupted with {left} file(s) left; rerun the same command to resume")
        elif s.failed:
            term.info("Rerun with --retry-failed to try the failed files again.")
        if s.cut_off:
            term.warn(f"{s.cut_off} answer(s) stopped at the length limit: raise --max-tokens or --max-model-len")
