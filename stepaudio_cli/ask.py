"""One-shot questions: decode the audio, plan the request once (one request, or for a recording
longer than one request holds, its windows and then one answer: windows.py), run it on an engine
session."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stepaudio_cli import conversation, windows
from stepaudio_cli.audio import Audio
from stepaudio_cli.conversation import Conversation
from stepaudio_cli.engines import Engine, EngineSettings, Result, collect, open_engine
from stepaudio_cli.engines.base import send_with_retries
from stepaudio_cli.errors import AudioError, UserError
from stepaudio_cli.logbook import Logbook
from stepaudio_cli.request import Request, Sampling, Thinking, Turn
from stepaudio_cli.splitter import Delta
from stepaudio_cli.url_audio import UrlFetching, load_source
from stepaudio_cli.windows import MapProgress, Window, Windowing, answer_in_windows

__all__ = ["Plan", "answer", "ask", "log_turn", "plan", "prepare"]

#: Sends again of a window that failed in a way a server may not repeat (as batch's --retries).
WINDOW_RETRIES = 3


def prepare(
    sources: Sequence[str],
    question: str,
    system: str | None,
    sampling: Sampling,
    thinking: Thinking = Thinking(),
    urls: UrlFetching = UrlFetching(),
    history: Sequence[Turn] = (),
) -> Request:
    """Decode every input (a path, ``-`` or an http(s) URL: url_audio.py) up front, so bad audio
    fails before any engine starts. ``history``: a follow-up's earlier turns (it may then bring
    no audio of its own)."""
    if not question.strip():
        raise UserError("the question is empty")
    if sum(1 for s in sources if s == "-") > 1:
        raise UserError("`-` (stdin) can be given only once")
    audios: list[Audio] = [_load(s, urls) for s in sources]
    return Request(
        audios=tuple(audios),
        question=question,
        system=system,
        sampling=sampling,
        thinking=thinking,
        history=tuple(history),
    )


def _load(source: str, urls: UrlFetching) -> Audio:
    try:
        return load_source(source, urls)
    except MemoryError:
        raise AudioError(f"{source}: not enough memory to decode it") from None


@dataclass(frozen=True)
class Plan:
    """How a request goes: as one request (``windows`` None) or in ``windows``, planned for a
    known context; ``planned`` False: a server's context, known once connected (:func:`ask`
    plans there)."""

    windowing: Windowing
    windows: list[Window] | None = None
    planned: bool = False


def plan(settings: EngineSettings, request: Request, windowing: Windowing = Windowing()) -> Plan:
    """The plan for ``request`` on the engine ``settings`` start (in-process or resident), made
    before the model loads, so audio that cannot fit (or be answered in windows) is refused at
    once; on servers (``settings.remote``) an empty plan that :func:`ask` completes."""
    if settings.remote:
        return Plan(windowing)
    return Plan(windowing, windows.plan(request, settings.max_model_len, windowing), planned=True)


async def ask(
    settings: EngineSettings,
    request: Request,
    plan: Plan,
    *,
    on_status: Callable[[str | None], None] | None = None,
    on_delta: Callable[[Delta], None] | None = None,
    on_windows: Callable[[MapProgress], None] | None = None,
) -> Result:
    """Run ``request`` as ``plan`` says (from :func:`plan`; for the engine it started, the
    settings of the session that runs it may be a server's); ``on_delta`` gets the text as it
    comes, ``on_status`` what is being waited for, ``on_windows`` how the windows of a long
    recording are getting on."""
    async with open_engine(settings, on_status) as engine:
        return await answer(engine, request, plan, on_delta=on_delta, on_windows=on_windows)


async def answer(
    engine: Engine,
    request: Request,
    plan: Plan,
    *,
    on_delta: Callable[[Delta], None] | None = None,
    on_windows: Callable[[MapProgress], None] | None = None,
) -> Result:
    """Answer ``request`` on a started engine: one request, or windows and then one answer
    when the recording is longer than one request holds (planned now where ``plan`` is a
    server's, whose context is known once connected)."""
    cuts = plan.windows if plan.planned else windows.plan(request, engine.max_model_len, plan.windowing)
    try:
        if cuts is None:
            return await collect(engine, request, on_delta)

        async def send(r: Request, d):  # windows are retried; the streamed combining answer is not
            return await (collect(engine, r, d) if d else send_with_retries(engine, r, WINDOW_RETRIES))

        return await answer_in_windows(
            request,
            cuts,
            send,
            max_model_len=engine.max_model_len,
            on_progress=on_windows,
            on_delta=on_delta,
        )
    except MemoryError:
        raise UserError("not enough memory for the request (the audio is too long for this machine)") from None


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
