"""Download progress: one Rich bar for all bytes on a TTY, a line per file otherwise."""

from __future__ import annotations

from stepaudio_cli.terminal import Terminal


class DownloadProgress:
    def __init__(self, term: Terminal, total: int) -> None:
        self.term = term
        self.total = total
        self._progress = None
        self._task = None

    def __enter__(self) -> DownloadProgress:
        if self.term.interactive and not self.term.quiet:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]download[/bold]"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.term.err,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("download", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        if self._progress is not None and n:
            self._progress.advance(self._task, n)

    def file_done(self, f) -> None:
        if self._progress is None:
            self.term.info(f"  {f.name} ({f.size / 1e6:.1f} MB)")
