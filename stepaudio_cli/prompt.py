"""Step-Audio-R1's prompt format, sampling defaults and the reasoning/answer split.

Prompt::

    <|BOT|>system\\n{system}<|EOT|><|BOT|>human\\n{question}\\n<audio_patch>...<|EOT|><|BOT|>assistant\\n<think>\\n

The model continues with its reasoning, ``</think>``, then the answer, and stops on
``<|EOT|>``. The split happens on the FIRST ``</think>`` only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from stepaudio_cli.audio import Audio, format_duration
from stepaudio_cli.defaults import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from stepaudio_cli.errors import AudioError, UserError
from stepaudio_cli.models import AUDIO_PATCH, BOT, EOT, THINK_END, THINK_START

ASSISTANT_PREFIX = THINK_START + "\n"
# The format the model was trained on for direct answers: an empty reasoning block.
NO_THINK_PREFIX = THINK_START + "\n\n" + THINK_END + "\n"

# Below this many tokens of room for generation a request is refused up front.
MIN_GENERATION_TOKENS = 3072


@dataclass(frozen=True)
class Sampling:
    """Official defaults for open questions: temperature 0.7, top_p 0.9."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int | None = DEFAULT_MAX_TOKENS  # None: what the context leaves
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


EFFORT_PRESETS = {
    # Test-time compute dial: longer reasoning buys accuracy (typical reasoning: 2,300-2,800).
    "low": {"think_budget": 256, "min_think": None},
    "medium": {"think_budget": 1024, "min_think": None},
    "high": {"think_budget": None, "min_think": 2048},
}


@dataclass(frozen=True)
class Thinking:
    """How long the model may reason: ``budget`` caps reasoning tokens (then ``</think>`` is
    forced), ``min_tokens`` holds ``</think>`` back until that many exist, ``enabled=False``
    answers directly with an empty reasoning block."""

    enabled: bool = True
    budget: int | None = None
    min_tokens: int | None = None

    @classmethod
    def from_options(
        cls, think_budget: int | None, min_think: int | None, effort: str | None, no_think: bool
    ) -> Thinking:
        if no_think and (think_budget is not None or min_think or effort):
            raise UserError("--no-think cannot be combined with --think-budget, --min-think or --effort")
        if effort:
            if effort not in EFFORT_PRESETS:
                raise UserError(f"--effort must be one of {', '.join(EFFORT_PRESETS)}, not {effort!r}")
            preset = EFFORT_PRESETS[effort]
            think_budget = think_budget if think_budget is not None else preset["think_budget"]
            min_think = min_think if min_think is not None else preset["min_think"]
        if think_budget is not None and min_think and min_think > think_budget:
            raise UserError(f"--min-think {min_think} is more than --think-budget {think_budget}")
        return cls(enabled=not no_think, budget=think_budget, min_tokens=min_think or None)

    @property
    def constrained(self) -> bool:
        return self.enabled and (self.budget is not None or bool(self.min_tokens))

    @property
    def prefix(self) -> str:
        return ASSISTANT_PREFIX if self.enabled else NO_THINK_PREFIX

    def as_dict(self) -> dict:
        return {"think": self.enabled, "think_budget": self.budget, "min_think": self.min_tokens}


@dataclass(frozen=True)
class Request:
    audios: tuple[Audio, ...]
    question: str
    system: str | None = None
    sampling: Sampling = Sampling()
    thinking: Thinking = Thinking()
    #: False when nobody watches the text arrive (batch): the engine may return it whole,
    #: which saves a wake-up per token.
    stream: bool = True
    #: Generate exactly max_tokens, ignoring stop tokens (benchmarks; in-process only).
    fixed_length: bool = False

    @property
    def audio_seconds(self) -> float:
        return sum(a.duration for a in self.audios)


