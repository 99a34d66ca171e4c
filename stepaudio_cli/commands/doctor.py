"""stepaudio doctor"""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MODEL, GPU_MEMORY_FRACTION


@options.takes(options.ENGINE, only=("max_model_len", "gpu_memory_utilization", "quantization"))
def doctor(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", envvar="STEPAUDIO_MODEL", help="Path or repo id.")
    ] = DEFAULT_MODEL,
) -> None:
    """What is installed, whether the model fits the GPUs, and what to do next."""
    from stepaudio_cli import doctor as core

    term = options.terminal(ctx)
    s = options.engine_settings(ctx)
    report = core.run(s.model, s.max_model_len, s.gpu_memory_utilization or GPU_MEMORY_FRACTION, s.quantization)
    for what, detail, ok in report.lines:
        term.labelled("ok " if ok else "!! ", f"{what}: {detail}", "green" if ok else "yellow", stdout=True)
    if report.next_steps:
        term.section("Next:", [f"  {step}" for step in report.next_steps])
