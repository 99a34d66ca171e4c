"""stepaudio logs: the newest questions and answers from the local log (logs.db)."""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.errors import UserError

PREVIEW = 60  # characters of a question or answer shown in the table


def logs(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many of the newest turns.")] = 10,
    query: Annotated[
        str | None,
        typer.Option("--query", "-q", help="Full-text search (SQLite FTS5) of questions, reasoning and answers."),
    ] = None,
    conversation: Annotated[
        str | None, typer.Option("--conversation", metavar="ID", help="Only the turns of this conversation.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list of records.")] = False,
) -> None:
    """List the newest questions and answers from the local log (oldest of them first)."""
    from stepaudio_cli.logbook import Logbook, log_path

    term = options.terminal(ctx)
    if query is not None and not query.strip():
        raise UserError("-q: the search text is empty")
    path = log_path()
    if not path.exists():  # reading never creates it
        records = []
    else:
        book = Logbook(path)
        try:
            records = book.newest(count, query=query, conversation=conversation)
        finally:
            book.close()
    if json_output:
        term.print_json(records)
        return
    if not records:
        term.info(f"Nothing logged yet in {path}." if query is None and conversation is None else "No match.")
        return
    rows = [
        (
            r["created"].replace("T", " ")[:19],
            [r["conversation"], str(r["turn"]), _short(r["question"]), _short(r["answer"])],
        )
        for r in records
    ]
    term.table(None, rows, ["conversation", "turn", "question", "answer"], first="time", plain=True)


def _short(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"
