"""Recordings longer than one request holds: windows, then one answer.

- **Plan**: a window is as long as fits the context next to a reasoning reserve (or
  ``--window``), cut at the quietest stretch near its end (a short numpy energy scan), and
  the next one starts a few seconds earlier, at the quietest stretch there: they overlap.
- **Map**: every window is asked the question with its place in the recording, all at once
  through the one Engine interface (in-process, servers), progress through a callback.
- **Reduce**: one text-only request with the question and every window's answer labelled
  with its time range; its reasoning and answer stream like any question's.

The parts know nothing of each other beyond what the reduce step reads in their answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from stepaudio_cli.audio import Audio
from stepaudio_cli.audio_tokens import CHUNK_SAMPLES, SAMPLE_RATE, prompt_tokens_for_chunks
from stepaudio_cli.defaults import MAX_AUDIO_ITEMS
from stepaudio_cli.durations import format_duration, parse_duration
from stepaudio_cli.engines.base import Result, Timings, Usage
from stepaudio_cli.errors import AudioError, NoServerError, UserError
from stepaudio_cli.request import MIN_GENERATION_TOKENS, Request, Sampling, generation_room
from stepaudio_cli.splitter import Delta

OVERLAP_SECONDS = 5.0  # the next window starts 5-10 s before this one ends
SEARCH_SECONDS = 15.0  # a cut may move this far back from a window's longest end to find quiet
FRAME_SECONDS = 0.1  # energy frames of the scan
QUIET_FRAMES = 5  # a cut goes in the quietest half second, not a single quiet frame
MIN_WINDOW_SECONDS = 10.0
MAX_RESERVE_TOKENS = 8192  # the reasoning reserve grows with the context up to this
# The question, its place in the recording and the chat scaffolding, next to a window's audio.
WINDOW_TEXT_TOKENS = 160


@dataclass(frozen=True)
class Windowing:
    """``--window`` / ``--no-window``: ``enabled`` False keeps the one-request refusal;
    ``seconds`` None sizes windows from the context."""

    enabled: bool = True
    seconds: float | None = None

    @classmethod
    def from_options(cls, window: str | None, no_window: bool) -> Windowing:
        if window is not None and no_window:
            raise UserError("give --window or --no-window, not both")
        seconds = None if window is None else parse_duration(window, "--window", "20m, 1h30m, 90s, 25:00")
        if seconds is not None and seconds < MIN_WINDOW_SECONDS:
            raise UserError(f"--window {window}: windows must be at least {MIN_WINDOW_SECONDS:.0f}s long")
        return cls(enabled=not no_window, seconds=seconds)

    def as_dict(self) -> dict:
        """For a batch key: empty when the default, so keys of earlier runs still match."""
        if self.enabled and self.seconds is None:
            return {}
        return {"window": self.seconds, "no_window": not self.enabled}


# --- plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Samples ``start:end`` of the recording (16 kHz)."""

    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


