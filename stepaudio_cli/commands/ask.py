"""stepaudio ask AUDIO... QUESTION"""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import common
from stepaudio_cli.defaults import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from stepaudio_cli.terminal import Terminal


def ask(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Audio files (`-` reads one from stdin), then the question.", metavar="AUDIO... QUESTION"),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming.")] = False,
    hide_reasoning: Annotated[
        bool, typer.Option("--hide-reasoning", envvar="STEPAUDIO_HIDE_REASONING", help="Do not show the reasoning.")
    ] = False,
    system: common.SystemOpt = None,
    temperature: common.TemperatureOpt = DEFAULT_TEMPERATURE,
    top_p: common.TopPOpt = DEFAULT_TOP_P,
    max_tokens: common.MaxTokensOpt = common.DEFAULTS["max_tokens"],
    seed: common.SeedOpt = None,
    think_budget: common.ThinkBudgetOpt = None,
    min_think: common.MinThinkOpt = None,
    effort: common.EffortOpt = None,
    no_think: common.NoThinkOpt = False,
    server: common.ServerOpt = None,
    api_key: common.ApiKeyOpt = None,
    model: common.ModelOpt = None,
    max_model_len: common.MaxModelLenOpt = common.DEFAULTS["max_model_len"],
    tensor_parallel_size: common.TPOpt = None,
    gpu_memory_utilization: common.GpuMemOpt = None,
    dtype: common.DtypeOpt = "auto",
    quantization: common.QuantOpt = None,
    load_format: common.LoadFormatOpt = "auto",
) -> None:
    """Ask one question about one or more audio files; streams reasoning and answer."""
    from stepaudio_cli import ask as core

    term = Terminal()
    with common.user_errors(term):
        if len(inputs) < 2:
            raise core.UserError("give at least one audio file and a question, e.g. stepaudio ask clip.wav \"What is this?\"")
        *sources, question = inputs
        think = common.thinking(think_budget, min_think, effort, no_think)
        settings = common.EngineSettings.from_options(
            server, api_key, model, max_model_len, tensor_parallel_size, gpu_memory_utilization, dtype, max_num_seqs=4,
            quantization=quantization, load_format=load_format, thinking_processor=think.constrained,
        )
        request = core.prepare(sources, question, system, common.sampling(temperature, top_p, max_tokens, seed), think)
        view = core.AskView(term, json_output=json_output, hide_reasoning=hide_reasoning)
        common.run(core.ask(settings, request, view))
