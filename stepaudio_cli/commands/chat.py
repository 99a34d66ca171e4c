"""stepaudio chat [AUDIO...]: an interactive conversation about audio.

Line editing and history come from the standard library's ``readline`` (GNU readline on Linux,
libedit on macOS) through ``input()``: no extra dependency, and the keys people already know
from python and bash. The history of questions is kept in ``$XDG_STATE_HOME/stepaudio/chat_history``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS

if TYPE_CHECKING:
    from stepaudio_cli.commands.conversations import ConversationChoice
    from stepaudio_cli.engines.settings import EngineSettings
    from stepaudio_cli.request import Sampling, Thinking
    from stepaudio_cli.windows import Windowing

HISTORY_LINES = 1000


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    options.VIEW,
    options.CONVERSATION,
    leave_out=("max_num_seqs",),
)
def chat(
    ctx: typer.Context,
    audio: Annotated[
        list[str] | None, typer.Argument(help="Audio files to ask about (more with /audio FILE).", metavar="AUDIO")
    ] = None,
    *,
    engine: EngineSettings,
    sampling: Sampling,
    system: str | None,
    thinking: Thinking,
    windowing: Windowing,
    conversation: ConversationChoice,
    keep_alive: float | None,
    sleep_for: float | None,
    hide_reasoning: bool,
) -> None:
    """Talk about audio: a prompt for questions and follow-ups, answers streamed as `ask` streams them."""
    from stepaudio_cli import chat as core
    from stepaudio_cli.ask_view import AskView
    from stepaudio_cli.audio import load_audio
    from stepaudio_cli.commands.download import offer_download
    from stepaudio_cli.resident import session

    term = options.terminal(ctx)
    log, convo = conversation.begin()
    settings = dataclasses.replace(engine, max_num_seqs=DEFAULT_MAX_NUM_SEQS)
    audios = tuple(load_audio(os.path.expanduser(a)) for a in audio or () if a != "-")
    talk = core.Chat(convo, system=system, sampling=sampling, thinking=thinking, windowing=windowing, audios=audios)
    if not settings.remote:
        offer_download(term, settings.model)
    view = AskView(term, hide_reasoning=hide_reasoning)

    def stopped() -> None:
        view.status(None)
        term.end_streams()
        term.note("(stopped)")

    io = core.ChatIO(
        read=lambda prompt: _read(term, prompt),
        on_status=view.status,
        on_delta=view.on_delta,
        on_windows=view.on_windows,
        on_answer=lambda request, result, cid, turn: view.finish(request, result, conversation=cid, turn=turn),
        on_stopped=stopped,
        show_reasoning=lambda on: setattr(view, "hide_reasoning", not on),
        info=term.info,
        warn=term.warn,
        error=term.error,
    )
    where = f"conversation {convo.id}" + (f", turn {convo.turn}" if convo.history else "")
    term.info(f"{where}; /help lists the commands, Ctrl-D or /exit ends")
    with _line_history(), session(settings, keep_alive, view.status, warn=term.warn, sleep_for=sleep_for) as served:
        core.run(talk, served, settings, log, io)


def _read(term, prompt: str) -> str:
    """A line from the user: the prompt only on a terminal (piped questions get answers alone)."""
    term.end_streams()
    term.out.file.flush()
    return input(prompt if sys.stdin.isatty() else "")


@contextlib.contextmanager
def _line_history() -> Iterator[None]:
    """readline's line editing and a history of questions, on a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    try:
        import readline
    except ImportError:  # a Python without readline: plain input()
        yield
        return
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = Path(base) / "stepaudio" / "chat_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LINES)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            readline.write_history_file(path)