def reasoning_reserve(sampling: Sampling, max_model_len: int) -> int:
    """New tokens each window keeps room for: ``--max-tokens`` when given, else a quarter of
    the context (at least MIN_GENERATION_TOKENS, at most MAX_RESERVE_TOKENS)."""
    if sampling.max_tokens is not None:
        return sampling.max_tokens
    return min(max(MIN_GENERATION_TOKENS, max_model_len // 4), MAX_RESERVE_TOKENS)


def longest_window(audio: Audio, sampling: Sampling, max_model_len: int) -> int:
    """Samples of the longest window (whole 25 s chunks) that fits next to the reserve, or an
    AudioError saying what to change."""
    reserve = reasoning_reserve(sampling, max_model_len)
    room = max_model_len - reserve - WINDOW_TEXT_TOKENS
    per_chunk = prompt_tokens_for_chunks([CHUNK_SAMPLES])
    chunks = min(room // per_chunk, MAX_AUDIO_ITEMS)
    if chunks < 1:
        need = reserve + WINDOW_TEXT_TOKENS + per_chunk
        most = max_model_len - WINDOW_TEXT_TOKENS - per_chunk  # the largest reserve that leaves one chunk
        hint = f", or --max-tokens {most} or less" if most > 0 else ""
        raise AudioError(
            f"{audio.name}: {format_duration(audio.duration)} is too long for one request, and max model length "
            f"{max_model_len} has no room for even a "
            f"{CHUNK_SAMPLES // SAMPLE_RATE}s window next to a {reserve}-token reasoning reserve: "
            f"raise --max-model-len to at least {need}{hint}"
        )
    return chunks * CHUNK_SAMPLES


def quietest(samples: np.ndarray, lo: int, hi: int) -> int:
    """The middle of the quietest half second of ``samples[lo:hi]`` (the latest of equals)."""
    frame = int(FRAME_SECONDS * SAMPLE_RATE)
    lo, hi = max(0, lo), min(len(samples), hi)
    n = (hi - lo) // frame
    if n < 1:
        return hi
    power = np.square(samples[lo : lo + n * frame].reshape(n, frame), dtype=np.float64).mean(axis=1)
    k = min(QUIET_FRAMES, n)
    smooth = np.convolve(power, np.ones(k) / k, mode="valid")  # smooth[i]: frames i .. i+k-1
    best = int(np.flatnonzero(smooth <= smooth.min() * (1 + 1e-9) + 1e-15)[-1])
    return lo + best * frame + (k * frame) // 2


def cut_windows(
    samples: np.ndarray, length: int, overlap: float = OVERLAP_SECONDS, search: float = SEARCH_SECONDS
) -> list[Window]:
    """Windows of at most ``length`` samples covering ``samples``: each ends at the quietest
    point of its last ``search`` seconds; the next starts at the quietest point of the
    ``overlap`` seconds before ``end - overlap`` (short windows scale both down)."""
    total = len(samples)
    search_n = min(int(search * SAMPLE_RATE), length // 4)
    overlap_n = min(int(overlap * SAMPLE_RATE), length // 8)
    windows: list[Window] = []
    start = 0
    while total - start > length:
        end = quietest(samples, start + length - search_n, start + length)
        windows.append(Window(start, end))
        start = quietest(samples, end - 2 * overlap_n, end - overlap_n)
    windows.append(Window(start, total))
    return windows


def plan(request: Request, max_model_len: int | None, windowing: Windowing) -> list[Window] | None:
    """The windows for ``request``, or None when it goes as one request (it fits, windows are
    off, or the context is unknown: the server then decides). Refusals are AudioErrors."""
    # Several files are never windowed, nor a follow-up (its earlier turns are in the prompt).
    windowed = windowing.enabled and len(request.audios) == 1 and not request.history
    fits = True
    if max_model_len:
        try:
            history = sum(t.text_tokens for t in request.history)
            generation_room(request.all_audios, request.sampling, max_model_len, history_tokens=history)
        except AudioError:
            if not windowed:
                raise  # today's refusal
            fits = False
    if not windowed:
        return None
    audio = request.audios[0]
    if windowing.seconds is None:
        if fits:
            return None
        length = longest_window(audio, request.sampling, max_model_len)
    else:
        length = int(windowing.seconds * SAMPLE_RATE)
        if fits and len(audio.samples) <= length:
            return None
        longest = longest_window(audio, request.sampling, max_model_len) if max_model_len else length
        if length > longest:
            raise AudioError(
                f"--window {format_duration(windowing.seconds)} does not fit max model length {max_model_len} "
                f"next to a {reasoning_reserve(request.sampling, max_model_len)}-token reasoning reserve: "
                f"use --window {format_duration(longest / SAMPLE_RATE)} or less, or raise --max-model-len"
            )
    return cut_windows(audio.samples, length) if len(audio.samples) > length else None


# --- prompts --------------------------------------------------------------------------------


def clock(seconds: float, total: float) -> str:
    """``12:05`` or, in recordings of an hour or more, ``0:12:05``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if total >= 3600 else f"{h * 60 + m}:{sec:02d}"


def span(window: Window, total: float) -> str:
    return f"{clock(window.start_s, total)}-{clock(window.end_s, total)}"


def window_question(question: str, windows: Sequence[Window], index: int, total: float) -> str:
    """The map step's question: the user's, after the window's place in the recording."""
    where = f"{span(windows[index], total)} of a {clock(total, total)} recording"
    return (
        f"This audio is part {index + 1} of {len(windows)} of a longer recording, from {where}. "
        f"Answer from this part alone.\n\n{question}"
    )


def reduce_question(question: str, windows: Sequence[Window], answers: Sequence[str], total: float) -> str:
    """The reduce step's text-only question: every part's answer, labelled with its time range."""
    parts = "\n\n".join(
        f"Part {i + 1} ({span(w, total)}):\n{a or '(no answer)'}" for i, (w, a) in enumerate(zip(windows, answers))
    )
    return (
        f"A {clock(total, total)} recording was too long to listen to at once, so it was split into "
        f"{len(windows)} overlapping parts and this question was asked about each part:\n\n{question}\n\n"
        f"The answers for each part:\n\n{parts}\n\n"
        "From these answers alone, give one answer to the question for the whole recording."
    )


# --- map, then reduce -------------------------------------------------------------------------

#: Runs one request to the end (``collect`` on an engine, or batch's retrying version).
Send = Callable[[Request, Callable[[Delta], None] | None], Awaitable[Result]]


@dataclass
class MapProgress:
    answered: int
    total: int
    completion_tokens: int = 0


def _add(total: Usage, usage: Usage) -> None:
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.reasoning_tokens += usage.reasoning_tokens


async def answer_in_windows(
    request: Request,
    windows: Sequence[Window],
    send: Send,
    *,
    max_model_len: int | None,
    on_progress: Callable[[MapProgress], None] | None = None,
    on_delta: Callable[[Delta], None] | None = None,
) -> Result:
    """Map every window (all in flight at once), then reduce. The result is the reduce
    step's reasoning and answer with the usage of every request and ``windows`` filled in.
    A window that fails fails the whole: its error, prefixed with the part and its range."""
    audio = request.audios[0]
    total = audio.duration
    started = time.perf_counter()
    progress = MapProgress(answered=0, total=len(windows))
    report = on_progress or (lambda p: None)
    report(progress)

    async def one(i: int, w: Window) -> Result:
        part = Audio(name=f"{audio.name} [{span(w, total)}]", samples=audio.samples[w.start : w.end])
        asked = replace(
            request, audios=(part,), question=window_question(request.question, windows, i, total), stream=False
        )
        try:
            result = await send(asked, None)
        except NoServerError:
            raise  # not this recording's fault: the caller stops
        except UserError as e:
            raise type(e)(f"part {i + 1} of {len(windows)} ({span(w, total)}): {e.message}") from None
        progress.answered += 1
        progress.completion_tokens += result.usage.completion_tokens
        report(progress)
        return result

    tasks = [asyncio.ensure_future(one(i, w)) for i, w in enumerate(windows)]
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    question = reduce_question(request.question, windows, [r.answer for r in results], total)
    sampling = request.sampling
    if sampling.max_tokens is not None and max_model_len:
        # A generous guess at the text's tokens (a token is rarely under 2 bytes).
        room = max_model_len - len(question.encode()) // 2 - WINDOW_TEXT_TOKENS
        sampling = replace(sampling, max_tokens=max(1, min(sampling.max_tokens, room)))
    reduced = await send(replace(request, audios=(), question=question, sampling=sampling), on_delta)

    usage = Usage()
    for r in (*results, reduced):
        _add(usage, r.usage)
    return Result(
        reasoning=reduced.reasoning,
        answer=reduced.answer,
        model=reduced.model,
        usage=usage,
        timings=Timings(total=time.perf_counter() - started),
        # Cut off anywhere (a window or the combining answer) is cut off: records and counts say so.
        finish_reason="length" if any(r.finish_reason == "length" for r in results) else reduced.finish_reason,
        combined_finish_reason=reduced.finish_reason,
        raw=reduced.raw,
        combined_question=question,
        windows=[
            {
                "start": round(w.start_s, 3),
                "end": round(w.end_s, 3),
                "answer": r.answer,
                "usage": r.usage.as_dict(),
                "finish_reason": r.finish_reason,
            }
            for w, r in zip(windows, results)
        ],
    )


__all__ = [
    "MapProgress",
    "Window",
    "Windowing",
    "answer_in_windows",
    "cut_windows",
    "longest_window",
    "plan",
    "quietest",
    "reasoning_reserve",
    "reduce_question",
    "window_question",
]
