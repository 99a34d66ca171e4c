"""stepaudio ps / stepaudio stop [ID | MODEL | --all]: the engines kept loaded."""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.errors import UserError


def ps(ctx: typer.Context) -> None:
    """List the models kept loaded (resident engines, and `stepaudio serve`s on loopback)."""
    from stepaudio_cli import ps_view
    from stepaudio_cli.resident import registry, status

    term = options.terminal(ctx)
    statuses = status.statuses(registry.read_entries(warn=term.warn))
    if not statuses:
        term.info("No model is loaded. `stepaudio ask` loads one and keeps it for --keep-alive (5m).")
        return
    ps_view.show(term, statuses)


def stop(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID | MODEL]",
            help="The engine to stop: its id from `stepaudio ps` (a `stepaudio serve` of yours is stopped "
            "only this way), or a model (path or repo id) whose resident engines to stop.",
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Stop every resident engine.")] = False,
) -> None:
    """Stop engines kept loaded now, freeing their GPU memory."""
    from stepaudio_cli import ps_view
    from stepaudio_cli.resident import client
    from stepaudio_cli.resident.status import settings_summary

    term = options.terminal(ctx)
    if (target is None) == (not all_):
        raise UserError(
            "give an engine (its ID or MODEL, from `stepaudio ps`) or --all"
            if target is None
            else "give an engine or --all, not both"
        )
    entries = client.select(None if all_ else target, warn=term.warn)
    if not entries:
        if target:
            raise UserError(f"no loaded engine is {target} or serves it (`stepaudio ps` lists them)", exit_code=1)
        term.info("No resident engine is loaded.")
        return
    stuck = []
    with term.status("Stopping") as say:
        for entry in entries:
            model = ps_view.printable(entry.model)
            say(f"Stopping {model} (pid {entry.pid})")
            if client.stop(entry):
                term.success(f"Stopped {model} ({settings_summary(entry)})")
            else:
                stuck.append(str(entry.pid))
    if stuck:
        raise UserError(f"pid {', '.join(stuck)} did not stop within 60s (kill -9 {' '.join(stuck)})", exit_code=1)
