"""Batch progress on the terminal: a Rich progress bar on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import time

from stepaudio_cli.batch_job import Summary
from stepaudio_cli.durations import format_duration
from stepaudio_cli.terminal import Terminal

PLAIN_EVERY_S = 10.0
SHOW_FAILURES = 20


class BatchView:
    def __init__(self, term: Terminal, total: int) -> None:
        self.term = term
        self.total = total
        self.start = time.monotonic()
        self._last_plain = 0.0
        self._started = False  # files are being sent (the engine is up)
        self._progress = None
        self._task = None
        self._line = term.status_line()  # before the bar exists (engine start)

    # --- callbacks from the core -------------------------------------------------------------
    def status(self, text: str | None) -> None:
        if not self._started:
            self._line(text)
        elif self._progress is not None:  # what the engine waits for, beside the bar
            self._progress.update(self._task, note=text or "")
        elif text:
            self.term.info(f"batch: {text}")

    def started(self) -> None:
        """The engine is up: the progress bar replaces the spinner."""
        self._line(None)
        self._started = True
        self.start = time.monotonic()
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
                TextColumn("[yellow]{task.fields[note]}"),
                console=self.term.err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("batch", total=self.total, stats="", note="")

    def update(self, s: Summary) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=s.finished, stats=self._stats(s))
            return
        now = time.monotonic()
        if s.finished == self.total or now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            left = self.total - s.finished
            rate = (s.answered + s.reused) / max(now - self.start, 1e-6)
            eta = f", ETA {format_duration(left / rate)}" if rate > 0 and left else ""
            self.term.info(f"batch: {s.finished}/{self.total} files, {self._stats(s)}{eta}")

    def close(self) -> None:
        self._line(None)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _stats(self, s: Summary) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = (s.answered + s.reused) / elapsed
        parts = [f"{format_duration(s.audio_seconds)} audio", f"{rate:.2f} files/s"]
        if s.windows_planned:
            parts.append(f"{s.windows_answered}/{s.windows_planned} windows")
        if s.failed:
            parts.append(f"{s.failed} failed")
        if s.skipped:
            parts.append(f"{s.skipped} already done")
        return " · ".join(parts)

    # --- the end ---------------------------------------------------------------------------------
    def summary(self, s: Summary, output: str, kept=None) -> None:
        """The end of a run; ``kept``: where ``--replace`` still keeps the earlier results."""
        term = self.term
        rows: list[tuple[str, str, str | None]] = [("answered", str(s.answered), None)]
        if s.reused:
            rows.append(("duplicates", f"{s.reused} (same audio as another file, answered once)", None))
        if s.skipped:
            rows.append(("already done", str(s.skipped), None))
        rows.append(("failed", str(s.failed), "red" if s.failed else None))
        if s.cut_off:
            rows.append(("cut off", f'{s.cut_off} (stopped at the length limit; finish_reason "length")', "yellow"))
        if s.stopped or s.interrupted:
            rows.append(("not done", f"{s.total - s.finished} (no result yet: a rerun does them)", "yellow"))
        rows += [
            ("audio", format_duration(s.audio_seconds), None),
            ("time", format_duration(s.elapsed), None),
            ("results", output, None),
        ]
        if len(s.questions) > 1:
            counts = ", ".join(f"{_short(q)!r}: {n}" for q, n in s.questions.items())
            rows.append(("questions", f"{len(s.questions)} in the results file (records: {counts})", None))
        if kept is not None:
            rows.append(("earlier", f"{kept} (the results before --replace; removed when a run completes)", None))
        term.pairs(rows)
        for name, message in s.warnings[:SHOW_FAILURES]:
            term.warn(message if message.startswith(name) else f"{name}: {message}")
        for name, message in s.failures[:SHOW_FAILURES]:
            term.labelled("failed", f"{name}: {message}")
        if len(s.failures) > SHOW_FAILURES:
            term.info(f"... and {len(s.failures) - SHOW_FAILURES} more failures (see the error field in the results)")
        if s.interrupted:
            term.warn(f"interrupted with {s.total - s.finished} file(s) left; rerun the same command to resume")
        elif s.failed and not s.stopped:
            term.info("Rerun with --retry-failed to try the failed files again.")
        if s.cut_off:
            term.warn(f"{s.cut_off} answer(s) stopped at the length limit: raise --max-tokens or --max-model-len")


def _short(text: str, most: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."
