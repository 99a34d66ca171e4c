"""stepaudio ask AUDIO... QUESTION"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from stepaudio_cli.commands import conversations, options
from stepaudio_cli.defaults import ASK_MAX_NUM_SEQS, DEFAULT_MAX_NUM_SEQS
from stepaudio_cli.errors import UserError


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    options.JSON,
    conversations.CONVERSATION,
    leave_out=("max_num_seqs",),  # derived: a small batch in-process, see below
)
def ask(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(help="Audio files (`-` reads one from stdin), then the question.", metavar="AUDIO... QUESTION"),
    ],
    hide_reasoning: Annotated[
        bool, typer.Option("--hide-reasoning", envvar="STEPAUDIO_HIDE_REASONING", help="Do not show the reasoning.")
    ] = False,
) -> None:
    """Ask one question about one or more audio files; streams reasoning and answer."""
    from stepaudio_cli import ask as core
    from stepaudio_cli.ask_view import AskView
    from stepaudio_cli.commands.download import offer_download
    from stepaudio_cli.resident import parse_keep_alive, session

    json_output = ctx.params["json_output"]
    term = options.terminal(ctx)
    term.quiet = term.quiet or json_output  # stderr stays empty unless something fails
    if len(inputs) < (1 if conversations.continuing(ctx) else 2):
        raise UserError('give at least one audio file and a question, e.g. stepaudio ask clip.wav "What is this?"')
    *sources, question = inputs
    log, convo = conversations.begin(ctx)
    think = options.thinking(ctx)
    keep = parse_keep_alive(ctx.params["keep_alive"])
    seqs = ASK_MAX_NUM_SEQS if keep == 0 else DEFAULT_MAX_NUM_SEQS  # a resident engine batch can share
    settings = options.engine_settings(ctx, max_num_seqs=seqs, thinking_processor=think.constrained)
    system = ctx.params["system"] if ctx.params["system"] is not None else convo.system
    request = core.prepare(sources, question, system, options.sampling(ctx), think, convo.history)
    windowing = options.windowing(ctx)
    if not settings.remote:
        offer_download(term, settings.model)
    view = AskView(term, json_output=json_output, hide_reasoning=hide_reasoning)
    core.check_fits(settings, request, windowing)  # before a resident engine loads
    with session(settings, keep, view.status) as engine_settings:
        result = asyncio.run(
            core.ask(
                engine_settings,
                request,
                on_status=view.status,
                on_delta=view.on_delta,
                windowing=windowing,
                on_windows=view.on_windows,
            )
        )
    view.finish(request, result, conversation=convo.id, turn=convo.turn)
    core.log_turn(log, convo, request, result, settings, on_warning=term.warn)
