"""stepaudio doctor"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MODEL, GPU_MEMORY_FRACTION

if TYPE_CHECKING:
    from stepaudio_cli.engines.settings import EngineSettings


@options.takes(
    options.ENGINE,
    only=("model", "max_model_len", "gpu_memory_utilization", "quantization"),
    vary=[options.MODEL.vary(type=str, default=DEFAULT_MODEL, help="Path or repo id.", panel=None)],
)
def doctor(ctx: typer.Context, *, engine: EngineSettings) -> None:
    """What is installed, whether the model fits the GPUs, and what to do next."""
    from stepaudio_cli import doctor as core

    term = options.terminal(ctx)
    report = core.run(
        engine.model, engine.max_model_len, engine.gpu_memory_utilization or GPU_MEMORY_FRACTION, engine.quantization
    )
    for what, detail, ok in report.lines:
        term.labelled("ok " if ok else "!! ", f"{what}: {detail}", "green" if ok else "yellow", stdout=True)
    if report.next_steps:
        term.section("Next:", [f"  {step}" for step in report.next_steps])
