"""stepaudio chat [AUDIO...]: an interactive conversation about audio.

Line editing and history come from the standard library's ``readline`` (GNU readline on Linux,
libedit on macOS) through ``input()``: no extra dependency, and the keys people already know
from python and bash. The history of questions is kept in ``$XDG_STATE_HOME/stepaudio/chat_history``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from stepaudio_cli.commands import conversations, options
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS

HISTORY_LINES = 1000


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    conversations.CONVERSATION,
    leave_out=("max_num_seqs",),
)
def chat(
    ctx: typer.Context,
    audio: Annotated[
        list[str] | None, typer.Argument(help="Audio files to ask about (more with /audio FILE).", metavar="AUDIO")
    ] = None,
    hide_reasoning: Annotated[
        bool, typer.Option("--hide-reasoning", envvar="STEPAUDIO_HIDE_REASONING", help="Do not show the reasoning.")
    ] = False,
) -> None:
    """Talk about audio: a prompt for questions and follow-ups, answers streamed as `ask` streams them."""
    from stepaudio_cli import chat as core
    from stepaudio_cli.ask_view import AskView
    from stepaudio_cli.audio import load_audio
    from stepaudio_cli.commands.download import offer_download
    from stepaudio_cli.resident import parse_keep_alive, session

    term = options.terminal(ctx)
    log, convo = conversations.begin(ctx)
    think = options.thinking(ctx)
    keep = parse_keep_alive(ctx.params["keep_alive"])
    settings = options.engine_settings(ctx, max_num_seqs=DEFAULT_MAX_NUM_SEQS, thinking_processor=think.constrained)
    audios = tuple(load_audio(os.path.expanduser(a)) for a in audio or () if a != "-")
    talk = core.Chat(
        convo,
        system=ctx.params["system"],
        sampling=options.sampling(ctx),
        thinking=think,
        windowing=options.windowing(ctx),
        audios=audios,
    )
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
    with _line_history(), session(settings, keep, view.status) as engine_settings:
        core.run(talk, engine_settings, settings, log, io)


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
