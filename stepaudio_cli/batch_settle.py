"""A batch with nothing left to do ends at once: when every file already has its record for the
question, the run's summary (and compaction) comes without an engine started or a server waited
for (a rerun while the server is down exits 0, not 75 after ``--wait-server``)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from stepaudio_cli.batch import BatchRunner
from stepaudio_cli.batch_inputs import identity
from stepaudio_cli.batch_job import BatchJob, NeedsEngine, Summary
from stepaudio_cli.checkpoint import same_model
from stepaudio_cli.engines import Engine, EngineSettings
from stepaudio_cli.errors import UserError
from stepaudio_cli.request import Request


class _NoEngine(Engine):
    """Stands in for the engine (its model name only) while :func:`settle` looks for work."""

    def __init__(self, model: str) -> None:
        self.model = model

    def stream(self, request: Request):
        raise NeedsEngine


async def settle(
    settings: EngineSettings, job: BatchJob, store, files: list[Path], hashes: dict[str, tuple[str, tuple]]
) -> Summary | None:
    """The run's summary when every file already has its record for this question (nothing
    for an engine to do: no engine is started, no server waited for), else None. The model is
    the one the records were made with; it must be the one asked for (``--model``, the
    in-process model), and a server that answers at once must serve it. ``hashes`` keeps the
    content hashes computed, for the run that follows."""
    wanted = {identity(str(p)) for p in files}
    asked = [r for r in store.load() if r["prompt"] == job.prompt and identity(r["file"]) in wanted]
    if not asked or {identity(r["file"]) for r in asked} != wanted:
        return None  # a file without any record of this question: work for an engine
    model = Counter(r["model"] for r in asked).most_common(1)[0][0]
    if settings.remote and settings.served_model not in (None, model):
        return None
    if not settings.remote and not same_model(settings.model, model):  # a path may be named two ways
        return None
    started = time.monotonic()
    runner = BatchRunner(job, _NoEngine(model), store, files, hashes=hashes, offline=True)
    try:
        summary = await runner.run()
    except NeedsEngine:
        return None
    if settings.remote and not settings.served_model and not await _serves(settings, model):
        return None
    summary.elapsed = time.monotonic() - started
    return summary


async def _serves(settings: EngineSettings, model: str) -> bool:
    """Whether the first server, asked once without waiting, serves ``model`` (or does not answer)."""
    from stepaudio_cli.engines.remote import RemoteEngine

    server = RemoteEngine(settings.servers[0], api_key=settings.api_key, timeout=min(settings.timeout, 5.0))
    try:
        await server.start()
    except UserError:
        return True  # down, or not answering: the records are all there is to go by
    finally:
        await server.close()
    return server.model == model
