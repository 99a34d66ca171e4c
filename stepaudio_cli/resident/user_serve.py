"""A `stepaudio serve` the user started: listed in the registry on loopback (so `ask` uses it for its
model and `ps` shows it as the user's), and stopped after its own ``--keep-alive`` without
requests from any client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from stepaudio_cli.resident import registry
from stepaudio_cli.serve import Running, ServeHooks, ServeOptions, client_host, dummy_weights, is_loopback


def hooks(
    opts: ServeOptions,
    keep_alive: float | None,
    on_status: Callable[[str | None], None],
    on_ready: Callable[[Running], None],
) -> ServeHooks:
    """:func:`stepaudio_cli.serve.run`'s hooks for the user's own server."""
    entry_id = f"serve-{opts.port}"
    listed = not opts.raw_reasoning and is_loopback(client_host(opts.host))  # ask can use only these
    me = os.getpid()

    def ready(running: Running) -> None:
        on_ready(running)
        if listed:
            _register(opts, entry_id, keep_alive, running)

    def should_stop(running: Running) -> bool:
        return keep_alive is not None and running.activity.idle_for() >= keep_alive

    def exit_() -> None:
        if listed:
            entry = registry.find(entry_id)
            if entry is not None and entry.pid == me:
                registry.remove(entry_id)

    return ServeHooks(on_status=on_status, on_ready=ready, should_stop=should_stop, on_exit=exit_)


def _register(opts: ServeOptions, entry_id: str, keep_alive: float | None, running: Running) -> None:
    from dataclasses import replace

    from stepaudio_cli import processes
    from stepaudio_cli.errors import UserError
    from stepaudio_cli.resident.server import identity_settings

    engine = replace(opts.engine, load_format="dummy") if dummy_weights(opts.extra) else opts.engine
    settings = identity_settings(engine) | {"keep_alive": keep_alive}
    me = os.getpid()
    entry = registry.Entry(
        id=entry_id,
        kind="serve",
        state="ready",
        pid=me,
        pid_started=processes.start_time(me) or "0",
        model=engine.model,
        settings=settings,
        port=opts.port,
        keyed=bool(opts.server_key),
        started=time.time(),
    )
    try:
        if opts.server_key:
            registry.write_key(entry_id, opts.server_key)
        registry.save(entry)
    except (UserError, OSError):
        pass  # it serves on, found by `ask` or not
