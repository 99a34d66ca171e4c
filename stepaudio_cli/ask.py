"""One-shot questions: load audio, run one request, render it live or as JSON."""

from __future__ import annotations

from collections.abc import Sequence

from stepaudio_cli.audio import Audio, format_duration, load_audio
from stepaudio_cli.engines import Result, collect, open_engine, starting_message
from stepaudio_cli.errors import UserError
from stepaudio_cli.prompt import Delta, Request, Sampling, Thinking, fit_max_tokens
from stepaudio_cli.terminal import Terminal

__all__ = ["AskView", "UserError", "ask", "prepare", "result_json"]


def prepare(
    sources: Sequence[str], question: str, system: str | None, sampling: Sampling, thinking: Thinking = Thinking()
) -> Request:
    """Decode every input up front, so bad audio fails before any engine starts."""
    if not question.strip():
        raise UserError("the question is empty")
    if sum(1 for s in sources if s == "-") > 1:
        raise UserError("`-` (stdin) can be given only once")
    audios: list[Audio] = [load_audio(s) for s in sources]
    return Request(audios=tuple(audios), question=question, system=system, sampling=sampling, thinking=thinking)


def result_json(request: Request, result: Result, extra: dict | None = None) -> dict:
    obj = {
        "audio": [{"file": a.name, "seconds": round(a.duration, 3)} for a in request.audios],
        "question": request.question,
        "reasoning": result.reasoning,
        "answer": result.answer,
        "model": result.model,
        "usage": result.usage.as_dict(),
        "timings": result.timings.as_dict(),
        "finish_reason": result.finish_reason,
        "thinking": request.thinking.as_dict(),
    }
    if extra:
        obj.update(extra)
    return obj


def stats_line(request: Request, result: Result) -> str:
    u, t = result.usage, result.timings
    parts = [f"audio {format_duration(request.audio_seconds)}", f"{u.completion_tokens} tokens"]
    if u.reasoning_tokens:
        parts[-1] += f" ({u.reasoning_tokens} reasoning)"
    if t.time_to_first_token is not None:
        parts.append(f"first token {t.time_to_first_token:.2f}s")
    if t.tokens_per_s:
        parts.append(f"{t.tokens_per_s:.1f} tok/s")
    parts.append(f"total {t.total:.1f}s")
    if result.finish_reason == "length":
        parts.append("stopped at max tokens")
    return " · ".join(parts)


class AskView:
    """Renders one request: live text (reasoning dim on stderr, answer on stdout) or JSON."""

    def __init__(self, term: Terminal, *, json_output: bool = False, hide_reasoning: bool = False) -> None:
        self.term = term
        term.quiet = term.quiet or json_output  # stderr stays empty unless something fails
        self.json_output = json_output
        self.hide_reasoning = hide_reasoning
        self._kind: str | None = None

    def on_delta(self, delta: Delta) -> None:
        if self.json_output:
            return
        if delta.kind == "reasoning":
            if not self.hide_reasoning:
                self.term.stream_reasoning(delta.text)
                self._kind = "reasoning"
            return
        if self._kind == "reasoning":
            self.term.err.print()
            self.term.err.print()
        self._kind = "answer"
        self.term.stream_answer(delta.text)

    def finish(self, request: Request, result: Result) -> None:
        if self.json_output:
            self.term.print_json(result_json(request, result))
            return
        if self._kind == "reasoning":
            self.term.err.print()
        if self._kind == "answer":
            self.term.end_stream("out")
        if result.finish_reason == "length":
            where = "inside its reasoning, with no answer" if not result.answer else "in its answer"
            self.term.warn(
                f"cut off at the length limit ({result.usage.completion_tokens} tokens) {where}: "
                "raise --max-tokens (or --max-model-len)"
            )
        elif not result.answer:
            self.term.warn("the model gave no answer after its reasoning")
        self.term.markup(f"[dim]{stats_line(request, result)}[/dim]")


async def ask(settings, request: Request, view: AskView) -> Result:
    engine = open_engine(settings)
    try:
        # Refuse audio that cannot fit before spending any compute on it: the in-process
        # engine knows its length up front; for a server, engine.stream() checks it once the
        # connection has told us the length.
        if engine.max_model_len:
            fit_max_tokens(request.audios, request.sampling, engine.max_model_len)
        with view.term.status(starting_message(settings)):
            await engine.start()
        result = await collect(engine, request, view.on_delta)
    finally:
        await engine.close()
    view.finish(request, result)
    return result
