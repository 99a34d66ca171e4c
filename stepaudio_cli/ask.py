"""One-shot questions: decode the audio, run one request on an engine session."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stepaudio_cli.audio import Audio, load_audio
from stepaudio_cli.engines import EngineSettings, Result, collect, open_engine
from stepaudio_cli.errors import UserError
from stepaudio_cli.request import Request, Sampling, Thinking, fit_max_tokens
from stepaudio_cli.splitter import Delta

__all__ = ["ask", "check_fits", "prepare"]


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


def check_fits(settings: EngineSettings, request: Request) -> None:
    """Refuse audio that cannot fit before loading the model (in-process or resident); a
    server's context is known once connected, and the engine checks it there."""
    if not settings.remote:
        fit_max_tokens(request.audios, request.sampling, settings.max_model_len)


async def ask(
    settings: EngineSettings,
    request: Request,
    *,
    on_status: Callable[[str | None], None] | None = None,
    on_delta: Callable[[Delta], None] | None = None,
) -> Result:
    """Run ``request``; ``on_delta`` gets the text as it comes, ``on_status`` what is being waited for."""
    check_fits(settings, request)
    async with open_engine(settings, on_status) as engine:
        return await collect(engine, request, on_delta)
