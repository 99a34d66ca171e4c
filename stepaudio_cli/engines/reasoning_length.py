"""Reasoning length against a stock OpenAI-compatible server.

vLLM's server runs no logits processor of ours, so ``--think-budget`` and ``--min-think``
are built from plain requests that each continue the assistant message: a reasoning-only
stretch with the tag and ``<|EOT|>`` banned by ``logit_bias`` (``--min-think``), a stretch
capped at the budget, then the rest (after a forced ``</think>`` when the budget ran out).
``Run`` is what one request has produced so far across those requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from stepaudio_cli.checkpoint import ASSISTANT_PREFIX, EOT, THINK_END
from stepaudio_cli.engines.base import Clock, Final, Usage
from stepaudio_cli.errors import EngineError
from stepaudio_cli.request import Request
from stepaudio_cli.splitter import Delta, ReasoningSplitter


@dataclass(frozen=True)
class Text:
    """Text of one streamed chunk: in the server's reasoning field, or in ``content``."""

    reasoning: str | None
    content: str | None


@dataclass(frozen=True)
class PhaseEnd:
    """How one streamed request ended: its finish reason, the usage the server reported (if
    any), and how many chunks carried text (vLLM streams one token per chunk)."""

    finish_reason: str | None
    usage: dict | None
    chunks: int


class ChatServer(Protocol):
    """What the scheme needs of a server (the remote engine is one)."""

    url: str

    def payload(self, request: Request, assistant_prefix: str, max_tokens: int | None) -> dict: ...

    def phase(self, payload: dict) -> AsyncIterator[Text | PhaseEnd]:
        """One streamed request: its text, then exactly one :class:`PhaseEnd`."""
        ...

    async def token_ids(self, text: str) -> list[int]: ...


async def phased(server: ChatServer, request: Request, max_tokens: int | None, run: Run) -> AsyncIterator[Delta]:
    """Reasoning length control against a stock server, in up to three requests that each
    continue the assistant message: a reasoning-only stretch with ``</think>`` and
    ``<|EOT|>`` banned (``--min-think``), a stretch capped at the budget, then the rest
    (after a forced ``</think>`` when the budget ran out)."""
    t = request.thinking
    left = max_tokens  # None: no cap but the context

    def upto(n: int) -> int:
        return n if left is None else min(n, left)

    def more() -> bool:
        return left is None or left > 0

    if t.min_tokens:
        # The tag may be several tokens: banning its first one holds it back.
        end, eot = await server.token_ids(THINK_END), await server.token_ids(EOT)
        if len(eot) != 1:
            raise EngineError(f"{server.url}: the server's tokenizer has no single {EOT} token")
        bias = {str(end[0]): -100, str(eot[0]): -100}
        payload = server.payload(request, ASSISTANT_PREFIX, upto(t.min_tokens)) | {"logit_bias": bias}
        async for ev in run.phase(server, payload, "reasoning"):
            yield ev
        left = None if left is None else left - run.phase_tokens
    if t.budget is not None and more():
        room = max(t.budget - run.reasoning_tokens, 0)
        if room:
            async for ev in run.phase(server, server.payload(request, run.prefix(), upto(room)), "normal"):
                yield ev
            left = None if left is None else left - run.phase_tokens
            if run.finish_reason == "stop" and run.splitter.in_answer:
                return
        # Budget spent, or the model stopped without closing its reasoning: close it.
        if not run.splitter.in_answer:
            for ev in run.splitter.feed_answer(""):
                yield ev
    if more():
        mode = "answer" if run.splitter.in_answer else "normal"
        async for ev in run.phase(server, server.payload(request, run.prefix(), left), mode):
            yield ev


class Run:
    """What one request has produced so far, across the requests (phases) it takes."""

    def __init__(self, thinking) -> None:
        self.splitter = ReasoningSplitter(in_answer=not thinking.enabled)
        self.clock = Clock()
        self.usage = Usage()
        self.reasoning_tokens = 0
        self.server_splits = False  # the server sends reasoning in its own field
        self.phase_tokens = 0
        self.finish_reason: str | None = None
        self._first_phase = True

    def feed(self, reasoning: str | None, content: str | None, mode: str) -> list[Delta]:
        self.clock.tick()
        # vLLM streams one token per chunk: count the chunks that carry reasoning (with a raw
        # stream, every chunk up to and including the one with </think>).
        if mode == "reasoning" or (
            mode == "normal" and (reasoning or (not self.server_splits and not self.splitter.in_answer))
        ):
            self.reasoning_tokens += 1
        events: list[Delta] = []
        for text, labelled in ((reasoning, "reasoning"), (content, "content")):
            if not text:
                continue
            if mode == "answer":
                events += self.splitter.feed_answer(text)
            elif mode == "reasoning":
                events += self.splitter.feed_reasoning(text)
            elif labelled == "reasoning":
                self.server_splits = True
                events += self.splitter.feed_reasoning(text)
            elif self.server_splits:
                events += self.splitter.feed_answer(text)
            else:
                events += self.splitter.feed(text)
        return events

    async def phase(self, server: ChatServer, payload: dict, mode: str) -> AsyncIterator[Delta]:
        """One of ``server``'s requests, its text fed in as ``mode`` says: "normal" (reasoning
        then answer), "reasoning" (all reasoning), "answer" (all answer)."""
        async for item in server.phase(payload):
            if isinstance(item, PhaseEnd):
                self._end_phase(item)
            else:
                for ev in self.feed(item.reasoning, item.content, mode):
                    yield ev
        for ev in self.splitter.finish():
            yield ev

    def _end_phase(self, end: PhaseEnd) -> None:
        usage = end.usage or {}
        if self._first_phase:
            self.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self._first_phase = False
        # Without usage from the server, count the chunks: vLLM streams one token per chunk.
        self.phase_tokens = int(usage.get("completion_tokens") or 0) or end.chunks
        self.usage.completion_tokens += self.phase_tokens
        self.finish_reason = end.finish_reason

    def prefix(self) -> str:
        """The assistant text so far, for a request that continues it."""
        text = ASSISTANT_PREFIX + self.splitter.reasoning
        if self.splitter.in_answer:
            # Right after the tag, as the in-process engine forces it: the model writes its
            # own separator before the answer.
            text += THINK_END + ("\n\n" + self.splitter.answer if self.splitter.answer else "")
        return text

    def final(self, model: str) -> Final:
        self.usage.reasoning_tokens = self.reasoning_tokens
        return Final(
            model=model,
            usage=self.usage,
            timings=self.clock.timings(self.usage.completion_tokens),
            finish_reason=self.finish_reason,
            raw=self.splitter.raw,
        )