def build_prompt(
    question: str, audios: Sequence[Audio], system: str | None = None, assistant_prefix: str = ASSISTANT_PREFIX
) -> str:
    """The raw prompt for the in-process engine: one ``<audio_patch>`` per chunk.

    The model's multimodal processor expands each placeholder into
    ``<audio_start>`` + N x ``<audio_patch>`` + ``<audio_end>``.
    """
    parts = []
    if system:
        parts.append(f"{BOT}system\n{system}{EOT}")
    n_chunks = sum(len(a.chunks()) for a in audios)
    audio = ("\n" if question and n_chunks else "") + AUDIO_PATCH * n_chunks
    parts.append(f"{BOT}human\n{question}{audio}{EOT}")
    parts.append(f"{BOT}assistant\n{assistant_prefix}")
    return "".join(parts)


def build_messages(
    question: str, audios: Sequence[Audio], system: str | None = None, assistant_prefix: str = ASSISTANT_PREFIX
) -> list[dict]:
    """OpenAI chat messages: text, then one ``input_audio`` part (16 kHz WAV) per chunk,
    then an assistant turn ``<think>\\n`` that the server continues."""
    from stepaudio_cli.audio import wav_bytes

    content: list[dict] = [{"type": "text", "text": question}]
    for audio in audios:
        for chunk in audio.chunks():
            data = base64.b64encode(wav_bytes(chunk)).decode("ascii")
            content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "human", "content": content})
    messages.append({"role": "assistant", "content": assistant_prefix})
    return messages


def fit_max_tokens(
    audios: Sequence[Audio], sampling: Sampling, max_model_len: int | None, text_tokens: int = 64
) -> int:
    """max_tokens that fits in the model length next to the audio, or an AudioError.
    Without a cap (``sampling.max_tokens`` None) it is all the room the context leaves;
    None when the context length is unknown too (the server then decides).

    ``text_tokens`` is a generous allowance for the question and the chat scaffolding.
    """
    if not max_model_len:
        return sampling.max_tokens
    audio_tokens = sum(a.prompt_tokens for a in audios)
    room = max_model_len - audio_tokens - text_tokens
    need = min(sampling.max_tokens or MIN_GENERATION_TOKENS, MIN_GENERATION_TOKENS)
    if room < need:
        longest = max(audios, key=lambda a: a.prompt_tokens)
        total = sum(a.duration for a in audios)
        max_seconds = max(0, (max_model_len - text_tokens - need) // 14)  # ~13.5 tokens/s incl. markers
        who = longest.name if len(audios) == 1 else f"{longest.name} (and {len(audios) - 1} more)"
        raise AudioError(
            f"{who}: {format_duration(total)} of audio needs {audio_tokens} prompt tokens; with max model length "
            f"{max_model_len} that leaves {max(room, 0)} for reasoning and answer (need {need}). "
            f"Use audio under about {format_duration(max_seconds)} or raise --max-model-len."
        )
    return room if sampling.max_tokens is None else min(sampling.max_tokens, room)


def request_max_tokens(request: Request, max_model_len: int | None) -> int | None:
    """What an engine asks for: the audio is checked against the context first; without a
    cap, None, and vLLM gives exactly what the context leaves after the real prompt (our
    estimate of the text tokens could be short for a long question or system prompt)."""
    fitted = fit_max_tokens(request.audios, request.sampling, max_model_len)
    return None if request.sampling.max_tokens is None else fitted


# --- the reasoning / answer split ----------------------------------------------------------

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

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    def feed(self, text: str) -> list[Delta]:
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
        return self._emit_reasoning(text.replace(THINK_START, "", 1) if not self.reasoning_parts else text)

    def feed_answer(self, text: str) -> list[Delta]:
        if not self.in_answer:
            self.in_answer = True
            self._emit_reasoning("", final=True)
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


def split_reasoning(text: str) -> tuple[str, str]:
    """Split a complete output on the first ``</think>``; no tag means all reasoning."""
    splitter = ReasoningSplitter()
    splitter.feed(text)
    splitter.finish()
    return splitter.reasoning, splitter.answer
