"""Resident engines: a server kept loaded for this user after `ask`/`batch` used it.

- :mod:`.registry`: the private folder and the strict reading of its entries;
- :mod:`.client`: finding, starting, holding and stopping engines;
- :mod:`.server`: the resident server process, started from typed settings;
- :mod:`.status`: what `ps` and `doctor` report of each engine.

:func:`session` is how a command gets its engine: the resident one, in-process, or ``--server``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.resident.client import StatusCallback, describe_keep_alive, parse_keep_alive

__all__ = ["describe_keep_alive", "parse_keep_alive", "session"]


@contextlib.contextmanager
def session(
    settings: EngineSettings,
    keep_alive: float | None,
    on_status: StatusCallback,
    warn=None,
    sleep_for: float | None = 0.0,
) -> Iterator[EngineSettings]:
    """The settings a command runs with: as given (``--server``; or ``keep_alive`` 0: in-process,
    nothing left running), or pointing at the resident engine, held for the block (one it starts
    sleeps ``sleep_for`` once idle, where it can). The model is checked before anything starts."""
    if settings.remote:
        yield settings
        return
    from stepaudio_cli.checkpoint import check_checkpoint, resolve_model
    from stepaudio_cli.resident import client

    # A model that is not there, or not whole: one line, exit 2, before anything starts.
    check_checkpoint(resolve_model(settings.model), weights=settings.load_format != "dummy")
    if keep_alive == 0:
        with _naming_resident_holders(warn):
            client.check_room(settings, warn)
            yield settings
        return
    with client.use(settings, keep_alive, on_status, warn, sleep_for) as entry:
        yield replace(
            settings,
            servers=(entry.server_url,),
            api_key=entry.api_key(),
            served_model=None,
            thinking_processor=False,
            server_thinking=True,  # our server runs the reasoning-length processor
            wait_server=0.0,  # it serves until its keep-alive ends: no waiting for it to come back
        )


@contextlib.contextmanager
def _naming_resident_holders(warn) -> Iterator[None]:
    """An in-process engine that cannot start for want of memory while engines are kept loaded:
    one line naming them and how to stop them."""
    from stepaudio_cli.errors import EngineError
    from stepaudio_cli.resident import client, registry

    try:
        yield
    except EngineError as e:
        held = [e for e in registry.read_entries(warn) if e.state != "asleep"]
        if not held or "memory" not in e.message.lower():
            raise
        holders = "; ".join(client.holder_words(h) for h in held)
        raise EngineError(f"{e.message.rstrip('.')}; memory is held by {holders}") from None
