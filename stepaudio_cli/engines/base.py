"""The engine interface: stream a request, get typed deltas, then usage and timings."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

from stepaudio_cli.errors import EngineError, NoServerError
from stepaudio_cli.request import Request
from stepaudio_cli.splitter import Delta


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Timings:
    """Seconds. ``tokens_per_s`` counts completion tokens after the first one."""

    time_to_first_token: float | None = None
    total: float = 0.0
    tokens_per_s: float | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Final:
    model: str
    usage: Usage
    timings: Timings
    finish_reason: str | None = None
    #: The text as generated after the assistant prefix (see Result.raw).
    raw: str | None = None


@dataclass
class Result:
    reasoning: str
    answer: str
    model: str
    usage: Usage
    timings: Timings
    finish_reason: str | None = None
    #: A recording answered in windows (windows.py): each window's start, end, answer, usage
    #: and finish_reason; the fields above are then the reduce step's, with the total usage,
    #: and ``finish_reason`` "length" when any request was cut off (the reduce step's own:
    #: ``combined_finish_reason``).
    windows: list[dict] | None = None
    combined_finish_reason: str | None = None
    #: The text as generated after the assistant prefix: reasoning, ``</think>`` and answer
    #: with their whitespace (what a follow-up sends back as this turn's reply).
    raw: str | None = None
    #: A recording answered in windows: the combining request's text-only question, which a
    #: follow-up sends again in place of the recording.
    combined_question: str | None = None


class Clock:
    """Measures time to first token and decode speed for one request."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def tick(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def timings(self, completion_tokens: int, streamed: bool = True) -> Timings:
        end = time.perf_counter()
        if not streamed:  # the text came whole: no first-token time; rate over the whole request
            rate = completion_tokens / (end - self.start) if completion_tokens and end > self.start else None
            return Timings(time_to_first_token=None, total=end - self.start, tokens_per_s=rate)
        ttft = None if self.first is None else self.first - self.start
        rate = None
        if self.first is not None and completion_tokens > 1 and end > self.first:
            rate = (completion_tokens - 1) / (end - self.first)
        return Timings(time_to_first_token=ttft, total=end - self.start, tokens_per_s=rate)


class Engine(abc.ABC):
    """Start once, stream many requests (concurrently), close once."""

    #: Model name as reported in results.
    model: str = ""
    #: Context length, when known (used to refuse audio that cannot fit).
    max_model_len: int | None = None
    #: Sends of one request before its failure goes to the caller (a pool of servers may send
    #: a request again while it waits for one); None: the engine's own bound.
    max_sends: int | None = None

    async def start(self) -> None:  # noqa: B027
        """Connect or load; raises UserError with a one-line reason."""

    @abc.abstractmethod
    def stream(self, request: Request) -> AsyncIterator[Delta | Final]:
        """Yield reasoning/answer deltas as they come, then exactly one Final."""

    async def close(self) -> None:  # noqa: B027
        """Release everything (processes, sockets). Safe to call twice."""


async def collect(engine: Engine, request: Request, on_delta: Callable[[Delta], None] | None = None) -> Result:
    """Run one request to the end, calling ``on_delta`` for each piece of text."""
    reasoning: list[str] = []
    answer: list[str] = []
    done: Final | None = None
    async for event in engine.stream(request):
        if isinstance(event, Final):
            done = event
            continue
        (reasoning if event.kind == "reasoning" else answer).append(event.text)
        if on_delta is not None:
            on_delta(event)
    assert done is not None, "engine stream ended without Final"
    return Result(
        reasoning="".join(reasoning).strip(),
        answer="".join(answer).strip(),
        model=done.model,
        usage=done.usage,
        timings=done.timings,
        finish_reason=done.finish_reason,
        raw=done.raw,
    )


async def send_with_retries(
    engine: Engine,
    request: Request,
    retries: int,
    on_delta: Callable[[Delta], None] | None = None,
    hold: asyncio.Semaphore | None = None,
) -> Result:
    """One request to the end, sent again (with backoff) after a failure a server may not
    repeat (a 5xx, a dropped connection), at most ``retries`` times, every send a pool made
    counted; ``hold``: a place taken while in flight. The last failure says how many tries."""
    attempt = 0
    while True:
        try:
            async with hold or contextlib.nullcontext():
                return await collect(engine, request, on_delta)
        except NoServerError:
            raise
        except EngineError as e:
            attempt += e.attempts
            if not e.retryable or attempt > retries:
                tries = f" (after {attempt} tries)" if attempt > 1 else ""
                raise EngineError(e.message + tries) from None
        await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))


__all__ = ["Clock", "Engine", "Final", "Result", "Timings", "Usage", "collect", "send_with_retries"]
