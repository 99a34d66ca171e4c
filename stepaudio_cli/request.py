"""A request: the audio, the question, sampling and reasoning-length settings, and how many
new tokens it may take in a given context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from stepaudio_cli.audio import Audio
from stepaudio_cli.audio_length import AudioLength
from stepaudio_cli.audio_tokens import SAMPLE_RATE, max_audio_samples
from stepaudio_cli.checkpoint import ASSISTANT_PREFIX, NO_THINK_PREFIX
from stepaudio_cli.defaults import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from stepaudio_cli.durations import format_duration
from stepaudio_cli.errors import AudioError, UserError

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
class Turn:
    """An earlier turn of a conversation, as a follow-up sends it again: the human text and
    audio as they were sent, and the assistant's text (its prefix and all it generated:
    reasoning, ``</think>``, answer)."""

    question: str
    audios: tuple[Audio, ...] = ()
    reply: str = ""
    #: Tokens the reply took (its completion tokens), for the room a follow-up has left.
    reply_tokens: int = 0

    @property
    def text_tokens(self) -> int:
        """The reply's tokens and a generous guess at the question's (a token is rarely under
        2 bytes) with its chat scaffolding."""
        return self.reply_tokens + len(self.question.encode()) // 2 + 16


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
    #: The earlier turns of a conversation, sent before this question (``ask -c``, ``chat``).
    history: tuple[Turn, ...] = ()

    @property
    def audio_seconds(self) -> float:
        return sum(a.duration for a in self.audios)

    @property
    def all_audios(self) -> tuple[Audio, ...]:
        """Every audio the request carries, in prompt order: the earlier turns', then its own."""
        return tuple(a for t in self.history for a in t.audios) + self.audios


def generation_room(
    audios: Sequence[Audio | AudioLength],
    sampling: Sampling,
    max_model_len: int | None,
    text_tokens: int = 64,
    history_tokens: int = 0,
) -> int:
    """max_tokens that fits in the model length next to the audio, or an AudioError.
    Without a cap (``sampling.max_tokens`` None) it is all the room the context leaves;
    None when the context length is unknown too (the server then decides).

    ``text_tokens`` is a generous allowance for the question and the chat scaffolding;
    ``history_tokens`` the text of a conversation's earlier turns (their audio is in ``audios``).
    """
    if not max_model_len or not (audios or history_tokens):  # text-only (windows' reduce step) sizes itself
        return sampling.max_tokens
    audio_tokens = sum(a.prompt_tokens for a in audios)
    room = max_model_len - audio_tokens - text_tokens - history_tokens
    need = min(sampling.max_tokens or MIN_GENERATION_TOKENS, MIN_GENERATION_TOKENS)
    if room < need and history_tokens:
        raise AudioError(
            f"this conversation no longer fits max model length {max_model_len}: its earlier turns take about "
            f"{history_tokens} tokens of text and {audio_tokens} of audio, which leaves {max(room, 0)} for reasoning "
            f"and answer (need {need}); start a new conversation (ask without -c) or raise --max-model-len"
        )
    if room < need:
        longest = max(audios, key=lambda a: a.prompt_tokens)
        total = sum(a.duration for a in audios)
        audio_room = max_model_len - text_tokens - need
        max_seconds = max_audio_samples(audio_room) // SAMPLE_RATE if audio_room > 0 else 0
        who = longest.name if len(audios) == 1 else f"{longest.name} (and {len(audios) - 1} more)"
        raise AudioError(
            f"{who}: {format_duration(total)} of audio needs {audio_tokens} prompt tokens; with max model length "
            f"{max_model_len} that leaves {max(room, 0)} for reasoning and answer (need {need}). "
            f"Use audio under about {format_duration(max_seconds)} or raise --max-model-len."
        )
    return room if sampling.max_tokens is None else min(sampling.max_tokens, room)


def max_tokens_to_send(request: Request, max_model_len: int | None) -> int | None:
    """What an engine asks for: the audio is checked against the context first; without a
    cap, None, and vLLM gives exactly what the context leaves after the real prompt (our
    estimate of the text tokens could be short for a long question or system prompt)."""
    history = sum(t.text_tokens for t in request.history)
    fitted = generation_room(request.all_audios, request.sampling, max_model_len, history_tokens=history)
    return None if request.sampling.max_tokens is None else fitted
