"""What ``ask`` and ``chat`` share for conversations and the log: the options (``-c/--continue``,
``--conversation ID``, ``--log/--no-log``) and opening the log and the conversation they name."""

from __future__ import annotations

import typer

from stepaudio_cli.commands.options import shared

PANEL = "Conversations"

CONVERSATION = (
    shared(
        "continue_conversation",
        bool,
        False,
        "Continue the latest conversation: a follow-up question (audio optional; the earlier turns are sent again).",
        "--continue",
        "-c",
        panel=PANEL,
        env=False,
    ),
    shared(
        "conversation",
        str | None,
        None,
        "Continue this conversation (its id; `stepaudio logs` lists them).",
        "--conversation",
        panel=PANEL,
        env=False,
        metavar="ID",
    ),
    shared(
        "log",
        bool,
        True,
        "Log the question and answer to logs.db in the XDG data folder (`stepaudio logs`); "
        "conversations live there, so -c needs it.",
        "--log/--no-log",
        panel=PANEL,
    ),
)


def continuing(ctx: typer.Context) -> bool:
    return bool(ctx.params["continue_conversation"]) or ctx.params["conversation"] is not None


def begin(ctx: typer.Context):
    """The log (None when off) and the conversation the options name (a new one without -c)."""
    from stepaudio_cli import conversation
    from stepaudio_cli.logbook import Logbook

    log = Logbook() if ctx.params["log"] else None
    convo = conversation.start(
        log, latest=ctx.params["continue_conversation"], conversation_id=ctx.params["conversation"]
    )
    return log, convo
