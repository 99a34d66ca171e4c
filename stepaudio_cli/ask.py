"""One-shot questions: decode the audio, run one request on an engine session (or, for a
recording longer than one request holds, its windows and then one answer: windows.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stepaudio_cli.audio import Audio, load_audio
from stepaudio_cli.engines import EngineSettings, Result, collect, open_engine
from stepaudio_cli.engines.base import send_with_retries
from stepaudio_cli.errors import AudioError, UserError
from stepaudio_cli.request import Request, Sampling, Thinking
from stepaudio_cli.splitter import Delta
from stepaudio_cli.windows import MapProgress, Windowing, answer_in_windows, plan

__all__ = ["ask", "check_fits", "prepare"]

#: Sends again of a window that failed in a way a server may not repeat (as batch's --retries).
WINDOW_RETRIES = 3


def prepare(
    sources: Sequence[str], question: str, system: str | None, sampling: Sampling, thinking: Thinking = Thinking()
) -> Request:
    """Decode every input up front, so bad audio fails before any engine starts."""
    if not question.strip():
        raise UserError("the question is empty")
    if sum(1 for s in sources if s == "-") > 1:
        raise UserError("`-` (stdin) can be given only once")
    audios: list[Audio] = [_load(s) for s in sources]
    return Request(audios=tuple(audios), question=question, system=system, sampling=sampling, thinking=thinking)


def _load(source: str) -> Audio:
    try:
        return load_audio(source)
    except MemoryError:
        raise AudioError(f"{source}: not enough memory to decode it") from None


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
    windows = check_fits(settings, request, windowing)
    async with open_engine(settings, on_status) as engine:
        if settings.remote:
            windows = plan(request, engine.max_model_len, windowing)
        try:
            if windows is None:
                return await collect(engine, request, on_delta)

            async def send(r: Request, d):  # windows are retried; the streamed combining answer is not
                return await (collect(engine, r, d) if d else send_with_retries(engine, r, WINDOW_RETRIES))

            return await answer_in_windows(
                request,
                windows,
                send,
                max_model_len=engine.max_model_len,
                on_progress=on_windows,
                on_delta=on_delta,
            )
        except MemoryError:
            raise UserError("not enough memory for the request (the audio is too long for this machine)") from None
