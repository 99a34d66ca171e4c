"""What a batch asks (``BatchJob``: the question and the settings that shape its answers, and
``request_key``: the key a file's answer is found again by) and how a run stands (``Summary``)."""

from __future__ import annotations

import hashlib
import json
import signal
from dataclasses import dataclass, field

from stepaudio_cli.defaults import DECODED_AUDIO_BYTES
from stepaudio_cli.errors import UserError
from stepaudio_cli.request import Sampling, Thinking
from stepaudio_cli.windows import Windowing


@dataclass
class BatchJob:
    prompt: str
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    thinking: Thinking = field(default_factory=Thinking)
    concurrency: int = 64
    retries: int = 3
    retry_failed: bool = False
    hide_reasoning: bool = False
    decode_ahead: int = 8
    windowing: Windowing = field(default_factory=Windowing)  # audio longer than one request holds
    audio_bytes: int = DECODED_AUDIO_BYTES  # decoded audio held at once (long recordings wait for room)


@dataclass
class Summary:
    total: int = 0
    answered: int = 0  # answered in this run
    skipped: int = 0  # already in the results
    reused: int = 0  # same content + settings as another file
    failed: int = 0
    cut_off: int = 0  # answered, but stopped at the length limit (finish_reason "length")
    audio_seconds: float = 0.0
    # Recordings answered in windows: windows answered, of those planned (a file takes minutes).
    windows_answered: int = 0
    windows_planned: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (file, what its answer should be read with)
    #: Records in the results file per question, after compaction (the view shows it when several).
    questions: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)
    #: Why the run stopped before the end (no server for too long, results not writable);
    #: files not attempted have no record, so a rerun continues with them.
    stopped: UserError | None = None
    elapsed: float = 0.0

    @property
    def finished(self) -> int:
        return self.answered + self.skipped + self.reused + self.failed

    @property
    def complete(self) -> bool:
        """Every file has its record now."""
        return not self.stopped and not self.interrupted and self.finished == self.total

    @property
    def exit_code(self) -> int:
        """0 all done; 1 some failed; 128 + the signal that interrupted it (130 Ctrl-C, 143
        SIGTERM). A run that ``stopped`` ends with that error's code instead."""
        if self.interrupted:
            return 128 + int(self.signal or signal.SIGINT)
        return 1 if self.failed else 0


def request_key(sha256: str, job: BatchJob, model: str) -> str:
    parts = [sha256, job.prompt, job.system, model, job.sampling.as_dict(), job.thinking.as_dict()]
    if job.windowing.as_dict():  # only when not the default, so earlier results keep their keys
        parts.append(job.windowing.as_dict())
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class NeedsEngine(Exception):
    """A file needs an engine's answer: a runner made ``offline`` cannot finish alone."""
