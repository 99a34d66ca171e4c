"""The reasoning / answer split of streamed text: everything up to the FIRST ``</think>`` is
reasoning, everything after it the answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stepaudio_cli.checkpoint import THINK_END, THINK_START

Kind = Literal["reasoning", "answer"]


@dataclass(frozen=True)
class Delta:
    kind: Kind
    text: str


class ReasoningSplitter:
    """Turns streamed text into reasoning and answer deltas.

    Raw mode (``feed``): the text starts inside ``<think>`` (the prompt opened it); everything
    up to the first ``</think>`` is reasoning, everything after is answer, even further
    ``</think>`` tags. The tag may be cut across deltas: a possible partial tag at the end
    of a delta is held back until the next delta decides it. Whitespace right around the
    split is dropped (the model writes ``\\n\\n`` after ``</think>``).

    Pre-split mode (``feed_reasoning``/``feed_answer``): for servers that already separate
    ``delta.reasoning`` from ``delta.content``.
    """

    def __init__(self, in_answer: bool = False) -> None:
        self.in_answer = in_answer
        self._pending = ""  # held-back text that may be the start of </think>
        self._answer_started = False
        self._reasoning_ws = ""  # trailing whitespace of reasoning, held until more text comes
        self.reasoning_parts: list[str] = []
        self.answer_parts: list[str] = []
        self._raw: list[str] = []  # the text as it came, tag and whitespace kept

    @property
    def raw(self) -> str:
        """The text as generated, whitespace and ``</think>`` kept (when a server split it,
        rejoined with the tag): what a follow-up sends back as the assistant's turn."""
        return "".join(self._raw)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    def feed(self, text: str) -> list[Delta]:
        self._raw.append(text)
        if self.in_answer:
            return self._emit_answer(text)
        text = self._pending + text
        self._pending = ""
        idx = text.find(THINK_END)
        if idx >= 0:
            self.in_answer = True
            out = self._emit_reasoning(text[:idx], final=True)
            return out + self._emit_answer(text[idx + len(THINK_END) :])
        keep = partial_tag_suffix(text, THINK_END)
        if keep:
            self._pending = text[-keep:]
            text = text[:-keep]
        return self._emit_reasoning(text)

    def feed_reasoning(self, text: str) -> list[Delta]:
        # A server that splits for us: reasoning may still carry a stray tag at its edges.
        self._raw.append(text)
        return self._emit_reasoning(text.replace(THINK_START, "", 1) if not self.reasoning_parts else text)

    def feed_answer(self, text: str) -> list[Delta]:
        if not self.in_answer:
            self.in_answer = True
            self._raw.append(THINK_END)
            self._emit_reasoning("", final=True)
        self._raw.append(text)
        return self._emit_answer(text)

    def finish(self) -> list[Delta]:
        """Flush held-back text at the end of the stream."""
        out: list[Delta] = []
        if self._pending:
            pending, self._pending = self._pending, ""
            out += self._emit_answer(pending) if self.in_answer else self._emit_reasoning(pending)
        return out

    def _emit_reasoning(self, text: str, final: bool = False) -> list[Delta]:
        text = self._reasoning_ws + text
        if not self.reasoning_parts:
            text = text.lstrip()
        stripped = text.rstrip()
        # Trailing whitespace waits for more reasoning; at the split it is dropped.
        self._reasoning_ws = "" if final else text[len(stripped) :]
        text = stripped
        if not text:
            return []
        self.reasoning_parts.append(text)
        return [Delta("reasoning", text)]

    def _emit_answer(self, text: str) -> list[Delta]:
        if not self._answer_started:
            text = text.lstrip()
            if not text:
                return []
            self._answer_started = True
        self.answer_parts.append(text)
        return [Delta("answer", text)]


def partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
