"""stepaudio ask AUDIO... QUESTION"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import ASK_MAX_NUM_SEQS
from stepaudio_cli.errors import UserError

if TYPE_CHECKING:
    from stepaudio_cli.commands.conversations import ConversationChoice
    from stepaudio_cli.engines.settings import EngineSettings
    from stepaudio_cli.request import Sampling, Thinking
    from stepaudio_cli.url_audio import UrlFetching
    from stepaudio_cli.windows import Windowing


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    options.VIEW,
    options.JSON,
    options.URLS,
    options.CONVERSATION,
    leave_out=("max_num_seqs",),  # derived: a small batch in-process, see below
)
def ask(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Audio files or http(s) URLs (`-` reads one from stdin), then the question.",
            metavar="AUDIO... QUESTION",
        ),
    ],
    *,
    engine: EngineSettings,
    sampling: Sampling,
    system: str | None,
    thinking: Thinking,
    windowing: Windowing,
    urls: UrlFetching,
    conversation: ConversationChoice,
    keep_alive: float | None,
    sleep_for: float | None,
    hide_reasoning: bool,
    json_output: bool,
) -> None:
    """Ask one question about one or more audio files; streams reasoning and answer."""
    from stepaudio_cli import ask as core
    from stepaudio_cli.ask_view import AskView
    from stepaudio_cli.commands.download import offer_download
    from stepaudio_cli.resident import session

    term = options.terminal(ctx)
    term.quiet = term.quiet or json_output  # stderr stays empty unless something fails
    if len(inputs) < (1 if conversation.continuing else 2):
        raise UserError('give at least one audio file and a question, e.g. stepaudio ask clip.wav "What is this?"')
    *sources, question = inputs
    log, convo = conversation.begin()
    if keep_alive == 0:  # in-process for this one question: a small batch; a resident engine's is shared
        engine = dataclasses.replace(engine, max_num_seqs=ASK_MAX_NUM_SEQS)
    system = system if system is not None else convo.system
    request = core.prepare(sources, question, system, sampling, thinking, urls, convo.history)
    if not engine.remote:
        offer_download(term, engine.model)
    view = AskView(term, json_output=json_output, hide_reasoning=hide_reasoning)
    plan = core.plan(engine, request, windowing)  # before a resident engine loads
    with session(engine, keep_alive, view.status, warn=term.warn, sleep_for=sleep_for) as settings:
        result = asyncio.run(
            core.ask(settings, request, plan, on_status=view.status, on_delta=view.on_delta, on_windows=view.on_windows)
        )
    view.finish(request, result, conversation=convo.id, turn=convo.turn)
    core.log_turn(log, convo, request, result, engine, on_warning=term.warn)
