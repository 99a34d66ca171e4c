"""How `ask` looks: reasoning dim on stderr and the answer on stdout as they stream, or one
JSON record; then warnings and a stats line."""

from __future__ import annotations

from stepaudio_cli.durations import format_duration
from stepaudio_cli.engines import Result
from stepaudio_cli.records import ask_record
from stepaudio_cli.request import Request
from stepaudio_cli.splitter import Delta
from stepaudio_cli.terminal import Terminal
from stepaudio_cli.windows import MapProgress


def stats_line(request: Request, result: Result) -> str:
    u, t = result.usage, result.timings
    parts = [f"audio {format_duration(request.audio_seconds)}", f"{u.completion_tokens} tokens"]
    if request.history:  # a follow-up: its number, and its own audio only if it added some
        if not request.audios:
            parts.pop(0)
        parts.insert(0, f"turn {len(request.history) + 1}")
    if result.windows:
        parts.insert(1, f"{len(result.windows)} windows + 1 combining request")
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
    def __init__(self, term: Terminal, *, json_output: bool = False, hide_reasoning: bool = False) -> None:
        self.term = term
        self.json_output = json_output
        self.hide_reasoning = hide_reasoning
        self.status = term.status_line()

    def on_windows(self, progress: MapProgress) -> None:
        """A long recording's windows: how many are answered, and their tokens so far."""
        if progress.answered < progress.total:
            self.status(
                f"Listening in {progress.total} windows: {progress.answered}/{progress.total} answered, "
                f"{progress.completion_tokens:,} tokens"
            )
        else:
            self.status(f"Combining the answers of {progress.total} windows")

    def on_delta(self, delta: Delta) -> None:
        if self.json_output:
            return  # nothing partial: the record comes whole at the end
        self.status(None)
        if delta.kind == "answer":
            self.term.stream_answer(delta.text)
        elif not self.hide_reasoning:
            self.term.stream_reasoning(delta.text)

    def finish(
        self, request: Request, result: Result, *, conversation: str | None = None, turn: int | None = None
    ) -> None:
        self.status(None)
        if self.json_output:
            record = ask_record(
                request, result, hide_reasoning=self.hide_reasoning, conversation=conversation, turn=turn
            )
            self.term.print_json(record)
            return
        self.term.end_streams()
        for audio in request.audios:
            for warning in audio.warnings:
                self.term.warn(warning)
        combined = result.combined_finish_reason if result.windows else result.finish_reason
        if combined == "length":
            where = "inside its reasoning, with no answer" if not result.answer else "in its answer"
            tokens = request.sampling.max_tokens or (None if result.windows else result.usage.completion_tokens)
            limit = f"{tokens} tokens per request" if tokens else "what the context leaves"
            self.term.warn(f"cut off at the length limit ({limit}) {where}: raise --max-tokens (or --max-model-len)")
        elif not result.answer:
            self.term.warn("the model gave no answer after its reasoning")
        cut = [w for w in result.windows or () if w["finish_reason"] == "length"]
        if cut:
            limit = request.sampling.max_tokens or max(w["usage"]["completion_tokens"] for w in cut)
            self.term.warn(
                f"{len(cut)} of {len(result.windows)} windows were cut off at the length limit ({limit} tokens "
                "per request; their answers may be missing): raise --max-tokens or use a shorter --window"
            )
        self.term.note(stats_line(request, result))
