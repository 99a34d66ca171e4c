"""One-shot questions: decode the audio, run one request on an engine session (or, for a
recording longer than one request holds, its windows and then one answer: windows.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stepaudio_cli import conversation
from stepaudio_cli.audio import Audio, load_audio
from stepaudio_cli.conversation import Conversation
from stepaudio_cli.engines import Engine, EngineSettings, Result, collect, open_engine
from stepaudio_cli.errors import UserError
from stepaudio_cli.logbook import Logbook
from stepaudio_cli.request import Request, Sampling, Thinking, Turn
from stepaudio_cli.splitter import Delta
from stepaudio_cli.windows import MapProgress, Windowing, answer_in_windows, plan

__all__ = ["answer", "ask", "check_fits", "log_turn", "prepare"]


def prepare(
    sources: Sequence[str],
    question: str,
    system: str | None,
    sampling: Sampling,
    thinking: Thinking = Thinking(),
    history: Sequence[Turn] = (),
) -> Request:
    """Decode every input up front, so bad audio fails before any engine starts. ``history``:
    a follow-up's earlier turns (it may then bring no audio of its own)."""
    if not question.strip():
        raise UserError("the question is empty")
    if sum(1 for s in sources if s == "-") > 1:
        raise UserError("`-` (stdin) can be given only once")
    audios: list[Audio] = [load_audio(s) for s in sources]
    return Request(
        audios=tuple(audios),
        question=question,
        system=system,
        sampling=sampling,
        thinking=thinking,
        history=tuple(history),
    )


def check_fits(settings: EngineSettings, request: Request, windowing: Windowing = Windowing()) -> list | None:
    """Refuse audio that cannot fit (or be answered in windows) before loading the model,
    in-process or resident; returns the windows it needs in that context (None: one request).
    A server's context is known once connected: then None, and ``ask`` plans there."""
    return None if settings.remote else plan(request, settings.max_model_len, windowing)


async def ask(
    settings: EngineSettings,
    request: Request,
    *,
    on_status: Callable[[str | None], None] | None = None,
    on_delta: Callable[[Delta], None] | None = None,
    windowing: Windowing = Windowing(),
    on_windows: Callable[[MapProgress], None] | None = None,
) -> Result:
    """Run ``request``; ``on_delta`` gets the text as it comes, ``on_status`` what is being waited
    for, ``on_windows`` how the windows of a long recording are getting on."""
    check_fits(settings, request, windowing)
    async with open_engine(settings, on_status) as engine:
        return await answer(engine, request, windowing=windowing, on_delta=on_delta, on_windows=on_windows)


async def answer(
    engine: Engine,
    request: Request,
    *,
    windowing: Windowing = Windowing(),
    on_delta: Callable[[Delta], None] | None = None,
    on_windows: Callable[[MapProgress], None] | None = None,
) -> Result:
    """Answer ``request`` on a started engine: one request, or windows and then one answer
    when the recording is longer than the engine's context holds."""
    windows = plan(request, engine.max_model_len, windowing)
    if windows is None:
        return await collect(engine, request, on_delta)
    return await answer_in_windows(
        request,
        windows,
        lambda r, d: collect(engine, r, d),
        max_model_len=engine.max_model_len,
        on_progress=on_windows,
        on_delta=on_delta,
    )


def log_turn(
    log: Logbook | None,
    convo: Conversation,
    request: Request,
    result: Result,
    settings: EngineSettings,
    *,
    command: str = "ask",
    on_warning: Callable[[str], None],
) -> None:
    """Log an answered turn (nothing when ``log`` is None: logging is off); a log that cannot
    be written is one ``on_warning`` line, never a failed answer."""
    conversation.save(log, conversation.entry(convo, command, request, result, settings), on_warning)
