"""Engines: one small interface, two implementations (in-process vLLM, remote servers).

async with open_engine(settings, on_status=...) as engine:
    result = await collect(engine, request)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from stepaudio_cli.engines.base import Engine, Final, Result, Timings, Usage, collect
from stepaudio_cli.engines.settings import EngineSettings

__all__ = ["Engine", "EngineSettings", "Final", "Result", "Timings", "Usage", "collect", "make_engine", "open_engine"]

#: Told what the engine is waiting for (a spinner's text), or None when it no longer waits.
StatusCallback = Callable[[str | None], None]


def make_engine(settings: EngineSettings, on_status: StatusCallback | None = None) -> Engine:
    """The engine ``settings`` asks for, not started: a pool of servers, or vLLM in-process."""
    if settings.remote:
        from stepaudio_cli.engines.pool import ServerPool
        from stepaudio_cli.engines.remote import RemoteEngine

        servers = [
            RemoteEngine(
                url,
                api_key=settings.api_key,
                model=settings.served_model,
                timeout=settings.timeout,
                server_thinking=settings.server_thinking,
            )
            for url in settings.servers
        ]
        return ServerPool(servers, wait=settings.wait_server, on_status=on_status)
    from stepaudio_cli.engines.local import LocalEngine

    return LocalEngine(settings)


@contextlib.asynccontextmanager
async def open_engine(settings: EngineSettings, on_status: StatusCallback | None = None) -> AsyncIterator[Engine]:
    """An engine session: started on entry (``on_status`` says what it waits for), closed on
    every way out, Ctrl-C and errors during start included."""
    status = on_status or (lambda text: None)
    engine = make_engine(settings, on_status)
    try:
        status(settings.starting_message())
        try:
            await engine.start()
        finally:
            status(None)
        yield engine
    finally:
        await engine.close()
