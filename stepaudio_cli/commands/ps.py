"""stepaudio ps / stepaudio stop [MODEL | --all]: the resident engines that stay loaded."""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.errors import UserError


def ps(ctx: typer.Context) -> None:
    """List the models kept loaded (resident engines, and `stepaudio serve`s on loopback)."""
    from stepaudio_cli import resident

    term = options.terminal(ctx)
    rows = resident.status_rows(resident.read_entries())
    if not rows:
        term.info("No model is loaded. `stepaudio ask` loads one and keeps it for --keep-alive (5m).")
        return
    columns = ["settings", "address", "pid", "GPU memory", "idle for", "stops in"]
    keys = ["settings", "address", "pid", "gpu", "idle", "stops"]
    if not term.out.is_terminal:  # for scripts: one tab-separated line per engine, no wrapping
        lines = ["\t".join(["model", *columns])] + ["\t".join(r[k] for k in ["model", *keys]) for r in rows]
        term.write_out("\n".join(lines) + "\n")
        return
    term.table(None, [(r["model"], [r[k] for k in keys]) for r in rows], columns, first="model", plain=True)


def stop(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Stop the engines of this model (path or repo id).")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Stop every resident engine.")] = False,
) -> None:
    """Stop resident engines now, freeing their GPU memory."""
    from stepaudio_cli import resident

    term = options.terminal(ctx)
    if (model is None) == (not all_):
        raise UserError("give a MODEL to stop, or --all" if model is None else "give a MODEL or --all, not both")
    entries = resident.select(None if all_ else model)
    if not entries:
        if model:
            raise UserError(f"no loaded engine serves {model} (`stepaudio ps` lists them)", exit_code=1)
        term.info("No model is loaded.")
        return
    stuck = []
    with term.status("Stopping") as say:
        for entry in entries:
            say(f"Stopping {entry.model} (pid {entry.pid})")
            if resident.stop(entry):
                term.success(f"Stopped {entry.model} ({resident.summary(entry)})")
            else:
                stuck.append(str(entry.pid))
    if stuck:
        raise UserError(f"pid {', '.join(stuck)} did not stop within 60s (kill -9 {' '.join(stuck)})", exit_code=1)
