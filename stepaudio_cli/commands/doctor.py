"""stepaudio doctor"""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import common
from stepaudio_cli.defaults import DEFAULT_MODEL
from stepaudio_cli.terminal import Terminal, escape


def doctor(
    model: Annotated[str, typer.Option("--model", "-m", envvar="STEPAUDIO_MODEL", help="Path or repo id.")] = DEFAULT_MODEL,
    max_model_len: common.MaxModelLenOpt = common.DEFAULTS["max_model_len"],
    gpu_memory_utilization: common.GpuMemOpt = None,
    quantization: common.QuantOpt = None,
) -> None:
    """What is installed, whether the model fits the GPUs, and what to do next."""
    from stepaudio_cli import doctor as core

    term = Terminal()
    with common.user_errors(term):
        if quantization not in (None, "fp8"):
            raise common.UserError(f"--quantization must be fp8, not {quantization!r}")
        report = core.run(model, max_model_len, gpu_memory_utilization or 0.9, quantization)
        for what, detail, ok in report.lines:
            mark = "[green]ok[/green]  " if ok else "[yellow]!![/yellow]  "
            term.out.print(f"{mark}[bold]{escape(what)}[/bold]: {escape(detail)}")
        if report.next_steps:
            term.out.print("\n[bold]Next:[/bold]")
            for step in report.next_steps:
                term.out.print(f"  {escape(step)}")
